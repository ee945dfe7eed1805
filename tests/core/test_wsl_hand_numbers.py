"""The WSL code against numbers worked out by hand on tiny tensors.

Each test feeds the library a case small enough to compute on paper and compares with those
numbers: the extended log-barrier (Kervadec et al. 2019c, used by Max-Min Eq. 7), the
gradients of the background regularisers (Max-Min appendix A), min-max entropy's recursive
erasing with trust coefficients (``min-max-entropy-wsl-localization``, App. A.1, Eq. 10-12),
gated attention MIL (Ilse et al. 2018, Eq. 9), Grad-CAM (Selvaraju et al. 2017, Eq. 1-2) and the
epoch kept by ``train_wsl``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_wsl_al.core.models import (
    CamAvgPool,
    CamLsePool,
    CamMaxPool,
    DeepMilPool,
    MaxMinModel,
    MinMaxEntropyModel,
    ModelConfig,
    WildcatPool,
    build_model,
    build_pooling,
    wildcat_spatial_pool,
)
from napari_wsl_al.core.models.base import WslModel
from napari_wsl_al.core.models.gradcam import grad_cam
from napari_wsl_al.core.models.maxmin import expected_t
from napari_wsl_al.core.progress import run_to_end
from napari_wsl_al.core.wsl import losses
from napari_wsl_al.core.wsl.train import TrainConfig, _is_better, train_wsl

torch.set_num_threads(1)

F64 = torch.float64


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def log_probs(rows) -> torch.Tensor:
    """Logits whose softmax is exactly ``rows`` (each row sums to 1)."""
    return torch.log(torch.tensor(rows, dtype=F64))


# -- extended log-barrier ------------------------------------------------------------------------
# psi_t(z) = -(1/t) log(-z)                      if z <= -1/t^2
#          = t z - (1/t) log(1/t^2) + 1/t         otherwise
# slope: -1/(t z) on the log branch, t on the linear branch.
# t = 5: switch at -1/25 = -0.04 (not at -1/t = -0.2); (1/5) log 25 = 0.643775.
#   z = -0.3 : log branch, (1/5) log(10/3) = 0.240795, slope -1/(5 * -0.3) = 2/3
#   z = -0.1 : log branch, (1/5) log 10 = 0.460517, slope 2      (linear would give 0.343775, 5)
#   z = -0.05: log branch, (1/5) log 20 = 0.599146, slope 4
#   z = -0.03: linear, -0.15 + 0.643775 + 0.2 = 0.693775, slope 5
#   z = +0.1 : linear, 0.5 + 0.643775 + 0.2 = 1.343775, slope 5
BARRIER_T5 = [
    (-0.3, 0.240795, 2 / 3),
    (-0.1, 0.460517, 2.0),
    (-0.05, 0.599146, 4.0),
    (-0.03, 0.693775, 5.0),
    (0.1, 1.343775, 5.0),
]


def test_log_barrier_values_and_slopes_on_both_sides_of_minus_one_over_t_squared():
    z = torch.tensor([point for point, _, _ in BARRIER_T5], dtype=F64, requires_grad=True)
    values = losses.log_barrier(z, 5.0)
    values.sum().backward()
    assert values.tolist() == pytest.approx([value for _, value, _ in BARRIER_T5], abs=1e-6)
    assert z.grad.tolist() == pytest.approx([slope for _, _, slope in BARRIER_T5], rel=1e-9)


def test_log_barrier_with_another_t():
    # t = 2: switch at -1/4; (1/2) log 4 = 0.693147
    #   z = -0.4: log branch, (1/2) log 2.5 = 0.458145, slope -1/(2 * -0.4) = 1.25
    #   z = -0.3: log branch (-0.3 < -0.25; -1/t = -0.5 would make it linear), 0.601986, 5/3
    #   z = -0.2: linear, -0.4 + 0.693147 + 0.5 = 0.793147, slope 2
    z = torch.tensor([-0.4, -0.3, -0.2], dtype=F64, requires_grad=True)
    values = losses.log_barrier(z, 2.0)
    values.sum().backward()
    assert values.tolist() == pytest.approx([0.458145, 0.601986, 0.793147], abs=1e-6)
    assert z.grad.tolist() == pytest.approx([1.25, 5 / 3, 2.0], rel=1e-9)
    with pytest.raises(ValueError, match="positive"):
        losses.log_barrier(z, -1.0)


def test_log_barrier_with_t_below_one():
    # t = 0.5: switch at -1/t^2 = -4; (1/t) log(1/t^2) = 2 log 4 = 2.772589
    #   z = -5: log branch, -2 log 5 = -3.218876 ; z = -1: linear, -0.5 - 2.772589 + 2 = -1.272589
    values = losses.log_barrier(torch.tensor([-5.0, -1.0], dtype=F64), 0.5)
    assert values.tolist() == pytest.approx([-3.218876, -1.272589], abs=1e-6)


def test_size_constraint_by_hand_on_both_branches():
    # masks of 4 pixels, t = 5 (switch at 0.04 of the image):
    #   s+ = 0.25 (s- = 0.75): -(1/5)(log 0.25 + log 0.75) = 0.277259 + 0.057536 = 0.334795
    #   s+ = 0.01 (s- = 0.99): psi(-0.01) is linear: -0.05 + 0.643775 + 0.2 = 0.793775;
    #                          psi(-0.99) = -(1/5) log 0.99 = 0.002010; sum 0.795785
    fg = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.04, 0.0, 0.0, 0.0]], dtype=F64).view(2, 1, 2, 2)
    per_image = losses.size_constraint_loss(fg, 5.0, reduction="none")
    assert per_image.tolist() == pytest.approx([0.334795, 0.795785], abs=1e-6)
    assert losses.size_constraint_loss(fg, 5.0).item() == pytest.approx(
        (0.334795 + 0.795785) / 2, abs=1e-6
    )
    assert losses.size_constraint_loss(fg, 5.0, reduction="sum").item() == pytest.approx(
        0.334795 + 0.795785, abs=1e-6
    )
    positive, negative = losses.mask_size_fractions(fg)
    assert positive.tolist() == pytest.approx([0.25, 0.01])
    assert negative.tolist() == pytest.approx([0.75, 0.99])


# -- appendix A: gradients of the library's regularisers -----------------------------------------
# Binary case, p = (p1, 1 - p1), derivatives along the simplex:
#   d(-H(p)) / dp1   = log(p1 / (1 - p1))                 (A.3-A.5; EEM and KL(p||q))
#   d H(q, p) / dp1  = -(1/2) (1/p1 - 1/(1 - p1))         (A.6-A.7; SEM and KL(q||p))
#   p1 = 0.3: log(3/7) = -0.847298 ; -(1/2)(10/3 - 10/7) = -0.952381
#   p1 = 0.8: log 4    =  1.386294 ; -(1/2)(5/4 - 5)     =  1.875
# The logits are log p, so softmax(logits) = p exactly and autograd differentiates along p1
# (the normaliser p1 + (1 - p1) is constant).
P1 = (0.3, 0.8)
APPENDIX_A = {
    "eem": [-0.847298, 1.386294],
    "kl-p-q": [-0.847298, 1.386294],
    "sem": [-0.952381, 1.875],
    "kl-q-p": [-0.952381, 1.875],
}


def _gradient_wrt_p1(function, reduction: str) -> list[float]:
    p1 = torch.tensor(P1, dtype=F64, requires_grad=True)
    logits = torch.log(torch.stack([p1, 1.0 - p1], dim=1))
    function(logits, reduction).backward()
    return p1.grad.tolist()


@pytest.mark.parametrize("kind", sorted(APPENDIX_A))
def test_regularizer_gradients_are_appendix_a(kind):
    expected = APPENDIX_A[kind]
    function = {
        "eem": losses.eem_loss,
        "kl-p-q": losses.kl_to_uniform,
        "sem": losses.sem_loss,
        "kl-q-p": losses.kl_from_uniform,
    }[kind]
    assert _gradient_wrt_p1(function, "sum") == pytest.approx(expected, abs=1e-6)
    # the batch mean halves each sample's gradient (two samples)
    assert _gradient_wrt_p1(function, "mean") == pytest.approx(
        [g / 2 for g in expected], abs=1e-6
    )
    dispatched = _gradient_wrt_p1(
        lambda logits, reduction: losses.background_regularizer(logits, kind, reduction), "sum"
    )
    assert dispatched == pytest.approx(expected, abs=1e-6)


def test_regularizer_gradients_with_respect_to_the_logits():
    # p1 = sigmoid(z1 - z2), so dL/dz1 = dL/dp1 * p1 (1 - p1) = -dL/dz2
    #   p1 = 0.3: p1 (1 - p1) = 0.21 -> EEM -0.177933, SEM -0.2
    #   p1 = 0.8: p1 (1 - p1) = 0.16 -> EEM  0.221807, SEM  0.3
    for function, expected in ((losses.eem_loss, [-0.177933, 0.221807]),
                               (losses.sem_loss, [-0.2, 0.3])):
        logits = log_probs([[0.3, 0.7], [0.8, 0.2]]).requires_grad_(True)
        function(logits, "sum").backward()
        assert logits.grad[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
        assert logits.grad[:, 1].tolist() == pytest.approx([-g for g in expected], abs=1e-6)


def test_regularizer_values_on_three_classes_by_hand():
    # p = (0.5, 0.25, 0.25): H = 0.5 log 2 + 2 * 0.25 log 4 = 1.5 log 2 = 1.039721
    #   EEM = -1.039721 ; KL(p||q) = -H + log 3 = 0.058892
    #   SEM = -(1/3)(log 0.5 + 2 log 0.25) = (5/3) log 2 = 1.155245 ; KL(q||p) = 0.056633
    logits = log_probs([[0.5, 0.25, 0.25]])
    assert losses.entropy(logits).item() == pytest.approx(1.039721, abs=1e-6)
    assert losses.entropy(logits, "mean").item() == pytest.approx(1.039721, abs=1e-6)
    assert losses.eem_loss(logits).item() == pytest.approx(-1.039721, abs=1e-6)
    assert losses.kl_to_uniform(logits).item() == pytest.approx(0.058892, abs=1e-6)
    assert losses.sem_loss(logits).item() == pytest.approx(1.155245, abs=1e-6)
    assert losses.kl_from_uniform(logits).item() == pytest.approx(0.056633, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        losses.entropy(logits, "max")


def test_entropy_terms_are_over_dim_1_also_with_extra_dims():
    # logits (1, 2, 2): class axis 1, two positions with p = (.25, .75) and (.5, .5)
    #   H = (0.562335, 0.693147) ; SEM = (-(log .25 + log .75)/2, log 2) = (0.836988, 0.693147)
    logits = torch.log(torch.tensor([[[0.25, 0.5], [0.75, 0.5]]], dtype=F64))
    entropy = losses.entropy(logits)
    assert entropy.shape == (1, 2)
    assert entropy.flatten().tolist() == pytest.approx([0.562335, 0.693147], abs=1e-6)
    sem = losses.sem_loss(logits, "none")
    assert sem.flatten().tolist() == pytest.approx([0.836988, 0.693147], abs=1e-6)


def test_maxmin_loss_parts_by_hand():
    # p+ = (0.1, 0.9), label 1: H(p, p+) = -log 0.9 = 0.105361
    # p- = (0.4, 0.6): SEM = -(1/2)(log 0.4 + log 0.6) = 0.713558 ; lambda = 0.5
    # M+ of 4 pixels with mean 0.25: psi(-0.25) + psi(-0.75) = 0.334795 (t = 5)
    fg = torch.tensor([0.0, 0.5, 0.25, 0.25], dtype=F64).view(1, 1, 2, 2)
    args = (log_probs([[0.1, 0.9]]), log_probs([[0.4, 0.6]]), torch.tensor([1]), fg)
    loss, parts = losses.maxmin_loss(*args, t=5.0, background_weight=0.5)
    assert loss.item() == pytest.approx(0.105361 + 0.5 * 0.713558 + 0.334795, abs=1e-6)
    assert parts["ce_fg"] == pytest.approx(0.105361, abs=1e-6)
    assert parts["bg_reg"] == pytest.approx(0.713558, abs=1e-6)
    assert parts["size"] == pytest.approx(0.334795, abs=1e-6)
    assert parts["fg_size"] == pytest.approx(0.25)
    loss, parts = losses.maxmin_loss(*args, t=5.0, background_weight=0.5,
                                     use_size_constraint=False)
    assert loss.item() == pytest.approx(0.105361 + 0.5 * 0.713558, abs=1e-6)
    assert "size" not in parts and parts["fg_size"] == pytest.approx(0.25)
    # defaults: lambda = 1e-7 (GlaS, Sec. 3.3) and R = SEM -> 0.105361 + 0.334795 + 7e-8
    loss, _ = losses.maxmin_loss(*args, t=5.0)
    assert loss.item() == pytest.approx(0.105361 + 1e-7 * 0.713558 + 0.334795, abs=1e-6)


def test_defaults_of_the_regulariser_and_of_the_pseudo_binarisation():
    # R defaults to SEM with the batch mean: (p = (.3, .7), (.8, .2))
    #   SEM = mean(-(log .3 + log .7)/2, -(log .8 + log .2)/2) = mean(0.780324, 0.916291)
    logits = log_probs([[0.3, 0.7], [0.8, 0.2]])
    assert losses.background_regularizer(logits).item() == pytest.approx(
        (0.780324 + 0.916291) / 2, abs=1e-6
    )
    # Eq. 12 with sigma = 0.15, omega = 5: M = 0.15 -> 1/2 ; M = 0.35 -> sigmoid(1) = 0.731059
    out = losses.pseudo_binarize(torch.tensor([0.15, 0.35], dtype=F64))
    assert out.tolist() == pytest.approx([0.5, 0.731059], abs=1e-6)


def test_minmax_normalize_is_per_image():
    # two maps with different ranges: each goes to [0, 1] on its own
    #   (2, 4, 6, 10) -> (0, 1/4, 1/2, 1) ; (0, 1, 2, 3) -> (0, 1/3, 2/3, 1)
    maps = torch.tensor([[2.0, 4.0, 6.0, 10.0], [0.0, 1.0, 2.0, 3.0]]).view(2, 1, 2, 2)
    normalized = losses.minmax_normalize(maps).view(2, 4)
    assert normalized[0].tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert normalized[1].tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    # a flat map divides by eps, not by 0: (5, 5, 5, 5) -> 0
    assert losses.minmax_normalize(torch.full((1, 1, 2, 2), 5.0)).abs().max().item() == 0.0


# -- min-max entropy: recursive erasing with trust (App. A.1, Eq. 10-12) --------------------------
# Three samples, labels (1, 1, 0), masks of 1 x 3 pixels, trust slope sigma = 2, depth u = 3.
# Localiser posteriors p^(h) and masks M^(h) at each step h (h = 0 is the plain image):
#   sample 0: p = (.4,.6) (.2,.8) (.38,.62) (.45,.55)
#             h = 1, 2 right and p(y) >= 0.6: trusted; h = 3 right but p(y) < 0.6: not trusted
#             (at h = 2 its loss -log .62 = 0.478036 is below its own -log .6 = 0.510826 but
#             above the batch mean 0.408059: the comparison is per sample)
#   sample 1: p = (.3,.7) (.6,.4) (.1,.9) (.2,.8)
#             h = 1 wrong: not trusted, and never again (h = 2 would pass Eq. 12 alone)
#   sample 2: p = (.7,.3) (.7,.3) (.3,.7) (.9,.1)
#             h = 1 same loss as h = 0: trusted; h = 2 wrong
# Trust (Eq. 11) Gamma(h) = exp(-h / sigma) * p^(h)(y):
#   Gamma(1, 0) = exp(-1/2) 0.8  = 0.485225     Gamma(2, 0) = exp(-1) 0.62 = 0.228085
#   Gamma(1, 2) = exp(-1/2) 0.7  = 0.424571     all others 0
# No sample is trusted at h = 3: erasing stops there, after 2 steps.
# Accumulated mask (Eq. 10) M = max(M^(0), Gamma(1) M^(1), Gamma(2) M^(2)):
#   sample 0: max((.5,.1,.1), .485225 (.2,.9,.1), .228085 (.1,.1,.9))
#           = (.5, .436702, .205277)
#   sample 1: M^(0) = (.3, .6, .2)
#   sample 2: max((.1,.2,.3), .424571 (.9,.1,.1)) = (.382114, .2, .3)
MASKS = [  # [h][sample] -> 3 pixels
    [[0.5, 0.1, 0.1], [0.3, 0.6, 0.2], [0.1, 0.2, 0.3]],
    [[0.2, 0.9, 0.1], [1.0, 1.0, 1.0], [0.9, 0.1, 0.1]],
    [[0.1, 0.1, 0.9], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
]
POSTERIORS = [  # [h][sample]
    [[0.4, 0.6], [0.3, 0.7], [0.7, 0.3]],
    [[0.2, 0.8], [0.6, 0.4], [0.7, 0.3]],
    [[0.38, 0.62], [0.1, 0.9], [0.3, 0.7]],
    [[0.45, 0.55], [0.2, 0.8], [0.9, 0.1]],
]
ACCUMULATED = [[0.5, 0.436702, 0.205277], [0.3, 0.6, 0.2], [0.382114, 0.2, 0.3]]


class ScriptedErasing:
    """Stands in for the localiser and the classifier of a :class:`MinMaxEntropyModel`.

    The h-th call of ``localizer`` returns ``POSTERIORS[h]`` (as logits) and ``MASKS[h]``
    and records the image it was given; ``masked_logits`` records the mask it was given and
    returns fixed classifier posteriors.
    """

    fg_posteriors = ((0.2, 0.8), (0.4, 0.6), (0.5, 0.5))
    bg_posteriors = ((0.5, 0.5), (0.25, 0.75), (0.5, 0.5))

    def __init__(self):
        self.seen_images: list[torch.Tensor] = []
        self.seen_masks: list[torch.Tensor] = []

    def localizer(self, images):
        h = len(self.seen_images)
        self.seen_images.append(images.clone())
        mask = torch.tensor(MASKS[h], dtype=F64).view(3, 1, 1, 3)
        return None, log_probs(POSTERIORS[h]), mask

    def masked_logits(self, images, fg):
        self.seen_masks.append(fg.clone())
        return log_probs(self.fg_posteriors), log_probs(self.bg_posteriors)


def scripted_minmax(**head) -> tuple[MinMaxEntropyModel, ScriptedErasing]:
    torch.manual_seed(0)
    config = ModelConfig(arch="minmax-entropy", width=0.0625, head=head)
    model = build_model(config)
    script = ScriptedErasing()
    model.localizer = script.localizer
    model.masked_logits = script.masked_logits
    return model, script


def test_minmax_entropy_trust_and_mask_accumulation_by_hand():
    model, script = scripted_minmax(erase_depth=3, trust_slope=2.0, background_weight=0.5,
                                    localizer_weight=2.0)
    images = torch.full((3, 1, 1, 3), 2.0, dtype=F64)
    labels = torch.tensor([1, 1, 0])
    loss, parts = model.training_step(images, labels, epoch=0)

    # the localiser saw X, then X^(h+1) = X^(h) (1 - M^(h)), for h = 0 .. 3
    masks = torch.tensor(MASKS, dtype=F64).view(4, 3, 1, 1, 3)
    assert len(script.seen_images) == 4
    expected_image = images
    for h in range(4):
        assert torch.allclose(script.seen_images[h], expected_image)
        expected_image = expected_image * (1 - masks[h])
    # the classifier read X * M and X * (1 - M) with M accumulated as in Eq. 10-11
    (accumulated,) = script.seen_masks
    expected = [value for row in ACCUMULATED for value in row]
    assert accumulated.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert parts["erase_steps"] == 2.0
    assert parts["fg_size"] == pytest.approx(sum(expected) / 9, abs=1e-6)

    # loss = H(p, p+) + 0.5 H(q, p-) + 2 H(p, p_M^(0)) + 2 (1/2) sum_h mean_i Gamma(h, i) CE(h, i)
    #   H(p, p+)  = mean(-log .8, -log .6, -log .5) = (0.223144 + 0.510826 + 0.693147)/3 = 0.475705
    #   H(q, p-)  = mean(log 2, -(log .25 + log .75)/2, log 2) = (0.693147 + 0.836988 + 0.693147)/3
    #             = 0.741094
    #   H(p, p_M) = mean(-log .6, -log .7, -log .7) = (0.510826 + 0.356675 + 0.356675)/3 = 0.408059
    #   h = 1: (0.485225 * -log .8 + 0.424571 * -log .7) / 3 = (0.108275 + 0.151434)/3 = 0.086570
    #   h = 2: (0.228085 * -log .62) / 3 = 0.109033 / 3 = 0.036344
    ce_fg, bg, ce_loc = 0.475705, 0.741094, 0.408059
    erasing = (0.086570 + 0.036344) / 2
    assert parts["ce_fg"] == pytest.approx(ce_fg, abs=1e-6)
    assert parts["bg_reg"] == pytest.approx(bg, abs=1e-6)
    assert parts["ce_localizer"] == pytest.approx(ce_loc, abs=1e-6)
    assert loss.item() == pytest.approx(ce_fg + 0.5 * bg + 2 * ce_loc + 2 * erasing, abs=1e-5)
    assert parts["loss"] == pytest.approx(loss.item())
    assert "size" not in parts


def test_minmax_entropy_depth_limit_and_size_term_by_hand():
    # depth 1: only h = 1 is tried; M = max(M^(0), Gamma(1) M^(1)) with the values above
    #   sample 0: (.5, .436702, .1) mean 0.345567 ; sample 1: mean 0.366667 ;
    #   sample 2: (.382114, .2, .3) mean 0.294038 -- all above 1/t^2 = 0.04 (t = 5)
    # size term: mean_i -(1/5)(log s+_i + log(1 - s+_i))
    # R = EEM: -H(p-) = mean(log .5, .25 log .25 + .75 log .75, log .5) = -0.649543
    model, script = scripted_minmax(erase_depth=1, trust_slope=2.0, regularizer="eem")
    model.use_size_constraint = True  # not a factory option of this architecture; t = 5
    images = torch.ones(3, 1, 1, 3, dtype=F64)
    loss, parts = model.training_step(images, torch.tensor([1, 1, 0]), epoch=0)
    assert len(script.seen_images) == 2 and parts["erase_steps"] == 1.0
    (accumulated,) = script.seen_masks
    sizes = [0.345567, 0.366667, 0.294038]
    assert accumulated.mean(dim=(1, 2, 3)).tolist() == pytest.approx(sizes, abs=1e-6)
    size = sum(-(math.log(s) + math.log(1 - s)) / 5 for s in sizes) / 3
    assert parts["size"] == pytest.approx(size, abs=1e-6)
    # loss: 0.475705 + 1 * -0.649543 + 1 * 0.408059 + (h = 1 term 0.086570) / 1 + size
    assert parts["bg_reg"] == pytest.approx(-0.649543, abs=1e-6)
    assert loss.item() == pytest.approx(0.475705 - 0.649543 + 0.408059 + 0.086570 + size,
                                        abs=1e-5)


def test_minmax_entropy_without_erasing_is_the_plain_objective():
    # depth 0: the localiser runs once, M = M^(0), no erasing term
    model, script = scripted_minmax(erase_depth=0)
    loss, parts = model.training_step(torch.ones(3, 1, 1, 3, dtype=F64), torch.tensor([1, 1, 0]), 0)
    assert len(script.seen_images) == 1 and parts["erase_steps"] == 0.0
    assert torch.equal(script.seen_masks[0].view(3, 3), torch.tensor(MASKS[0], dtype=F64))
    assert loss.item() == pytest.approx(0.475705 + 0.741094 + 0.408059, abs=1e-5)


def test_minmax_entropy_refuses_bad_parameters():
    with pytest.raises(ValueError, match="erase_depth"):
        build_model(ModelConfig(arch="minmax-entropy", width=0.0625, head={"erase_depth": -1}))
    with pytest.raises(ValueError, match="trust_slope"):
        build_model(ModelConfig(arch="minmax-entropy", width=0.0625, head={"trust_slope": 0.0}))


# -- Deep MIL gated attention (Ilse et al. 2018, Eq. 9) -------------------------------------------
def hand_made_deepmil(gated: bool = True) -> DeepMilPool:
    """One feature channel, attention size 1: V = 1, U = 1 with bias -1, w = 1, W = (2, -1).

    With bias b = (0.5, 0.25) on the classifier.
    """
    head = DeepMilPool(1, 2, attention_dim=1, gated=gated)
    with torch.no_grad():
        for conv in (head.attention_v, head.attention_w):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        if gated:
            head.attention_u.weight.fill_(1.0)
            head.attention_u.bias.fill_(-1.0)
        head.classifier.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        head.classifier.bias.copy_(torch.tensor([0.5, 0.25]))
    return head


def test_deepmil_gated_attention_by_hand():
    # Two locations with h = 0 and h = 1.
    #   gated score: tanh(V h) * sigmoid(U h - 1) -> (0 * sigmoid(-1), tanh 1 * sigmoid 0)
    #              = (0, 0.761594 / 2 = 0.380797)
    #   attention a = softmax(0, 0.380797) = (1 - sigmoid(0.380797), sigmoid(0.380797))
    #               = (0.405935, 0.594065)     (without the gate: sigmoid(tanh 1) = 0.681700)
    #   bag z = sum a_k h_k = 0.594065 ; logits = W z + b = (1.688131, -0.344065)
    #   cams_k = hw a_k (W h_k) + b: location 0 -> b = (0.5, 0.25),
    #            location 1 -> 2 * 0.594065 * (2, -1) + b = (2.876261, -0.938131)
    head = hand_made_deepmil()
    features = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    a1 = sigmoid(math.tanh(1.0) * 0.5)
    assert a1 == pytest.approx(0.594065, abs=1e-6)
    weights = head.attention(features)
    assert weights.flatten().tolist() == pytest.approx([1 - a1, a1], abs=1e-6)
    cams, logits = head(features)
    assert logits.flatten().tolist() == pytest.approx([1.688131, -0.344065], abs=1e-5)
    assert cams[0, :, 0, 0].tolist() == pytest.approx([0.5, 0.25], abs=1e-6)
    assert cams[0, :, 0, 1].tolist() == pytest.approx([2.876261, -0.938131], abs=1e-5)


def test_deepmil_without_gate_by_hand():
    # tanh attention only: scores (0, tanh 1), a = (1 - sigmoid(tanh 1), sigmoid(tanh 1))
    #   = (0.318300, 0.681700); logits = (2 * 0.681700 + 0.5, -0.681700 + 0.25)
    head = hand_made_deepmil(gated=False)
    assert head.attention_u is None
    features = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    a1 = sigmoid(math.tanh(1.0))
    assert head.attention(features).flatten().tolist() == pytest.approx([1 - a1, a1], abs=1e-6)
    _, logits = head(features)
    assert logits.flatten().tolist() == pytest.approx([1.863399, -0.431700], abs=1e-5)


def test_deepmil_defaults():
    head = DeepMilPool(4, 2)
    assert head.attention_v.out_channels == 128 and head.attention_u is not None
    assert head.attention_u.out_channels == 128 and head.classifier.out_channels == 2


# -- CAM pooling heads -------------------------------------------------------------------------------
def test_wildcat_region_counts_by_hand():
    maps = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # values 1 .. 9
    # kmax = 0.1 of 9 locations: round(0.9) = 1 -> the max, 9
    assert wildcat_spatial_pool(maps, kmax=0.1, kmin=0, alpha=0.6).item() == 9.0
    # kmin = 1 (a count): top-3 mean 8 + 0.5 * min 1 = 8.5 ; alpha = 0 drops it: 8
    assert wildcat_spatial_pool(maps, kmax=3, kmin=1, alpha=0.5).item() == 8.5
    assert wildcat_spatial_pool(maps, kmax=3, kmin=1, alpha=0.0).item() == 8.0
    # counts above the number of locations are capped: mean of all 9 = 5 (+ 0.5 * 5)
    assert wildcat_spatial_pool(maps, kmax=20, kmin=20, alpha=0.5).item() == 7.5


def test_pooling_heads_defaults_and_checks():
    head = WildcatPool(4, 2)
    assert (head.modalities, head.kmax, head.kmin, head.alpha) == (5, 0.3, 0.0, 0.6)
    assert isinstance(head.map_dropout, nn.Dropout) and head.map_dropout.p == pytest.approx(0.1)
    assert head.to_modalities.out_channels == 10
    assert isinstance(WildcatPool(4, 2, dropout=0.0).map_dropout, nn.Identity)
    assert WildcatPool(4, 2, modalities=1).to_modalities.out_channels == 2
    with pytest.raises(ValueError, match="^modalities must be >= 1, not 0$"):
        WildcatPool(4, 2, modalities=0)
    with pytest.raises(ValueError, match="^kmax must be positive, not 0$"):
        WildcatPool(4, 2, kmax=0)
    assert CamLsePool(4, 2).r == 10.0
    with pytest.raises(ValueError, match="^LSE sharpness r must be positive, not 0$"):
        CamLsePool(4, 2, r=0)
    assert build_pooling("lse", 4, 2, r=3.0).r == 3.0
    with pytest.raises(ValueError, match="^unknown pooling 'gap'; expected one of"):
        build_pooling("gap", 4, 2)


def test_cam_pooling_by_hand():
    # CAM of one class over 4 locations (0, 1, 2, 5): average 2, max 5,
    # LSE with r = 1: log((1 + e + e^2 + e^5) / 4) = 3.685878
    cams = torch.tensor([0.0, 1.0, 2.0, 5.0]).view(1, 1, 2, 2)
    assert CamAvgPool(1, 1).pool(cams).item() == 2.0
    assert CamMaxPool(1, 1).pool(cams).item() == 5.0
    assert CamLsePool(1, 1, r=1.0).pool(cams).item() == pytest.approx(3.685878, abs=1e-6)
    # LSE with r = 2: (1/2) log((1 + e^2 + e^4 + e^10) / 4) = 4.308281
    assert CamLsePool(1, 1, r=2.0).pool(cams).item() == pytest.approx(4.308281, abs=1e-5)


# -- Grad-CAM (Selvaraju et al. 2017, Eq. 1-2) ----------------------------------------------------
class LinearCamNet(nn.Module):
    """A model Grad-CAM can explain by hand.

    ``backbone.layer4`` is the identity on every second column of the input, so the feature
    map ``A`` of a ``(B, 2, 1, 4)`` image is ``(B, 2, 1, 2)``; ``logit_c = mean_z sum_k W[c, k]
    A_k(z)`` (CAM-Avg), hence ``d logit_c / d A_k(z) = W[c, k] / 2`` and Grad-CAM's weights are
    ``W[c] / 2``. Before that pass, ``layer4`` also runs once on a constant image whose output
    does not reach the logits (as Max-Min's localiser pass does): Grad-CAM must use the last one.
    """

    weight = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.layer4 = nn.Identity()

    def forward(self, x):
        self.backbone.layer4(torch.ones_like(x[..., ::2]))
        features = self.backbone.layer4(x[..., ::2])
        logits = torch.einsum("ck,bkhw->bc", self.weight, features) / 2
        return {"logits": logits}


# image 0: A_0 = (3, 1), A_1 = (1, 2): logits ((4 - 3)/2, (-4 + 6)/2) = (0.5, 1) -> class 1
# image 1: A_0 = (2, 4), A_1 = (1, 1): logits ((6 - 2)/2, (-6 + 4)/2) = (2, -1) -> class 0
GRADCAM_IMAGES = torch.tensor(
    [
        [[[3.0, 9.0, 1.0, 9.0]], [[1.0, 9.0, 2.0, 9.0]]],
        [[[2.0, 9.0, 4.0, 9.0]], [[1.0, 9.0, 1.0, 9.0]]],
    ]
)


def test_grad_cam_by_hand():
    # predicted classes:
    #   image 0, class 1, weights (-1/2, 1): -(3, 1)/2 + (1, 2) = (-0.5, 1.5) -> ReLU (0, 1.5)
    #   image 1, class 0, weights (1/2, -1/2): ((2, 4) - (1, 1))/2 = (0.5, 1.5)
    # bilinear upsampling 2 -> 4 columns (half-pixel centres, edges clamped):
    #   (a, b) -> (a, 3a/4 + b/4, a/4 + 3b/4, b)
    #   image 0: (0, 0.375, 1.125, 1.5) -> min-max (0, 0.25, 0.75, 1)
    #   image 1: (0.5, 0.75, 1.25, 1.5) -> min-max (0, 0.25, 0.75, 1)
    # (negated weights would give (1, 0.75, 0.25, 0) and all zeros)
    model = LinearCamNet()
    maps = grad_cam(model, GRADCAM_IMAGES)
    assert maps.shape == (2, 1, 1, 4)
    assert maps[0].flatten().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=1e-6)
    assert maps[1].flatten().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=1e-6)


def test_grad_cam_of_a_chosen_class_by_hand():
    # class 0 for both: image 0: ((3, 1) - (1, 2))/2 = (1, -0.5) -> ReLU (1, 0)
    #   -> upsampled (1, 0.75, 0.25, 0) -> min-max the same
    # image 1 as above: (0, 0.25, 0.75, 1)
    model = LinearCamNet()
    maps = grad_cam(model, GRADCAM_IMAGES, class_index=0)
    assert maps[0].flatten().tolist() == pytest.approx([1.0, 0.75, 0.25, 0.0], abs=1e-6)
    assert maps[1].flatten().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=1e-6)
    # one class per image, (1, 1): image 1, class 1, weights (-1/2, 1):
    #   -(2, 4)/2 + (1, 1) = (0, -1) -> ReLU (0, 0): an empty map stays 0, not NaN
    maps = grad_cam(model, GRADCAM_IMAGES, class_index=torch.tensor([1, 1]))
    assert maps[0].flatten().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=1e-6)
    assert maps[1].flatten().tolist() == [0.0, 0.0, 0.0, 0.0]


def test_grad_cam_of_one_faint_image():
    # image 0 divided by 10: the map (0, 0.0375, 0.1125, 0.15) has a range below 1 and still
    # normalises to (0, 0.25, 0.75, 1)
    maps = grad_cam(LinearCamNet(), GRADCAM_IMAGES[:1] / 10)
    assert maps.flatten().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=1e-6)


def test_grad_cam_needs_a_backbone_layer4():
    needs = r"^grad_cam needs a model with a ResNet `backbone` \(attribute `backbone.layer4`\)$"
    with pytest.raises(ValueError, match=needs):
        grad_cam(nn.Linear(2, 2), torch.zeros(1, 2))
    no_layer4 = nn.Module()
    no_layer4.backbone = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=needs):
        grad_cam(no_layer4, torch.zeros(1, 2))

    class NoFeaturePass(LinearCamNet):
        def forward(self, x):
            return {"logits": x.flatten(1)[:, :2]}

    with pytest.raises(RuntimeError, match="^the backbone's layer4 did not run during forward$"):
        grad_cam(NoFeaturePass(), GRADCAM_IMAGES)


# -- train_wsl keeps the best epoch, not the last one ---------------------------------------------
class ScriptedBias(WslModel):
    """Logits are a learnt bias ``b`` whatever the image; epoch e's loss is ``g_e . b``.

    With plain SGD (lr 1, no momentum, no weight decay) and one batch per epoch, epoch e
    moves ``b`` by exactly ``-g_e``, so every validation figure is known in advance.
    """

    classes = ("a", "b")

    def __init__(self, gradients):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))
        self.gradients = gradients

    def forward(self, x):
        logits = self.bias.expand(x.shape[0], 2)
        return {"logits": logits, "cams": logits[:, :, None, None]}

    def training_step(self, images, labels, epoch):
        loss = (torch.tensor(self.gradients[epoch]) * self.bias).sum()
        return loss, {"scripted": float(epoch)}


def _items(labels):
    return [(torch.zeros(3, 2, 2), torch.tensor(label), torch.full((2, 2), -1)) for label in labels]


def _scripted_run(gradients, val_labels=(1, 1), **changes):
    values = {"epochs": len(gradients), "batch_size": 2, "lr": 1.0, "momentum": 0.0,
              "weight_decay": 0.0, "lr_schedule": "constant", "patience": None, "device": "cpu"}
    values.update(changes)
    model = ScriptedBias(gradients)
    val_set = _items(val_labels)
    result = run_to_end(train_wsl(model, _items([0, 1]), val_set, TrainConfig(**values)))
    return model, result


def test_train_wsl_restores_an_early_best_epoch():
    # b after each epoch: (-1, 1), (2, -2), (3, -3); validation labels are all 1:
    #   epoch 0: p(1) = sigmoid(2) = 0.880797, error 0, loss log(1 + e^-2) = 0.126928
    #   epoch 1: error 1, loss log(1 + e^4) = 4.018150 ; epoch 2: error 1, loss 6.002476
    model, result = _scripted_run([[1.0, -1.0], [-3.0, 3.0], [-1.0, 1.0]])
    assert [r["val_error"] for r in result.history] == [0.0, 1.0, 1.0]
    assert [r["val_loss"] for r in result.history] == pytest.approx(
        [0.126928, 4.018150, 6.002476], abs=1e-6
    )
    assert result.best_epoch == 0 and result.stopped == "epochs"
    assert result.best_metrics["val_loss"] == pytest.approx(0.126928, abs=1e-6)
    assert model.bias.tolist() == pytest.approx([-1.0, 1.0])
    assert [r["train_scripted"] for r in result.history] == [0.0, 1.0, 2.0]


def test_train_wsl_breaks_error_ties_by_loss_and_selects_on_loss():
    # b: (-1, 1) error 0 loss 0.126928 ; (-2, 2) error 0 loss log(1 + e^-4) = 0.018150 ;
    #    (0.5, -0.5) error 1 loss log(1 + e) = 1.313262
    gradients = [[1.0, -1.0], [1.0, -1.0], [-2.5, 2.5]]
    model, result = _scripted_run(gradients)
    assert result.best_epoch == 1 and model.bias.tolist() == pytest.approx([-2.0, 2.0])
    # selection on loss alone: b = (-1, 1), (1, -1), (-3, 3): losses 0.126928, 2.126928,
    #    log(1 + e^-6) = 0.002476 -> the last epoch
    model, result = _scripted_run([[1.0, -1.0], [-2.0, 2.0], [4.0, -4.0]], select_on="loss")
    assert result.best_epoch == 2 and model.bias.tolist() == pytest.approx([-3.0, 3.0])
    # validation labels (1, 1, 0), margin m = b1 - b0: error 1/3 if m > 0 else 2/3,
    # loss (2 log(1 + e^-m) + log(1 + e^m)) / 3
    #   epoch 0: b = (-2, 2), m = 4: error 1/3, loss 1.351483
    #   epoch 1: b = (0.05, -0.05), m = -0.1: error 2/3, loss 0.711063
    # selection on the error keeps epoch 0, selection on the loss epoch 1
    for select_on, best, bias in (("error", 0, [-2.0, 2.0]), ("loss", 1, [0.05, -0.05])):
        model, result = _scripted_run([[2.0, -2.0], [-2.05, 2.05]], (1, 1, 0), select_on=select_on)
        assert [r["val_loss"] for r in result.history] == pytest.approx(
            [1.351483, 0.711063], abs=1e-6
        )
        assert [r["val_error"] for r in result.history] == pytest.approx([1 / 3, 2 / 3])
        assert result.best_epoch == best and model.bias.tolist() == pytest.approx(bias)
    # early stopping: best at epoch 0, patience 1 -> stops after epoch 1, restores epoch 0
    model, result = _scripted_run([[1.0, -1.0], [-3.0, 3.0], [-1.0, 1.0]], patience=1)
    assert result.stopped == "early-stopping" and len(result.history) == 2
    assert result.best_epoch == 0 and model.bias.tolist() == pytest.approx([-1.0, 1.0])


# -- Max-Min on a hand-made trunk ----------------------------------------------------------------
class EvenColumns(nn.Module):
    """A trunk of stride 2 along the width: the feature map is every second column of ``x``.

    It records the shape of every input, to check the classifier's resizing.
    """

    out_channels = 2
    output_stride = 2

    def __init__(self):
        super().__init__()
        self.input_shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.input_shapes.append(tuple(x.shape[2:]))
        return x[..., ::2]


def hand_made_maxmin(**kwargs) -> MaxMinModel:
    """WILDCAT heads with one modality, top-1 pooling, no dropout; class k's map is channel k."""
    model = MaxMinModel(EvenColumns(), ("a", "b"), modalities=1, kmax=1, head_dropout=0.0,
                        **kwargs)
    with torch.no_grad():
        for head in (model.mask_head, model.classifier_head):
            head.to_modalities.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            head.to_modalities.bias.zero_()
    return model.eval()


# Image (1, 2, 1, 6); the trunk keeps columns 0, 2, 4 (the 9s are never read by the localiser):
#   channel 0: A = (0, 1, 3), channel 1: B = (2, 0, 0)
# Localiser: CAMs (A, B), logits = top-1 = (3, 2), posterior p = (sigmoid(1), sigmoid(-1))
#   = (0.731059, 0.268941); mask p0 A + p1 B = (0.537883, 0.731059, 2.193176)
# Bilinear upsampling 3 -> 6 (half-pixel centres): (m0, (3m0+m1)/4, (m0+3m1)/4, (3m1+m2)/4,
#   (m1+3m2)/4, m2); min-max normalised with r = (m1-m0)/(m2-m0) = 0.116702:
#   u = (0, r/4, 3r/4, 3r/4 + 1/4, r/4 + 3/4, 1)
#     = (0, 0.029175, 0.087526, 0.337526, 0.779175, 1)
# M+ = sigmoid(5 (u - 0.15)) = (0.320821, 0.353401, 0.422537, 0.718621, 0.958746, 0.985936)
# Classifier on X * M+ (columns 0, 2, 4): channel 0 (0, 0.422537, 3 * 0.958746),
#   channel 1 (2 * 0.320821, 0, 0): logits (2.876238, 0.641643)
# on X * (1 - M+): channel 0 max(0, 0.577463, 0.123762), channel 1 2 * 0.679179:
#   logits (0.577463, 1.358357)
MAXMIN_IMAGE = torch.tensor(
    [[[[0.0, 9.0, 1.0, 9.0, 3.0, 9.0]], [[2.0, 9.0, 0.0, 9.0, 0.0, 9.0]]]]
)
MAXMIN_FG = [0.320821, 0.353401, 0.422537, 0.718621, 0.958746, 0.985936]


def test_maxmin_localizer_and_classifier_by_hand():
    model = hand_made_maxmin()
    with torch.no_grad():
        cams, localizer_logits, fg = model.localizer(MAXMIN_IMAGE)
        output = model(MAXMIN_IMAGE)
        logits_fg, logits_bg = model.masked_logits(MAXMIN_IMAGE, fg)
    assert localizer_logits.flatten().tolist() == pytest.approx([3.0, 2.0])
    assert cams.shape == (1, 2, 1, 3)
    assert fg.flatten().tolist() == pytest.approx(MAXMIN_FG, abs=1e-6)
    assert torch.equal(output["fg"], fg) and torch.equal(output["cams"], cams)
    assert torch.equal(output["localizer_logits"], localizer_logits)
    assert output["logits"].flatten().tolist() == pytest.approx([2.876238, 0.641643], abs=1e-5)
    assert logits_fg.flatten().tolist() == pytest.approx([2.876238, 0.641643], abs=1e-5)
    assert logits_bg.flatten().tolist() == pytest.approx([0.577463, 1.358357], abs=1e-5)
    # localize: at the input size M+ itself; at (1, 3) the bilinear average of column pairs
    #   ((fg0 + fg1)/2, (fg2 + fg3)/2, (fg4 + fg5)/2) = (0.337111, 0.570579, 0.972341)
    assert torch.equal(model.localize(output, (1, 6)), fg)
    smaller = model.localize(output, (1, 3))
    assert smaller.flatten().tolist() == pytest.approx([0.337111, 0.570579, 0.972341], abs=1e-6)


def test_maxmin_training_step_by_hand():
    # label 0, defaults lambda = 1e-7, R = SEM, t = 5, localizer weight 1:
    #   H(p, p+) = log(1 + exp(0.641643 - 2.876238)) = 0.101686
    #   SEM(p-)  = logsumexp(0.577463, 1.358357) - (0.577463 + 1.358357)/2 = 0.767510
    #   s+ = mean(M+) = 0.626677: -(1/5)(log 0.626677 + log 0.373323) = 0.290527
    #   H(p, p_M) = log(1 + e^-1) = 0.313262
    #   loss = 0.101686 + 1e-7 * 0.767510 + 0.290527 + 0.313262 = 0.705475
    model = hand_made_maxmin()
    loss, parts = model.training_step(MAXMIN_IMAGE, torch.tensor([0]), epoch=0)
    assert loss.item() == pytest.approx(0.705475, abs=1e-5)
    assert parts["ce_fg"] == pytest.approx(0.101686, abs=1e-5)
    assert parts["bg_reg"] == pytest.approx(0.767510, abs=1e-5)
    assert parts["size"] == pytest.approx(0.290527, abs=1e-5)
    assert parts["fg_size"] == pytest.approx(0.626677, abs=1e-5)
    assert parts["ce_localizer"] == pytest.approx(0.313262, abs=1e-5)
    assert parts["t"] == 5.0 and parts["loss"] == pytest.approx(loss.item())
    # lambda = 2, R = EEM, localizer weight 0.5, no size term, label 1:
    #   H(p, p+) = log(1 + exp(2.876238 - 0.641643)) = 2.336281
    #   EEM(p-) = -H(p-): p- = softmax(0.577463, 1.358357) = (0.314127, 0.685873)
    #           = 0.314127 log 0.314127 + 0.685873 log 0.685873 = -0.622363
    #   H(p, p_M) = log(1 + e) = 1.313262
    #   loss = 2.336281 + 2 * -0.622363 + 0.5 * 1.313262 = 1.748186
    model = hand_made_maxmin(background_weight=2.0, regularizer="eem", localizer_weight=0.5,
                             use_size_constraint=False)
    loss, parts = model.training_step(MAXMIN_IMAGE, torch.tensor([1]), epoch=0)
    assert loss.item() == pytest.approx(1.748186, abs=1e-5)
    assert "size" not in parts


def test_maxmin_mask_with_other_sigma_and_omega():
    # same u as above; omega = 10: sigmoid(10 (u - 0.15)); sigma = 0.3: sigmoid(5 (u - 0.3))
    with torch.no_grad():
        _, _, sharper = hand_made_maxmin(omega=10.0).localizer(MAXMIN_IMAGE)
        _, _, higher = hand_made_maxmin(sigma=0.3).localizer(MAXMIN_IMAGE)
    assert sharper.flatten().tolist() == pytest.approx(
        [0.182426, 0.230012, 0.348705, 0.867066, 0.998152, 0.999797], abs=1e-6
    )
    assert higher.flatten().tolist() == pytest.approx(
        [0.182426, 0.205197, 0.256857, 0.546771, 0.916512, 0.970688], abs=1e-6
    )


def test_maxmin_classifier_input_scale_resizes_x_plus():
    # scale 0.5: a 100 x 80 image reaches the classifier at 50 x 40; sizes never go below 32
    model = hand_made_maxmin(classifier_input_scale=0.5)
    trunk = model.backbone
    with torch.no_grad():
        model.classify(torch.zeros(1, 2, 100, 80))
        model.classify(torch.zeros(1, 2, 40, 6))
    assert trunk.input_shapes == [(50, 40), (32, 32)]
    # constant channels stay constant when resized: logits (1, 2)
    with torch.no_grad():
        logits = model.classify(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 64, 64))
    assert logits.flatten().tolist() == pytest.approx([1.0, 2.0])
    assert hand_made_maxmin().classifier_input_scale == 1.0
    # channel 0 = column index 0 .. 63, halved bilinearly (half-pixel centres): output column
    # d averages input columns 2d and 2d + 1 -> 2d + 0.5; the trunk keeps even columns and the
    # head takes the top-1: 2 * 30 + 0.5 = 60.5 (corner-aligned sampling would give 60.97,
    # nearest 60)
    ramp = torch.arange(64.0).expand(1, 1, 64, 64)
    with torch.no_grad():
        logits = model.classify(torch.cat([ramp, torch.zeros_like(ramp)], dim=1))
    assert logits.flatten().tolist() == pytest.approx([60.5, 0.0])


