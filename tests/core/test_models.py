"""Tests of the model architectures: output contract, pooling heads, Grad-CAM, MC-dropout, Max-Min,
min-max entropy erasing, the joint model, and a learnability smoke test on a toy data set."""

from __future__ import annotations

import math

import pytest
import torch

from napari_wsl_al.core.models import (
    ARCHITECTURES,
    CamLsePool,
    DeepMilPool,
    JointModel,
    MaxMinModel,
    MinMaxEntropyModel,
    ModelConfig,
    WildcatPool,
    WslModel,
    build_model,
    count_dropout_modules,
    enable_mc_dropout,
    grad_cam,
    wildcat_spatial_pool,
)
from napari_wsl_al.core.models.maxmin import expected_t

torch.set_num_threads(1)

CLASSES = ("benign", "malignant")


def tiny(arch: str, **changes) -> WslModel:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, width=0.125, classes=CLASSES, **changes))


# -- the contract of every architecture -------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_outputs_follow_the_contract(arch):
    model = tiny(arch).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        output = model(images)
        fg = model.localize(output, (64, 96))
    assert output["logits"].shape == (2, 2)
    assert output["cams"].shape == (2, 2, 2, 3)
    assert model.output_stride == 32 and model.classes == CLASSES
    assert fg.shape == (2, 1, 64, 96) and fg.min() >= 0 and fg.max() <= 1
    if arch in ("maxmin", "minmax-entropy"):
        assert output["fg"].shape == (2, 1, 64, 96)
        assert output["fg"].min() >= 0 and output["fg"].max() <= 1
        assert torch.equal(fg, output["fg"])
    if arch == "joint":
        assert output["seg_logits"].shape == (2, 2, 64, 96)
    for value in output.values():
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_step_gives_a_finite_scalar_with_gradients(arch):
    model = tiny(arch).train()
    images = torch.randn(4, 3, 64, 64)
    loss, parts = model.training_step(images, torch.tensor([0, 1, 0, 1]), epoch=0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert parts and all(isinstance(v, float) for v in parts.values())
    loss.backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    model.end_epoch(0)


def test_normalize_accepts_channels_last_uint8():
    model = tiny("cam-avg")
    images = torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8)
    assert model.normalize(images).shape == (2, 3, 48, 48)


# -- pooling heads ------------------------------------------------------------------------------
def test_wildcat_pooling_on_a_hand_made_map():
    maps = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # values 1..9
    # kmax = 0.3 of 9 locations -> 3 highest (9, 8, 7); kmin = 2 lowest (1, 2), alpha = 0.5
    assert wildcat_spatial_pool(maps, kmax=0.3, kmin=2, alpha=0.5).item() == pytest.approx(
        8 + 0.5 * 1.5
    )
    # kmin = 0 drops the negative evidence; kmax = 1 as a count is the max
    assert wildcat_spatial_pool(maps, kmax=0.3, kmin=0, alpha=0.6).item() == pytest.approx(8.0)
    assert wildcat_spatial_pool(maps, kmax=1, kmin=0, alpha=0.6).item() == pytest.approx(9.0)
    assert wildcat_spatial_pool(maps, kmax=0.999, kmin=0, alpha=0.6).item() == pytest.approx(5.0)


def test_wildcat_head_averages_modalities_per_class():
    head = WildcatPool(1, 2, modalities=2, kmax=0.3, kmin=0.2, alpha=1.0, dropout=0.5)
    with torch.no_grad():
        head.to_modalities.weight.copy_(torch.tensor([1.0, 3.0, -1.0, -3.0]).view(4, 1, 1, 1))
        head.to_modalities.bias.zero_()
    features = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    head.eval()
    cams, logits = head(features)
    assert torch.equal(cams[0, 0], 2 * features[0, 0]) and torch.equal(
        cams[0, 1], -2 * features[0, 0]
    )
    # class 0 (2, 4, .., 18): mean of top 3 = 16, + 1.0 * mean of bottom 2 (0.2 * 9 -> 2) = 3 -> 19
    # class 1 (-2, .., -18): mean of top 3 = -4, + mean of bottom 2 = -17 -> -21
    assert logits[0].tolist() == pytest.approx([19.0, -21.0])
    head.train()  # dropout acts on the maps used for pooling, never on the returned CAMs
    cams_train, _ = head(features)
    assert torch.equal(cams_train, cams)


def test_lse_pooling_interpolates_between_mean_and_max():
    cams = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])
    sharp, soft = CamLsePool(1, 1, r=200.0), CamLsePool(1, 1, r=1e-4)
    assert sharp.pool(cams).item() == pytest.approx(5.0, abs=0.01)
    assert soft.pool(cams).item() == pytest.approx(2.0, abs=1e-3)


