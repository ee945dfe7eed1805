"""Tests of the tile grid: tissue filtering, regions, resolutions, small and empty slides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from napari_wsl_al.core.infer.errors import InferenceError, NoTissueError
from napari_wsl_al.core.infer.tiling import resolve_resolution, tile_grid
from napari_wsl_al.core.io.memory_backend import ArrayReader


@dataclass(frozen=True)
class BoxMask:
    """A tissue mask stand-in: tissue inside one level-0 box."""

    mask: np.ndarray
    downsample: float

    def box_fraction(self, x, y, w, h):
        d = self.downsample
        window = self.mask[int(y // d) : int(np.ceil((y + h) / d)),
                           int(x // d) : int(np.ceil((x + w) / d))]
        return float(window.mean()) if window.size else 0.0


def blank(h, w):
    return np.full((h, w, 3), 255, np.uint8)


def test_grid_covers_the_slide_with_overlap():
    reader = ArrayReader(blank(1000, 1300), mpp=0.5)
    grid = tile_grid(reader, tile_size=256, overlap=32)
    assert grid.step == 224
    assert (grid.rows, grid.cols) == (5, 6)
    assert len(grid) == 30
    x, y = grid.position(grid.rows - 1, grid.cols - 1)
    assert x + 256 >= 1300 and y + 256 >= 1000
    assert x < 1300 and y < 1000


def test_tiles_without_tissue_are_skipped():
    reader = ArrayReader(blank(1024, 1024), mpp=0.5)
    mask = np.zeros((64, 64), bool)
    mask[0:16, 0:16] = True  # level-0 box [0, 256) x [0, 256)
    grid = tile_grid(reader, 256, 0, tissue=BoxMask(mask, 16.0), tissue_threshold=0.1)
    assert [tuple(t) for t in grid.tiles] == [(0, 0)]
    everything = tile_grid(reader, 256, 0, tissue=BoxMask(mask, 16.0), tissue_threshold=0)
    assert len(everything) == 16


def test_region_selects_touching_tiles_in_raster_order():
    reader = ArrayReader(blank(1024, 1024), mpp=0.5)
    grid = tile_grid(reader, 256, 0, region=(300, 10, 200, 300))
    assert [tuple(t) for t in grid.tiles] == [(0, 1), (1, 1)]
    with pytest.raises(InferenceError, match="outside"):
        tile_grid(reader, 256, 0, region=(5000, 5000, 10, 10))


def test_resolution_by_mpp_and_by_level():
    reader = ArrayReader(blank(2048, 2048), mpp=0.25)
    res = resolve_resolution(reader, mpp=0.5)
    assert res.downsample == pytest.approx(2.0)
    grid = tile_grid(reader, 256, 0, mpp=0.5)
    assert (grid.width, grid.height) == (1024, 1024) and len(grid) == 16
    by_level = resolve_resolution(reader, level=1)
    assert by_level.level == 1 and by_level.mpp == pytest.approx(0.5)
    with pytest.raises(ValueError):
        resolve_resolution(reader, mpp=0.5, level=1)


def test_slide_smaller_than_a_tile_gets_one_tile():
    reader = ArrayReader(blank(40, 70), mpp=0.5)
    grid = tile_grid(reader, 256, 32)
    assert len(grid) == 1 and (grid.rows, grid.cols) == (1, 1)


def test_empty_tissue_raises_a_clear_error():
    reader = ArrayReader(blank(512, 512), mpp=0.5, name="glass")
    mask = BoxMask(np.zeros((32, 32), bool), 16.0)
    with pytest.raises(NoTissueError, match="tissue"):
        tile_grid(reader, 256, 0, tissue=mask, tissue_threshold=0.05)