SCHEDULE = r"^log-barrier schedule needs 0 < t_init <= t_max and t_factor >= 1$"
SCALE = r"^classifier_input_scale must be in \(0, 1\]$"


def test_maxmin_constructor_defaults_and_checks():
    model = MaxMinModel(EvenColumns(), ("a", "b"))
    head = model.mask_head
    assert (head.modalities, head.kmax, head.kmin, head.alpha) == (5, 0.3, 0.0, 0.6)
    assert head.map_dropout.p == pytest.approx(0.1)
    assert model.classifier_head.modalities == 5 and model.classifier_head.kmax == 0.3
    assert (model.sigma, model.omega, model.background_weight) == (0.15, 5.0, 1e-7)
    assert model.regularizer == "sem" and model.use_size_constraint is True
    assert (float(model.t), model.t_factor, model.t_max) == (5.0, 1.01, 10.0)
    assert model.localizer_weight == 1.0 and model.classifier_input_scale == 1.0
    assert model.inference_logits == "classifier" and model.classifier_backbone is None
    assert model.output_stride == 2 and model.mpp is None
    assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)
    assert model.extra_repr() == "sigma=0.15, omega=5.0, lambda=1e-07, R=sem, asc=True, t=5"
    for changes, message in (
        ({"regularizer": "entropy"}, "^regularizer must be one of .*, not 'entropy'$"),
        ({"inference_logits": "both"}, "^inference_logits must be one of .*, not 'both'$"),
        ({"t_init": 0.0}, SCHEDULE),
        ({"t_init": 11.0}, SCHEDULE),
        ({"t_factor": 0.99}, SCHEDULE),
        ({"classifier_input_scale": 0.0}, SCALE),
        ({"classifier_input_scale": 1.5}, SCALE),
    ):
        with pytest.raises(ValueError, match=message):
            MaxMinModel(EvenColumns(), ("a", "b"), **changes)
    with pytest.raises(ValueError, match="^Max-Min needs at least two image classes$"):
        MaxMinModel(EvenColumns(), ("a",))
    # the limits themselves are accepted: t_init = t_max, t_factor = 1, scale = 1; any t_init > 0
    MaxMinModel(EvenColumns(), ("a", "b"), t_init=10.0, t_factor=1.0, classifier_input_scale=1.0)
    assert float(MaxMinModel(EvenColumns(), ("a", "b"), t_init=0.5).t) == 0.5
    # WILDCAT settings reach both heads
    model = MaxMinModel(EvenColumns(), ("a", "b"), kmin=0.2, alpha=0.3, head_dropout=0.25)
    for head in (model.mask_head, model.classifier_head):
        assert (head.kmin, head.alpha, head.map_dropout.p) == (0.2, 0.3, 0.25)


