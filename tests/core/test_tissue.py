"""Tissue mask: stained blobs found, glass empty, dust dropped, holes filled, boxes looked up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from napari_wsl_al.core.data.tissue import TissueMask, hsv_saturation, tissue_mask
from napari_wsl_al.core.io import ArrayReader, open_slide

REPO = Path(__file__).resolve().parents[2]
REAL_SVS = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"

PINK = (220, 120, 180)
GLASS = 242


def glass(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Near-white glass with a little grey noise."""
    noise = np.random.default_rng(seed).integers(-4, 5, (height, width, 1))
    return np.clip(GLASS + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)


@pytest.fixture(scope="module")
def synthetic_slide() -> ArrayReader:
    """A 4000x3000 slide at 0.5 um/px: one tissue block with a small hole, and a dust speck."""
    image = glass(3000, 4000)
    image[500:2500, 1000:3000] = PINK  # 2000x2000 px of tissue, 1000x1000 um
    image[1400:1440, 1900:1940] = GLASS  # a 20x20 um hole: filled
    image[100:110, 100:110] = (60, 20, 140)  # a 5x5 um speck of dust: dropped
    return ArrayReader(image, mpp=0.5, name="blobs")


@pytest.fixture(scope="module")
def synthetic_mask(synthetic_slide) -> TissueMask:
    return tissue_mask(synthetic_slide, max_size=1000)


def test_finds_tissue_drops_dust_fills_holes(synthetic_mask):
    result = synthetic_mask
    assert isinstance(result, TissueMask)
    assert result.mask.dtype == bool and result.mask.shape == (750, 1000)
    assert result.downsample == pytest.approx(4.0)
    assert result.fraction() == pytest.approx(2000 * 2000 / (4000 * 3000), abs=0.01)
    assert result.mask[1420 // 4, 1920 // 4]  # hole filled
    assert not result.mask[:50, :50].any()  # dust dropped
    assert 0.05 <= result.threshold < 0.5


def test_box_lookups_in_level0_coordinates(synthetic_mask):
    result = synthetic_mask
    assert result.contains_box(1500, 1000, 256, 256)
    assert result.box_fraction(1500, 1000, 256, 256) == pytest.approx(1.0)
    assert not result.contains_box(100, 2700, 256, 256)
    assert result.box_fraction(100, 2700, 256, 256) == 0.0
    edge = result.box_fraction(872, 1000, 256, 256)  # half on tissue
    assert edge == pytest.approx(0.5, abs=0.05)
    assert result.contains_box(872, 1000, 256, 256, min_fraction=0.4)
    assert not result.contains_box(872, 1000, 256, 256, min_fraction=0.6)
    assert not result.contains_box(10_000, 10_000, 256, 256)  # outside the slide
    assert not result.contains_box(-500, -500, 100, 100)


def test_glass_only_gives_empty_mask():
    for image in (glass(2000, 2000, seed=1), np.full((500, 800, 3), 255, np.uint8)):
        result = tissue_mask(ArrayReader(image, mpp=0.5))
        assert result.mask.shape[0] > 0 and not result.mask.any()
        assert result.fraction() == 0.0
        assert not result.contains_box(0, 0, 500, 500)


def test_dilation_and_unknown_mpp(synthetic_slide, synthetic_mask):
    plain = synthetic_mask
    grown = tissue_mask(synthetic_slide, max_size=1000, dilation_um=100)
    assert grown.mask.sum() > plain.mask.sum()
    assert (grown.mask | plain.mask).sum() == grown.mask.sum()
    image = glass(600, 800)
    image[100:400, 200:600] = PINK
    result = tissue_mask(ArrayReader(image))  # no mpp: DEFAULT_MPP is assumed
    assert result.downsample == 1.0
    assert result.fraction() == pytest.approx(300 * 400 / (600 * 800), abs=0.01)


def test_mask_is_frozen(synthetic_mask):
    result = synthetic_mask
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.downsample = 2.0


def test_hsv_saturation():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [200, 100, 100]]], np.uint8)
    np.testing.assert_allclose(hsv_saturation(rgb)[0], [0.0, 0.0, 1.0, 0.5])


@pytest.mark.skipif(not REAL_SVS.exists(), reason=f"real test data absent at {REAL_SVS}")
def test_real_slide_tissue_fraction():
    with open_slide(REAL_SVS) as reader:
        result = tissue_mask(reader, max_size=1024)
    assert result.mask.shape == (1024, 766)
    assert 0.15 < result.fraction() < 0.6