def test_deepmil_attention_sums_to_one_and_cams_average_to_logits():
    head = DeepMilPool(8, 3, attention_dim=16)
    features = torch.randn(2, 8, 4, 5)
    weights = head.attention(features)
    assert torch.allclose(weights.sum(dim=(2, 3)), torch.ones(2, 1))
    cams, logits = head(features)
    assert cams.shape == (2, 3, 4, 5)
    assert torch.allclose(cams.mean(dim=(2, 3)), logits, atol=1e-5)
    bag = (weights * features).sum(dim=(2, 3))  # Ilse et al.: z = sum_k a_k h_k, logits = W z + b
    direct = bag @ head.classifier.weight.view(3, 8).T + head.classifier.bias
    assert torch.allclose(direct, logits, atol=1e-5)


# -- Grad-CAM and MC-dropout --------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["cam-avg", "maxmin", "joint"])
def test_grad_cam_from_inference_code(arch):
    model = tiny(arch).eval()
    if isinstance(model, JointModel):
        model.freeze_classifier()  # frozen parameters: Grad-CAM still works
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        maps = grad_cam(model, images)
        maps_class_1 = grad_cam(model, images, class_index=1)
    assert maps.shape == maps_class_1.shape == (2, 1, 64, 64)
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(p.grad is None for p in model.parameters())


def test_mc_dropout_keeps_only_dropout_stochastic():
    model = tiny("cam-avg", dropout=0.5)
    assert count_dropout_modules(model) >= 1
    enable_mc_dropout(model)
    assert not model.backbone.bn1.training and model.backbone.feature_dropout.training
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first, second = model(images)["logits"], model(images)["logits"]
    assert not torch.equal(first, second)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images)["logits"], model(images)["logits"])


# -- Max-Min --------------------------------------------------------------------------------------
def test_maxmin_defaults_follow_the_paper():
    model = tiny("maxmin")
    assert isinstance(model, MaxMinModel)
    assert (model.sigma, model.omega, model.background_weight) == (0.15, 5.0, 1e-7)
    head = model.mask_head
    assert (head.modalities, head.kmax, head.kmin) == (5, 0.3, 0.0)
    assert head.map_dropout.p == pytest.approx(0.1)
    assert float(model.t) == 5.0


def test_maxmin_log_barrier_schedule_grows_to_t_max():
    model = tiny("maxmin")
    for epoch in range(50):
        model.end_epoch(epoch)
    assert float(model.t) == pytest.approx(expected_t(50))
    assert float(model.t) == pytest.approx(5.0 * 1.01**50, rel=1e-5)
    for epoch in range(50, 200):
        model.end_epoch(epoch)
    assert float(model.t) == 10.0


def test_maxmin_mask_is_the_posterior_weighted_cam():
    model = tiny("maxmin").eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        cams, logits, fg = model.localizer(images)
        posterior = logits.softmax(dim=1)
        mask = (posterior[:, :, None, None] * cams).sum(1, keepdim=True)
        mask = torch.nn.functional.interpolate(
            mask, size=(64, 64), mode="bilinear", align_corners=False
        )
        mask = (mask - mask.min()) / (mask.max() - mask.min())
        expected = torch.sigmoid(5.0 * (mask - 0.15))
    assert torch.allclose(fg, expected, atol=1e-6)
    # the brightest location of the mask is the most foreground one
    assert fg.max().item() == pytest.approx(1 / (1 + math.exp(-5 * 0.85)), rel=1e-5)


def test_maxmin_logits_source_and_separate_classifier():
    shared = tiny("maxmin", head={"inference_logits": "localizer"}).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        output = shared(images)
    assert torch.equal(output["logits"], output["localizer_logits"])
    separate = tiny("maxmin", head={"separate_classifier_backbone": True})
    assert separate.classifier_backbone is not None
    assert separate.classifier_backbone is not separate.backbone
    loss, _ = separate.train().training_step(images, torch.tensor([0, 1]), 0)
    loss.backward()
    assert separate.classifier_backbone.conv1.weight.grad.abs().sum() > 0


# -- min-max entropy --------------------------------------------------------------------------
def test_minmax_entropy_erases_while_the_localizer_is_trusted():
    model = tiny("minmax-entropy", head={"erase_depth": 2})
    assert isinstance(model, MinMaxEntropyModel)
    labels = torch.tensor([1, 1])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # a localiser certain of class 1 whatever it sees: every step is trusted
        model.mask_head.to_modalities.bias.view(2, -1)[1].fill_(1e3)
    model.train()
    loss, parts = model.training_step(images, labels, epoch=0)
    assert parts["erase_steps"] == 2.0 and torch.isfinite(loss)
    loss.backward()
    # a localiser that is wrong on the erased images: no step is trusted
    with torch.no_grad():
        model.mask_head.to_modalities.bias.view(2, -1)[1].fill_(-1e3)
    _, parts = model.training_step(images, labels, epoch=0)
    assert parts["erase_steps"] == 0.0
    # inference never erases: forward is the plain localiser + classifier
    model.eval()
    with torch.no_grad():
        output = model(images)
        _, _, fg = model.localizer(images)
    assert torch.equal(output["fg"], fg)


