"""Tests of the WSL loss functions against hand computations (Max-Min Eq. 4-12, appendix A)."""

from __future__ import annotations

import math

import pytest
import torch

from napari_wsl_al.core.models import ModelConfig, build_model
from napari_wsl_al.core.wsl import losses

torch.set_num_threads(1)


def logits_of(probabilities):
    return torch.log(torch.tensor(probabilities, dtype=torch.float64))


def test_entropy_matches_hand_computation():
    value = losses.entropy(logits_of([[0.25, 0.75]]))
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_eem_and_sem_hand_values():
    logits = logits_of([[0.2, 0.8], [0.5, 0.5]])
    eem = losses.eem_loss(logits, reduction="none")
    sem = losses.sem_loss(logits, reduction="none")
    assert eem[0].item() == pytest.approx(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert eem[1].item() == pytest.approx(-math.log(2))
    assert sem[0].item() == pytest.approx(-0.5 * (math.log(0.2) + math.log(0.8)))
    assert sem[1].item() == pytest.approx(math.log(2))
    assert losses.eem_loss(logits).item() == pytest.approx(eem.mean().item())


@pytest.mark.parametrize("kind", losses.REGULARIZERS)
def test_regularizers_are_minimal_at_the_uniform(kind):
    uniform = torch.zeros(1, 3, dtype=torch.float64)
    at_uniform = losses.background_regularizer(uniform, kind).item()
    generator = torch.Generator().manual_seed(0)
    others = torch.randn(200, 3, generator=generator, dtype=torch.float64) * 2
    values = losses.background_regularizer(others, kind, reduction="none")
    assert torch.all(values >= at_uniform - 1e-12)
    # the gradient vanishes at the uniform distribution
    uniform.requires_grad_(True)
    losses.background_regularizer(uniform, kind).backward()
    assert torch.allclose(uniform.grad, torch.zeros_like(uniform.grad), atol=1e-12)


def test_kl_variants_equal_eem_sem_up_to_log_c():
    logits = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(
        losses.kl_to_uniform(logits, "none"), losses.eem_loss(logits, "none") + math.log(4)
    )
    assert torch.allclose(
        losses.kl_from_uniform(logits, "none"), losses.sem_loss(logits, "none") - math.log(4)
    )
    assert losses.kl_to_uniform(torch.zeros(1, 4)).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.kl_from_uniform(torch.zeros(1, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_unknown_regularizer_refused():
    with pytest.raises(ValueError, match="regulariser"):
        losses.background_regularizer(torch.zeros(1, 2), "entropy-min")


def test_log_barrier_hand_values_and_continuity():
    t = 5.0
    z = torch.tensor([-0.5, 0.1, -1 / t**2], dtype=torch.float64)
    values = losses.log_barrier(z, t)
    assert values[0].item() == pytest.approx(-math.log(0.5) / t)
    assert values[1].item() == pytest.approx(t * 0.1 - math.log(1 / t**2) / t + 1 / t)
    # both branches meet at z = -1/t^2, with the same slope t
    assert values[2].item() == pytest.approx(-math.log(1 / t**2) / t)
    z = torch.tensor([-1 / t**2 - 1e-7, -1 / t**2 + 1e-7], dtype=torch.float64, requires_grad=True)
    losses.log_barrier(z, t).sum().backward()
    assert z.grad[0].item() == pytest.approx(t, rel=1e-4)
    assert z.grad[1].item() == pytest.approx(t)
    assert torch.isfinite(losses.log_barrier(torch.tensor([0.0, 3.0]), t)).all()
    with pytest.raises(ValueError):
        losses.log_barrier(z, 0.0)


def test_size_constraint_is_minimal_for_balanced_masks():
    t = 5.0
    half = torch.full((1, 1, 4, 4), 0.5)
    tiny = torch.full((1, 1, 4, 4), 0.001)
    expected = -2 * math.log(0.5) / t
    assert losses.size_constraint_loss(half, t).item() == pytest.approx(expected, rel=1e-6)
    assert losses.size_constraint_loss(tiny, t).item() > losses.size_constraint_loss(half, t).item()
    positive, negative = losses.mask_size_fractions(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
    assert positive.item() == pytest.approx(0.25) and negative.item() == pytest.approx(0.75)


def test_pseudo_binarize_and_minmax_normalize():
    mask = torch.tensor([0.15, 1.0, 0.0])
    out = losses.pseudo_binarize(mask, sigma=0.15, omega=5.0)
    assert out[0].item() == pytest.approx(0.5)
    assert out[1].item() == pytest.approx(1 / (1 + math.exp(-5 * 0.85)))
    maps = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    normalized = losses.minmax_normalize(maps)
    assert normalized[0].flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert torch.all(normalized[1] == 0)


def test_maxmin_loss_hand_value():
    logits_fg = logits_of([[0.1, 0.9]]).float()
    logits_bg = logits_of([[0.4, 0.6]]).float()
    fg = torch.full((1, 1, 2, 2), 0.25)
    loss, parts = losses.maxmin_loss(
        logits_fg, logits_bg, torch.tensor([1]), fg, t=5.0, background_weight=0.5, regularizer="eem"
    )
    expected = (
        -math.log(0.9)
        + 0.5 * (0.4 * math.log(0.4) + 0.6 * math.log(0.6))
        - (math.log(0.25) + math.log(0.75)) / 5.0
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(parts) >= {"ce_fg", "bg_reg", "size", "fg_size"}


def test_gradients_reach_the_localizer_through_the_mask():
    """Eq. 7 alone (no auxiliary CE on the localiser's logits) trains the localiser's head."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="maxmin", width=0.125, head={"background_weight": 1.0}))
    model.train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([0, 1])
    _, _, fg = model.localizer(images)
    logits_fg, logits_bg = model.masked_logits(images, fg)
    loss, _ = losses.maxmin_loss(logits_fg, logits_bg, labels, fg, t=5.0, background_weight=1.0)
    loss.backward()
    mask_grad = model.mask_head.to_modalities.weight.grad
    assert mask_grad is not None and mask_grad.abs().sum() > 0
    # and the full training step reaches the localiser, the classifier head and the backbone
    model.zero_grad()
    loss, _ = model.training_step(images, labels, epoch=0)
    loss.backward()
    for parameter in (
        model.mask_head.to_modalities.weight,
        model.classifier_head.to_modalities.weight,
        model.backbone.conv1.weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
