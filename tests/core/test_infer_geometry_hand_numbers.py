"""Tile grids, regions and map geometry of the inference session against numbers worked out by hand."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest

from napari_wsl_al.core.infer import session as session_module
from napari_wsl_al.core.infer.errors import InferenceError, NoTissueError
from napari_wsl_al.core.infer.session import (
    contrast_limits,
    foreground_outline,
    region_from_corners,
    region_from_points,
)
from napari_wsl_al.core.infer.store import MapHandle
from napari_wsl_al.core.infer.tiling import _grid_count, resolve_resolution, tile_grid
from napari_wsl_al.core.io.memory_backend import ArrayReader


def blank(height, width, **kwargs):
    return ArrayReader(np.full((height, width, 3), 255, np.uint8), **kwargs)


class ConstantTissue:
    """A tissue mask stand-in with the same fraction everywhere; it records the boxes asked."""

    def __init__(self, fraction):
        self.fraction = fraction
        self.boxes = []

    def box_fraction(self, x, y, w, h):
        self.boxes.append((x, y, w, h))
        return self.fraction


# ---------------------------------------------------------------------- tile grids
def test_grid_count():
    assert _grid_count(100, 256, 224) == 1  # smaller than a tile
    assert _grid_count(256, 256, 224) == 1  # exactly one tile
    assert _grid_count(257, 256, 224) == 2
    assert _grid_count(480, 256, 224) == 2  # 256 + 224: two tiles end at the edge
    assert _grid_count(481, 256, 224) == 3
    assert _grid_count(1300, 256, 224) == 6  # 1 + ceil(1044 / 224) = 1 + 5


def test_region_picks_the_tiles_it_touches():
    # 1024 x 1024, tiles of 256 every 224: tile c covers [224 c, 224 c + 256).
    reader = blank(1024, 1024, mpp=0.5)
    grid = tile_grid(reader, 256, 32)
    assert (grid.rows, grid.cols) == (5, 5)

    def tiles(region):
        return [tuple(int(v) for v in t) for t in tile_grid(reader, 256, 32, region=region).tiles]

    assert tiles((480, 0, 10, 10)) == [(0, 2)]  # tile 1 ends at 480 (excluded)
    assert tiles((479, 0, 1, 1)) == [(0, 1), (0, 2)]  # tile 2 starts at 448
    assert tiles((0, 447, 1, 1)) == [(1, 0)]  # row 2 starts at 448
    assert tiles((0, 448, 1, 1)) == [(1, 0), (2, 0)]
    assert tiles((-100, -100, 150, 150)) == [(0, 0)]  # clipped to the slide
    assert tiles((1000, 1000, 500, 500)) == [(4, 4)]
    assert tiles((200, 220, 300, 10)) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    with pytest.raises(InferenceError, match="outside"):
        tile_grid(reader, 256, 32, region=(1024, 0, 10, 10))
    with pytest.raises(InferenceError, match="outside"):
        tile_grid(reader, 256, 32, region=(0, -20, 10, 20))


def test_region_at_a_coarser_resolution():
    # 0.25 um/px read at 0.5: target pixels are 2 level-0 pixels; level-0 [960, 980) is
    # target [480, 490), in tile 2 only.
    reader = blank(2048, 2048, mpp=0.25)
    grid = tile_grid(reader, 256, 32, mpp=0.5, region=(960, 0, 20, 20))
    assert [tuple(int(v) for v in t) for t in grid.tiles] == [(0, 2)]
    assert (grid.width, grid.height) == (1024, 1024)
    assert grid.level0_box(1, 2) == (896, 448, 512, 512)  # (2 * 448, 2 * 224, 2 * 256, ...)
    assert grid.position(1, 2) == (448, 224)
    odd = tile_grid(blank(1001, 1001, mpp=0.25), 256, 32, mpp=0.5)
    assert (odd.width, odd.height) == (501, 501)  # ceil(1001 / 2)
    assert (odd.rows, odd.cols) == (3, 3)  # 1 + ceil(245 / 224)


def test_tissue_is_measured_on_boxes_clipped_to_the_slide():
    reader = blank(600, 480, mpp=0.5)
    tissue = ConstantTissue(0.25)
    grid = tile_grid(reader, 256, 32, tissue=tissue, tissue_threshold=0.25)  # 0.25 >= 0.25
    assert (grid.rows, grid.cols) == (3, 2) and len(grid) == 6
    assert tissue.boxes == [(0, 0, 256, 256), (224, 0, 256, 256),
                            (0, 224, 256, 256), (224, 224, 256, 256),
                            (0, 448, 256, 152), (224, 448, 256, 152)]
    with pytest.raises(NoTissueError, match="25%"):
        tile_grid(reader, 256, 32, tissue=ConstantTissue(0.25), tissue_threshold=0.2500001)
    # No threshold: the mask is not even asked.
    unused = ConstantTissue(0.0)
    assert len(tile_grid(reader, 256, 32, tissue=unused, tissue_threshold=0)) == 6
    assert unused.boxes == []
    # Without overlap the second column starts at 256: its box is 480 - 256 = 224 wide.
    edge = ConstantTissue(1.0)
    tile_grid(reader, 256, 0, tissue=edge, tissue_threshold=0.5)
    assert edge.boxes[:2] == [(0, 0, 256, 256), (256, 0, 224, 256)]


def test_grid_arguments_are_checked():
    reader = blank(300, 300, mpp=0.5)
    with pytest.raises(ValueError, match="positive"):
        tile_grid(reader, 0, 0)
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(reader, 256, 128)  # not less than half a tile
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(reader, 256, -1)
    assert tile_grid(reader, 256, 127).step == 129


def test_resolve_resolution():
    image = np.full((64, 64, 3), 255, np.uint8)
    reader = ArrayReader(image, mpp=0.25, levels=[image[::2, ::2]])
    exact = resolve_resolution(reader, mpp=0.5)
    assert (exact.level, exact.level_scale, exact.downsample, exact.mpp) == (1, 1.0, 2.0, 0.5)
    # Within 0.1 % of a level: that level as is.
    near = resolve_resolution(reader, mpp=0.2501)
    assert (near.level, near.level_scale, near.downsample) == (0, 1.0, 1.0)
    off = resolve_resolution(reader, mpp=0.2503)
    assert off.level == 0 and off.level_scale == pytest.approx(1.0012)
    assert off.downsample == pytest.approx(1.0012)
    between = resolve_resolution(reader, mpp=0.75)
    assert between.level == 1 and between.level_scale == pytest.approx(1.5)
    assert between.downsample == pytest.approx(3.0)
    by_level = resolve_resolution(reader, level=1)
    assert (by_level.level, by_level.level_scale, by_level.downsample) == (1, 1.0, 2.0)
    assert by_level.mpp == pytest.approx(0.5)
    default = resolve_resolution(reader)
    assert (default.level, default.downsample, default.mpp) == (0, 1.0, 0.25)
    assert resolve_resolution(ArrayReader(image), level=0).mpp is None
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="positive"):
            resolve_resolution(reader, mpp=bad)
    for bad in (2, -1):
        with pytest.raises(ValueError, match="levels 0..1"):
            resolve_resolution(reader, level=bad)


def test_describe_is_the_geometry():
    reader = blank(1001, 1001, mpp=0.25)
    grid = tile_grid(reader, 256, 32, mpp=0.5)
    assert grid.describe() == {
        "slide_dimensions": [1001, 1001], "level": 0, "level_scale": 2.0, "downsample": 2.0,
        "mpp": 0.5, "tile_size": 256, "overlap": 32, "width": 501, "height": 501,
        "rows": 3, "cols": 3,
    }


# ---------------------------------------------------------------------- session helpers
def handle(name, levels, scale=(2.0, 3.0), translate=(0.5, 1.0), channels=None, unit=None):
    return MapHandle(name=name, kind="fg", channels=channels,
                     levels=[da.from_array(level) for level in levels], scale=scale,
                     translate=translate, unit=unit)


def test_contrast_limits():
    empty = [np.zeros((2, 2), np.float32)]
    ln2 = math.log(2.0)
    assert contrast_limits(handle("uncertainty/entropy", empty), 4) == (0.0, math.log(4.0))
    assert contrast_limits(handle("uncertainty/entropy", empty), 3) == (0.0, math.log(3.0))
    assert contrast_limits(handle("uncertainty/entropy", empty), 1) == (0.0, ln2)
    assert contrast_limits(handle("uncertainty/ovr_entropy", empty), 4) == (0.0, ln2)
    assert contrast_limits(handle("uncertainty/ovr_entropy_max", empty), 4) == (0.0, ln2)
    assert contrast_limits(handle("uncertainty/mc_variance", empty), 4) == (0.0, 0.25)
    assert contrast_limits(handle("uncertainty/margin", empty), 4) == (0.0, 1.0)
    assert contrast_limits(handle("fg", empty), 4) == (0.0, 1.0)


def test_foreground_outline_in_microns():
    fg = np.zeros((10, 12), np.float32)
    fg[2:5, 3:7] = 1.0  # rows 2..4, columns 3..6
    polygons = foreground_outline(handle("fg", [fg]), 0.5)
    assert len(polygons) == 1
    ys, xs = polygons[0][:, 0], polygons[0][:, 1]
    # The 0.5 contour runs half-way between pixels: rows 1.5..4.5, columns 2.5..6.5; map
    # pixel (r, c) is at translate + scale * (r, c) = (0.5 + 2 r, 1.0 + 3 c).
    assert ys.min() == pytest.approx(3.5) and ys.max() == pytest.approx(9.5)
    assert xs.min() == pytest.approx(8.5) and xs.max() == pytest.approx(20.5)
    assert foreground_outline(handle("fg", [fg]), 1.0) == []
    assert foreground_outline(handle("fg", [np.zeros((0, 0), np.float32)]), 0.5) == []


def test_foreground_outline_on_a_coarser_level(monkeypatch):
    fine = np.zeros((9, 12), np.float32)  # an odd level 0: level 1 pixels are 9/5 x 12/6
    coarse = np.zeros((5, 6), np.float32)
    coarse[1:3, 2:4] = 1.0  # rows 0.5..2.5, columns 1.5..3.5 at level 1
    monkeypatch.setattr(session_module, "OUTLINE_MAX_SIZE", 8)
    polygons = foreground_outline(handle("fg", [fine, coarse]), 0.5)
    assert len(polygons) == 1
    ys, xs = polygons[0][:, 0], polygons[0][:, 1]
    # Level-1 row r is level-0 row (r + 0.5) * 1.8 - 0.5: 1.3 .. 4.9; column c is
    # (c + 0.5) * 2 - 0.5: 3.5 .. 7.5.
    assert ys.min() == pytest.approx(0.5 + 2 * 1.3) and ys.max() == pytest.approx(0.5 + 2 * 4.9)
    assert xs.min() == pytest.approx(1.0 + 3 * 3.5) and xs.max() == pytest.approx(1.0 + 3 * 7.5)


def test_foreground_outline_at_a_threshold_off_the_middle():
    fg = np.zeros((10, 12), np.float32)
    fg[2:5, 3:7] = 1.0
    # Between a 0 and a 1 pixel the 0.25 level lies a quarter of the way from the 0:
    # rows 1.25 .. 4.75, columns 2.25 .. 6.75.
    polygons = foreground_outline(handle("fg", [fg]), 0.25)
    ys, xs = polygons[0][:, 0], polygons[0][:, 1]
    assert ys.min() == pytest.approx(0.5 + 2 * 1.25) and ys.max() == pytest.approx(0.5 + 2 * 4.75)
    assert xs.min() == pytest.approx(1.0 + 3 * 2.25) and xs.max() == pytest.approx(1.0 + 3 * 6.75)
    # A one-pixel map above the threshold is outlined too.
    single = foreground_outline(handle("fg", [np.ones((1, 1), np.float32)]), 0.5)
    assert len(single) == 1
    assert single[0][:, 0].min() == pytest.approx(0.5 - 2 * 0.5)
    assert single[0][:, 1].max() == pytest.approx(1.0 + 3 * 0.5)


def test_foreground_outline_keeps_the_longest_contours(monkeypatch):
    fg = np.zeros((20, 20), np.float32)
    fg[2:4, 2:4] = 1.0  # small
    fg[8:16, 5:15] = 1.0  # large
    monkeypatch.setattr(session_module, "OUTLINE_MAX_POLYGONS", 1)
    polygons = foreground_outline(handle("fg", [fg], scale=(1.0, 1.0), translate=(0.0, 0.0)), 0.5)
    assert len(polygons) == 1
    assert polygons[0][:, 0].min() == pytest.approx(7.5)
    assert polygons[0][:, 1].max() == pytest.approx(14.5)


def test_region_from_corners():
    # Level with 2 level-0 pixels per pixel: rows 10..29, columns 20..49 are level-0 rows
    # 20..60 and columns 40..100, clipped to the 90 x 50 slide.
    assert region_from_corners(np.array([[10, 20], [29, 49]]), (2.0, 2.0), (90, 50)) == \
        (40, 20, 50, 30)
    assert region_from_corners(np.array([[10, 20], [29, 49]]), (2.0, 2.0), (500, 500)) == \
        (40, 20, 60, 40)
    # Extra trailing axes are ignored; negative corners clip to 0; fractions widen the box.
    assert region_from_corners(np.array([[-3, -5, 0], [4, 4, 2]]), (2.5, 1.5), (500, 500)) == \
        (0, 0, 8, 13)  # x1 = ceil(5 * 1.5) = 8, y1 = ceil(5 * 2.5) = 13
    assert region_from_corners(np.array([[1, 1], [1, 1]]), (2.5, 2.5), (500, 500)) == \
        (2, 2, 3, 3)  # [2.5, 5) widened to [2, 5)
    # A view wholly past the slide still gives a one-pixel box.
    assert region_from_corners(np.array([[100, 100], [110, 110]]), (1.0, 1.0), (50, 50)) == \
        (100, 100, 1, 1)


def test_region_from_points():
    points = np.array([[10.2, 20.7], [30.5, 5.1], [12.0, 9.0]])
    assert region_from_points(points, (500, 500)) == (5, 10, 16, 21)
    assert region_from_points(points, (18, 25)) == (5, 10, 13, 15)  # clipped to 18 x 25
    # The last two columns are (y, x) whatever comes before.
    assert region_from_points(np.array([[0, 10.2, 20.7], [0, 30.5, 5.1]]), (500, 500)) == \
        (5, 10, 16, 21)
    with pytest.raises(ValueError, match="outside"):
        region_from_points(np.array([[600.0, 600.0], [700.0, 700.0]]), (500, 500))
    # Points left of and above the slide clip to 0.
    assert region_from_points(np.array([[-5.0, -3.0], [10.0, 20.0]]), (500, 500)) == \
        (0, 0, 20, 10)


def test_grid_defaults_levels_and_messages():
    reader = blank(600, 600, mpp=0.5)
    grid = tile_grid(reader)
    assert (grid.tile_size, grid.overlap, grid.rows, grid.cols) == (512, 64, 2, 2)
    image = np.full((600, 600, 3), 255, np.uint8)
    two_levels = ArrayReader(image, mpp=0.5, levels=[image[::2, ::2]])
    by_level = tile_grid(two_levels, 128, 0, level=1)
    assert by_level.resolution.level == 1 and (by_level.width, by_level.rows) == (300, 3)
    with pytest.raises(NoTissueError, match="no tile of the region holds at least 50%"):
        tile_grid(reader, 256, 0, region=(0, 0, 10, 10), tissue=ConstantTissue(0.0),
                  tissue_threshold=0.5)
    with pytest.raises(NoTissueError, match="no tile of the slide holds"):
        tile_grid(reader, 256, 0, tissue=ConstantTissue(0.0), tissue_threshold=0.5)
    # A last column one pixel inside the slide: its box is one pixel wide.
    edge = ConstantTissue(1.0)
    tile_grid(blank(256, 257, mpp=0.5), 256, 0, tissue=edge, tissue_threshold=0.5)
    assert edge.boxes == [(0, 0, 256, 256), (256, 0, 1, 256)]
