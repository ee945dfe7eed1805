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


def _coded(tmp_path, scale, height=96):
    """An image whose red channel tells its mask (0 -> 0, 1 -> 120), in blocks of 8 pixels
    (so that resizing keeps most pixels inside one block); green is the source column and
    blue the source row."""
    from PIL import Image

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 2, size=(height // 8, 16))
    codes = np.kron(blocks, np.ones((8, 8), dtype=np.int64))  # height x 128
    image = np.zeros((*codes.shape, 3), np.uint8)
    image[..., 0] = (codes * 120).astype(np.uint8)
    image[..., 1] = np.arange(codes.shape[1], dtype=np.uint8)[None, :]
    image[..., 2] = np.arange(codes.shape[0], dtype=np.uint8)[:, None]
    Image.fromarray(image).save(tmp_path / "c.png")
    Image.fromarray(codes.astype(np.uint8)).save(tmp_path / "c_mask.png")
    record = PatchRecord("c", tmp_path / "c.png", tmp_path / "c_mask.png", 0, "benign")
    augment = AugmentConfig(flips=True, rotate90=True, brightness=0.0, contrast=0.0,
                            saturation=0.0, hue=0.0, hed=0.0, scale=scale)
    return PatchTorchDataset([record], MEAN, STD, train=True, crop_size=48, augment=augment,
                             seed=2)


def _agreement(image, mask):
    red = (image[0].numpy() * 255).round()
    known = mask >= 0
    return np.mean((red[known] > 60) == (mask[known] == 1))


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_image_and_mask_move_together(tmp_path, scale):
    """Flips, turns and rescaled crops apply to the mask as to the image, and every flip and
    turn of the square occurs."""
    dataset = _coded(tmp_path, scale)
    orientations = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        image, _, mask = dataset[0]
        mask = mask.numpy()
        assert set(np.unique(mask).tolist()) <= {0, 1}
        assert _agreement(image, mask) > (0.999 if scale == 0 else 0.9), epoch
        green, blue = image[1].numpy(), image[2].numpy()
        # which way the source columns (green) and rows (blue) run along the crop's axes
        orientations.add(tuple(int(np.sign(np.diff(c, axis=a).sum()))
                               for c in (green, blue) for a in (1, 0)))
    assert len(orientations) == 8
    assert (1, 0, 0, 1) in orientations  # the crop as it lies in the image


def test_padding_stays_ignored_through_rescaling(tmp_path):
    """An image lower than the crop is padded: its padding is ignored (-1) in the mask after
    the crop is resized, never 255 and never blended into a label."""
    dataset = _coded(tmp_path, 0.5, height=40)
    padded = 0
    for epoch in range(30):
        dataset.set_epoch(epoch)
        image, _, mask = dataset[0]
        mask = mask.numpy()
        assert set(np.unique(mask).tolist()) <= {-1, 0, 1}
        padded += int((mask == -1).sum() > 0)
        assert _agreement(image, mask) > 0.9
    assert padded > 5


def test_rescaled_crop_uses_bilinear_resampling(tmp_path):
    """The zoomed crop is the PIL bilinear resize of the window the draws pick."""
    from PIL import Image

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8)  # no ramp: bicubic differs
    Image.fromarray(noise).save(tmp_path / "noise.png")
    record = PatchRecord("noise", tmp_path / "noise.png", None, 0, "benign")
    dataset = PatchTorchDataset([record], MEAN, STD, train=True, crop_size=40,
                                augment=AugmentConfig(**STILL, scale=0.5), seed=5)
    source, _ = dataset.load(0)
    for epoch in range(6):
        rng = np.random.default_rng([5, epoch, 0])
        side = round(40 * float(np.exp(rng.uniform(-np.log(1.5), np.log(1.5)))))
        top = int(rng.integers(0, 120 - side + 1))
        left = int(rng.integers(0, 200 - side + 1))
        window = np.ascontiguousarray(source[top:top + side, left:left + side])
        expected = np.asarray(Image.fromarray(window).resize((40, 40), Image.BILINEAR))
        dataset.set_epoch(epoch)
        image, _, _ = dataset[0]
        got = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(got, expected)