# -- joint classification + segmentation -----------------------------------------------------
def test_joint_freeze_classifier_and_segmentation_step():
    model = tiny("joint")
    assert isinstance(model, JointModel)
    images = torch.randn(2, 3, 64, 64)
    classifier_before = model.classification_head.to_modalities.weight.clone()
    model.freeze_classifier()
    model.train()
    assert not model.backbone.training and not model.backbone.bn1.training
    assert model.decoder.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[:, 16:48, 16:48] = 1
    masks[1] = 255  # second image has no pixel label
    with torch.no_grad():
        before = model.eval()(images)
    assert bool(model.segmentation_trained) is False
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss, parts = model.segmentation_step(images, masks)
    assert parts["labelled_images"] == 1.0
    loss.backward()
    optimizer.step()
    assert torch.equal(model.classification_head.to_modalities.weight, classifier_before)
    assert bool(model.segmentation_trained) is True
    model.eval()
    with torch.no_grad():
        after = model(images)
        fg = model.localize(after, (64, 64))
    assert torch.equal(before["logits"], after["logits"])  # frozen classifier, frozen BN
    expected = 1 - after["seg_logits"].softmax(dim=1)[:, :1]
    assert torch.allclose(fg, expected)
    all_ignored, parts = model.train().segmentation_step(images, torch.full((2, 64, 64), 255))
    assert all_ignored.item() == 0.0 and parts["labelled_images"] == 0.0


def test_joint_frozen_state_survives_state_dict_round_trip():
    model = tiny("joint")
    model.freeze_classifier()
    fresh = tiny("joint")
    fresh.load_state_dict(model.state_dict())
    assert fresh.is_classifier_frozen and not any(
        p.requires_grad for p in fresh.backbone.parameters()
    )


# -- learnability --------------------------------------------------------------------------------
def blob_data_set(count: int, seed: int, size: int = 64, blob: int = 24):
    """Class 1: noise with a bright square; class 0: noise only. Images, labels, masks."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator) * 0.5
    labels = torch.arange(count) % 2
    masks = torch.zeros(count, 1, size, size, dtype=torch.bool)
    for index in range(count):
        if labels[index] == 1:
            row, col = torch.randint(0, size - blob + 1, (2,), generator=generator).tolist()
            images[index, :, row : row + blob, col : col + blob] += 2.0
            masks[index, :, row : row + blob, col : col + blob] = True
    return images, labels, masks


def dice(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    return (
        2 * (predicted & truth).sum().item() / max(1, predicted.sum().item() + truth.sum().item())
    )


def train_briefly(model: WslModel, steps: int) -> None:
    images, labels, _ = blob_data_set(64, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        batch = torch.randint(0, 64, (16,), generator=generator)
        loss, _ = model.training_step(images[batch], labels[batch], epoch=step // 4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 4 == 3:
            model.end_epoch(step // 4)
    model.eval()


@pytest.mark.parametrize(
    "arch, head, steps",
    [("cam-avg", {}, 40), ("maxmin", {"background_weight": 1.0}, 48)],
)
def test_tiny_models_learn_the_blob_task(arch, head, steps):
    """Classes separate; the foreground is on the blob more than off it (F1- > all-ones' 0).

    Max-Min uses lambda = 1 instead of GlaS's 1e-7: with 48 steps of a 1/8-width ResNet, the
    background term must weigh something for the mask to leave the blob-free regions.
    """
    torch.manual_seed(1)
    model = build_model(ModelConfig(arch=arch, width=0.125, classes=("noise", "blob"), head=head))
    train_briefly(model, steps)
    images, labels, masks = blob_data_set(32, seed=2)
    with torch.no_grad():
        output = model(images)
        fg = model.localize(output, (64, 64))
    accuracy = (output["logits"].argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.75
    with_blob = labels == 1
    fg, truth = fg[with_blob], masks[with_blob]
    assert fg[truth].mean() > fg[~truth].mean() + 0.02
    predicted = fg > 0.5
    f1_background = dice(~predicted, ~truth)
    assert f1_background > 0.2  # all-ones mask: F1- = 0
    assert dice(predicted, truth) > 0.2


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_backbone_gives_finer_cams_with_the_same_parameters(output_stride):
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    plain = build_model(ModelConfig(arch="wildcat", width=0.125)).eval()
    dilated = build_model(ModelConfig(arch="wildcat", width=0.125, output_stride=output_stride))
    dilated.eval()
    # Same parameter names and shapes: weights of one load into the other (torchvision files too).
    dilated.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        coarse, fine = plain(images)["cams"], dilated(images)["cams"]
    assert dilated.output_stride == output_stride
    assert fine.shape[-2:] == (64 // output_stride, 64 // output_stride)
    assert coarse.shape[-2:] == (2, 2)
    config = ModelConfig(arch="maxmin", output_stride=output_stride)
    assert ModelConfig.from_dict(config.to_dict()).output_stride == output_stride
    with pytest.raises(ValueError, match="output_stride"):
        build_model(ModelConfig(arch="cam-avg", width=0.125, output_stride=4))
