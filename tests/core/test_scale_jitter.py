"""Multi-scale training crops (``AugmentConfig.scale``): crop sides, resizing, and the draws."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsl_al.core.data.glas import PatchRecord
from napari_wsl_al.core.data.patches import AugmentConfig, PatchTorchDataset

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
STILL = {"flips": False, "rotate90": False, "brightness": 0.0, "contrast": 0.0,
         "saturation": 0.0, "hue": 0.0, "hed": 0.0}


def _dataset(tmp_path, height=120, width=200, scale=0.0, crop=40):
    from PIL import Image

    columns = np.tile(np.arange(width, dtype=np.uint8), (height, 1))
    image = np.stack([columns, columns, columns], axis=-1)
    path = tmp_path / "ramp.png"
    Image.fromarray(image).save(path)
    record = PatchRecord("ramp", path, None, 0, "benign")
    return PatchTorchDataset([record], MEAN, STD, train=True, crop_size=crop,
                             augment=AugmentConfig(**STILL, scale=scale), seed=5)


def _span(dataset, epoch):
    """Columns of the source image that one training crop covers (its first row's range)."""
    dataset.set_epoch(epoch)
    image, _, mask = dataset[0]
    row = (image[0, 0] * 255).round().numpy()
    return image.shape, mask.shape, row


def test_without_scale_jitter_the_crop_is_a_plain_window(tmp_path):
    dataset = _dataset(tmp_path, scale=0.0, crop=40)
    for epoch in range(5):
        shape, mask_shape, row = _span(dataset, epoch)
        assert shape == (3, 40, 40) and mask_shape == (40, 40)
        np.testing.assert_array_equal(np.diff(row), np.ones(39))  # one source column a pixel
        rng = np.random.default_rng([5, epoch, 0])  # the dataset's own draws, in order
        rng.integers(0, 120 - 40 + 1)
        assert row[0] == rng.integers(0, 200 - 40 + 1)


def test_scale_jitter_resizes_crops_of_other_sides_to_the_crop_size(tmp_path):
    dataset = _dataset(tmp_path, scale=0.5, crop=40)
    spans = []
    for epoch in range(40):
        shape, mask_shape, row = _span(dataset, epoch)
        assert shape == (3, 40, 40) and mask_shape == (40, 40)
        assert np.all(np.diff(row) >= 0)  # still the ramp, in order
        spans.append(row[-1] - row[0])
        # the side drawn, as the dataset draws it: log-uniform in [40 / 1.5, 40 * 1.5]
        rng = np.random.default_rng([5, epoch, 0])
        side = round(40 * float(np.exp(rng.uniform(-np.log(1.5), np.log(1.5)))))
        assert abs((row[-1] - row[0]) - (side - 1)) <= 2
    spans = np.array(spans)
    assert spans.min() < 33 and spans.max() > 47  # zoomed in and out
    assert 40 / 1.5 - 3 <= spans.min() and spans.max() <= 60


def test_scale_jitter_never_asks_more_than_the_shorter_side(tmp_path):
    dataset = _dataset(tmp_path, height=44, width=200, scale=1.0, crop=40)
    for epoch in range(30):
        _, _, row = _span(dataset, epoch)
        assert row[-1] - row[0] <= 43 + 1  # a side of at most 44 source pixels


def test_scale_jitter_mask_stays_labels(tmp_path):
    from PIL import Image

    image = np.full((90, 90, 3), 200, np.uint8)
    mask = np.zeros((90, 90), np.uint8)
    mask[:, 45:] = 1
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    record = PatchRecord("a", tmp_path / "a.png", tmp_path / "a_mask.png", 1, "malignant")
    dataset = PatchTorchDataset([record], MEAN, STD, train=True, crop_size=32,
                                augment=AugmentConfig(**STILL, scale=0.6), seed=1)
    seen = set()
    for epoch in range(10):
        dataset.set_epoch(epoch)
        _, _, out = dataset[0]
        seen |= set(np.unique(out.numpy()).tolist())
    assert seen <= {0, 1} and seen == {0, 1}  # nearest-neighbour: no blended labels


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_scale_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="scale must be in"):
        AugmentConfig(scale=bad)


def test_train_wsl_passes_scale_jitter(tmp_path):
    import argparse

    from napari_wsl_al.commands import train_wsl

    parser = argparse.ArgumentParser()
    train_wsl.add_arguments(parser)
    classes = ("benign", "malignant")
    args = parser.parse_args([str(tmp_path), "--scale-jitter", "0.25", "--stain", "0.05", "--no-reinhard"])
    config, _ = train_wsl.configs_from_args(args, classes, None)
    assert config.augment.scale == 0.25 and config.augment.hed == 0.05
    default, _ = train_wsl.configs_from_args(parser.parse_args([str(tmp_path), "--no-reinhard"]), classes, None)
    assert default.augment.scale == 0.0 and default.augment.hed == 0.03