def test_maxmin_t_schedule_by_hand():
    # t: 5 -> 5 * 1.01 = 5.05 -> 5.1005 ; capped at t_max: 9 * 1.5 = 13.5 -> 10
    model = MaxMinModel(EvenColumns(), ("a", "b"))
    model.end_epoch(0)
    assert float(model.t) == pytest.approx(5.05)
    model.end_epoch(1)
    assert float(model.t) == pytest.approx(5.1005)
    fast = MaxMinModel(EvenColumns(), ("a", "b"), t_init=9.0, t_factor=1.5)
    fast.end_epoch(0)
    assert float(fast.t) == 10.0
    assert expected_t(0) == 5.0 and expected_t(2) == pytest.approx(5.1005)
    assert expected_t(100) == 10.0
    assert expected_t(1, t_init=2.0, t_factor=3.0, t_max=5.0) == 5.0


def test_minmax_entropy_constructor_defaults():
    model = MinMaxEntropyModel(EvenColumns(), ("a", "b"))
    assert (model.erase_depth, model.trust_slope) == (3, 10.0)
    assert model.background_weight == 1.0 and model.regularizer == "sem"
    assert model.use_size_constraint is False and model.localizer_weight == 1.0
    assert model.mask_head.modalities == 5 and model.sigma == 0.15
    # its own arguments and MaxMinModel's reach the model
    model = MinMaxEntropyModel(EvenColumns(), ("a", "b"), background_weight=0.5,
                               regularizer="eem", use_size_constraint=True, modalities=2)
    assert (model.background_weight, model.regularizer) == (0.5, "eem")
    assert model.use_size_constraint is True and model.mask_head.modalities == 2
    # a depth of 0 and any positive slope are accepted
    MinMaxEntropyModel(EvenColumns(), ("a", "b"), erase_depth=0, trust_slope=1e-3)


