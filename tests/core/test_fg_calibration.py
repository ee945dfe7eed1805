"""Max-Min's calibrated foreground: the range from the training images, used in evaluation."""

from __future__ import annotations

import pytest
import torch

from napari_wsl_al.core.models.factory import ModelConfig, build_model
from napari_wsl_al.core.models.maxmin import calibrate_foreground


def tiny_maxmin(**head):
    config = ModelConfig(arch="maxmin", classes=("a", "b"), width=0.0625, head=head)
    torch.manual_seed(0)
    return build_model(config)


def scripted_masks(model, masks):
    """Make ``raw_mask`` return the given masks, one per call."""
    queue = list(masks)

    def raw_mask(x):
        mask = queue.pop(0)
        return None, torch.zeros(1, 2), mask

    model.raw_mask = raw_mask


def test_range_is_the_median_of_the_images_minima_and_maxima():
    model = tiny_maxmin()
    masks = [torch.tensor([[[[-1.0, 4.0]]]]), torch.tensor([[[[0.0, 2.0]]]]),
             torch.tensor([[[[-3.0, 10.0]]]])]
    scripted_masks(model, masks)
    model.train()
    low, high = calibrate_foreground(model, [torch.zeros(3, 1, 2)] * 3)
    # minima -1, 0, -3 -> median -1; maxima 4, 2, 10 -> median 4
    assert (low, high) == (-1.0, 4.0)
    assert model.fg_range == (-1.0, 4.0) and model.config.head["fg_range"] == [-1.0, 4.0]
    assert model.training  # left as it was
    with pytest.raises(ValueError, match="at least one image"):
        calibrate_foreground(model, [])


def test_calibrated_foreground_by_hand_in_evaluation_only():
    model = tiny_maxmin(fg_range=[-1.0, 4.0], sigma=0.15, omega=5.0)
    mask = torch.tensor([[[[-2.0, -1.0, 1.5, 4.0, 9.0]]]])
    scripted_masks(model, [mask, mask])
    model.eval()
    _, _, fg = model.localizer(torch.zeros(1, 3, 1, 5))
    # (m + 1) / 5 clipped: 0, 0, 0.5, 1, 1 ; then sigmoid(5 (v - 0.15))
    scaled = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])
    assert fg.flatten().tolist() == pytest.approx(torch.sigmoid(5 * (scaled - 0.15)).tolist())
    model.train()  # training keeps the paper's min-max per image: (m + 2) / 11
    _, _, fg = model.localizer(torch.zeros(1, 3, 1, 5))
    per_image = (mask.flatten() + 2.0) / 11.0
    assert fg.flatten().tolist() == pytest.approx(
        torch.sigmoid(5 * (per_image - 0.15)).tolist(), abs=1e-5)


def test_the_foreground_is_the_raw_mask_scaled_by_the_calibrated_range():
    model = tiny_maxmin()
    model.eval()
    image = torch.randn(1, 3, 64, 64)
    calibrate_foreground(model, [image[0]])
    with torch.inference_mode():
        whole = model(image)["fg"]
        _, _, raw = model.raw_mask(image)
        low, high = model.fg_range
    expected = torch.sigmoid(model.omega * (((raw - low) / (high - low)).clamp(0, 1) - model.sigma))
    assert torch.allclose(whole, expected, atol=1e-6)


def test_fg_range_must_be_ordered():
    with pytest.raises(ValueError, match="low < high"):
        tiny_maxmin(fg_range=[2.0, 1.0])