def test_epoch_comparison_by_hand():
    """``_is_better(candidate, best, select_on)`` on hand-made validation records."""

    def record(error, loss):
        return {"val_error": error, "val_loss": loss}

    nan = float("nan")
    assert _is_better(record(0.5, 9.0), None)
    # "last": always the newer epoch
    assert _is_better(record(0.9, 9.0), record(0.1, 0.1), "last")
    # "loss": strictly lower loss; missing or NaN values never win
    assert _is_better(record(0.9, 0.5), record(0.1, 0.6), "loss")
    assert not _is_better(record(0.1, 0.6), record(0.9, 0.6), "loss")
    assert not _is_better(record(0.1, 0.7), record(0.9, 0.6), "loss")
    assert not _is_better(record(0.1, nan), record(0.9, 0.6), "loss")
    assert not _is_better(record(0.1, None), record(0.9, 0.6), "loss")
    assert not _is_better(record(0.1, 0.5), record(0.9, None), "loss")
    # "error": lower error wins whatever the loss (here by 0.5, less than 1);
    # equal error: the lower loss wins; higher error never (even by 0.5)
    assert _is_better(record(0.25, 9.0), record(0.75, 0.1), "error")
    assert _is_better(record(0.25, 0.3), record(0.25, 0.4), "error")
    assert not _is_better(record(0.25, 0.4), record(0.25, 0.4), "error")
    assert not _is_better(record(0.75, 0.1), record(0.25, 0.4), "error")
    assert not _is_better(record(nan, 0.1), record(0.25, 0.4), "error")
    assert not _is_better(record(None, 0.1), record(0.25, 0.4), "error")
    assert not _is_better(record(0.1, 0.1), record(None, 0.4), "error")
    assert not _is_better(record(0.1, 0.1), record(None, 0.4))
