"""Superpixels: config, SLIC per image, tiled slide stores, outlines, adjacency, atomic writes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_wsl_al.core.al import superpixels as sp
from napari_wsl_al.core.al.superpixels import (
    SuperpixelConfig,
    SuperpixelMap,
    compute_slide_superpixels,
    region_adjacency,
    region_stats,
    superpixels_for_image,
    working_resolution,
)
from napari_wsl_al.core.data.synthetic import synthetic_he_image
from napari_wsl_al.core.data.tissue import TissueMask
from napari_wsl_al.core.errors import ActiveLearningError, SlideError, SlideNotFoundError
from napari_wsl_al.core.io import ArrayReader
from napari_wsl_al.core.progress import run_to_end

GLASS = 242
#: Where the textured tissue sits on the test slide (rows, cols), in level-0 pixels.
TISSUE_ROWS, TISSUE_COLS = (64, 384), (96, 576)
SMALL = SuperpixelConfig(region_px=16, tile_px=128)


class RecordingReader(ArrayReader):
    """An in-memory slide that records every ``read_region`` call (level, width, height)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[int, int, int]] = []

    def read_region(self, location, level, size):
        self.reads.append((level, int(size[0]), int(size[1])))
        return super().read_region(location, level, size)


def textured_slide(mpp: float | None = 0.5) -> RecordingReader:
    """448 x 640 px of glass with a 320 x 480 block of synthetic H&E."""
    image = np.full((448, 640, 3), GLASS, np.uint8)
    (r0, r1), (c0, c1) = TISSUE_ROWS, TISSUE_COLS
    image[r0:r1, c0:c1] = synthetic_he_image((r1 - r0, c1 - c0), "benign", seed=3).image
    return RecordingReader(image, mpp=mpp, name="textured")


def block_tissue(downsample: float = 4.0) -> TissueMask:
    """The tissue block of :func:`textured_slide` as a low-resolution mask."""
    mask = np.zeros((int(448 / downsample), int(640 / downsample)), bool)
    (r0, r1), (c0, c1) = TISSUE_ROWS, TISSUE_COLS
    d = downsample
    mask[int(r0 / d) : int(r1 / d), int(c0 / d) : int(c1 / d)] = True
    return TissueMask(mask=mask, downsample=downsample)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The textured slide cut with :data:`SMALL`: (reader, map, progress records)."""
    reader = textured_slide()
    path = tmp_path_factory.mktemp("sp") / "superpixels" / "textured.zarr"
    records = []
    result = run_to_end(compute_slide_superpixels(reader, SMALL, path, block_tissue()),
                        records.append)
    return reader, result, records


# ---------------------------------------------------------------------------- config
def test_config_defaults_and_json_round_trip():
    config = SuperpixelConfig()
    assert (config.region_px, config.compactness, config.mpp, config.tile_px) == (32, 10.0, None,
                                                                                   1024)
    assert config.nominal_area == 1024
    assert config.min_fragment_px == 256  # 0.25 * 1024
    assert SuperpixelConfig(min_fragment_fraction=0.3).min_fragment_px == 308  # ceil(307.2)
    custom = SuperpixelConfig(region_px=16, compactness=5.0, mpp=1.0, tile_px=64,
                              min_tissue_fraction=0.3, min_fragment_fraction=0.1, sigma=0.0)
    data = json.loads(json.dumps(custom.to_json()))
    assert SuperpixelConfig.from_json(data) == custom
    assert SuperpixelConfig.from_json(None) == config
    assert SuperpixelConfig.from_json({"region_px": 8, "tile_px": 64}).region_px == 8
    with pytest.raises(ValueError, match="unknown superpixel settings"):
        SuperpixelConfig.from_json({"region": 8})


@pytest.mark.parametrize("kwargs, match", [
    ({"region_px": 1}, "region_px"),
    ({"region_px": 32.5}, "region_px"),
    ({"tile_px": 16}, "tile_px must be an integer >= region_px"),
    ({"tile_px": 100.5}, "tile_px must be an integer"),
    ({"tile_px": 1000}, "multiple of region_px"),
    ({"compactness": 0.0}, "compactness"),
    ({"compactness": float("inf")}, "compactness"),
    ({"mpp": 0.0}, "mpp"),
    ({"mpp": float("nan")}, "mpp"),
    ({"min_tissue_fraction": 1.5}, "min_tissue_fraction"),
    ({"min_fragment_fraction": -0.1}, "min_fragment_fraction"),
    ({"sigma": -1.0}, "sigma"),
    ({"sigma": float("inf")}, "sigma"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SuperpixelConfig(**kwargs)


def test_config_accepts_edge_values():
    assert SuperpixelConfig(region_px=2, tile_px=2).tile_px == 2
    assert SuperpixelConfig(min_tissue_fraction=0.0, min_fragment_fraction=1.0,
                            sigma=0.0).sigma == 0.0


# ---------------------------------------------------------------------------- label arrays
def test_region_adjacency_by_hand():
    labels = np.array([[1, 1, 2],
                       [3, 0, 2],
                       [3, 3, 4]])
    pairs = region_adjacency(labels)
    assert pairs.dtype == np.int64
    assert pairs.tolist() == [[1, 2], [1, 3], [2, 4], [3, 4]]
    assert region_adjacency(np.array([[1, 0], [0, 2]])).shape == (0, 2)  # diagonal only
    assert region_adjacency(np.array([[5, 5, 5]])).shape == (0, 2)
    big = np.array([[2**31 - 1, 70000], [7, 7]], np.uint32)
    assert region_adjacency(big).tolist() == [[7, 70000], [7, 2**31 - 1], [70000, 2**31 - 1]]
    with pytest.raises(ValueError, match="2-D"):
        region_adjacency(np.zeros((2, 2, 2), int))


def test_relabel_consecutive():
    out = sp._relabel_consecutive(np.array([[0, 5, 5], [9, 0, 7]]))
    assert out.dtype == np.uint32
    assert out.tolist() == [[0, 1, 1], [3, 0, 2]]
    assert sp._relabel_consecutive(np.array([[4, 4]])).tolist() == [[1, 1]]


def test_keep_tissue_by_hand():
    labels = np.array([[1, 1, 2, 2],
                       [1, 1, 2, 2]])
    tissue = np.array([[1, 1, 1, 0],
                       [0, 1, 0, 0]], bool)
    # Region 1 is 3/4 tissue, region 2 is 1/4.
    assert sp._keep_tissue(labels, tissue, 0.5).tolist() == [[1, 1, 0, 0], [0, 1, 0, 0]]
    assert sp._keep_tissue(labels, tissue, 0.25).tolist() == [[1, 1, 2, 0], [0, 1, 0, 0]]
    assert sp._keep_tissue(labels, tissue, 0.26).tolist() == [[1, 1, 0, 0], [0, 1, 0, 0]]
    assert sp._keep_tissue(labels, tissue, 0.76).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert sp._keep_tissue(labels, tissue, 0.75)[0, 0] == 1


def test_merge_small_fragments_by_hand():
    labels = np.array([[1, 1, 1, 1, 2],
                       [1, 1, 1, 1, 2],
                       [1, 1, 3, 3, 3],
                       [0, 0, 3, 3, 3]])
    # Region 2 (2 px) shares 2 border pairs with 1 and 1 with 3: it joins 1.
    merged = sp._merge_small_fragments(labels, 3)
    assert merged[:, 4].tolist() == [1, 1, 3, 3]
    assert np.array_equal(merged[labels != 2], labels[labels != 2])
    assert np.array_equal(sp._merge_small_fragments(labels, 2), labels)  # nothing small
    # A big neighbour wins over a longer border with a small one: 5 (3 px) touches 3 (6 px)
    # along 3 pixels and 1 (10 px) along 1; it joins 1, then 3, still small, follows.
    labels = np.array([[3, 3, 5, 1, 1, 1, 1],
                       [3, 3, 5, 0, 1, 1, 1],
                       [3, 3, 5, 0, 1, 1, 1]])
    merged = sp._merge_small_fragments(labels, 7)
    assert np.array_equal(merged, np.where(labels > 0, 1, 0))
    # With only small neighbours, regions join the lower id, following chains.
    assert sp._merge_small_fragments(np.array([[1, 2, 3]]), 2).tolist() == [[1, 1, 1]]
    assert sp._merge_small_fragments(np.array([[3, 2, 1]]), 2).tolist() == [[1, 1, 1]]
    # A lone fragment stays; 0 is never merged into.
    alone = np.array([[1, 0, 0], [0, 0, 0]])
    assert np.array_equal(sp._merge_small_fragments(alone, 5), alone)


def test_region_stats_by_hand():
    labels = np.array([[0, 1, 1],
                       [2, 2, 1],
                       [0, 0, 0]])
    counts, bboxes, centroids = region_stats(labels, n_regions=3)
    assert counts.tolist() == [4, 3, 2, 0]
    assert bboxes.tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [1, 0, 2, 2], [0, 0, 0, 0]]
    np.testing.assert_allclose(centroids, [[0, 0], [1 / 3, 5 / 3], [1, 0.5], [0, 0]])
    counts, bboxes, centroids = region_stats(labels)  # n from the labels
    assert counts.shape == (3,) and bboxes.shape == (3, 4) and centroids.shape == (3, 2)
    counts, bboxes, centroids = region_stats(np.zeros((2, 3), int))
    assert counts.tolist() == [6] and not bboxes.any() and not centroids.any()
    with pytest.raises(ValueError, match="2-D"):
        region_stats(np.zeros(4, int))


# ---------------------------------------------------------------------------- one image
@pytest.fixture(scope="module")
def textured_image():
    return synthetic_he_image((256, 384), "benign", seed=1).image


def test_regions_near_nominal_size_on_texture(textured_image):
    config = SuperpixelConfig(region_px=32, tile_px=256)
    labels = superpixels_for_image(textured_image, config)
    assert labels.dtype == np.uint32 and labels.shape == (256, 384)
    n = int(labels.max())
    assert np.array_equal(np.unique(labels), np.arange(1, n + 1))  # every pixel, no gap
    sizes = np.bincount(labels.ravel())[1:]
    nominal = 256 * 384 / 1024  # 96 regions
    assert 0.7 * nominal <= n <= 1.3 * nominal
    assert 0.6 * 1024 <= np.median(sizes) <= 1.5 * 1024
    assert sizes.min() >= config.min_fragment_px
    whole = superpixels_for_image(textured_image, config, np.ones((256, 384), bool))
    assert np.array_equal(whole, labels)


def test_region_px_sets_the_size(textured_image):
    small = superpixels_for_image(textured_image, SuperpixelConfig(region_px=16, tile_px=256))
    large = superpixels_for_image(textured_image, SuperpixelConfig(region_px=64, tile_px=256))
    assert 0.6 * 256 <= np.median(np.bincount(small.ravel())[1:]) <= 1.5 * 256
    assert 0.6 * 4096 <= np.median(np.bincount(large.ravel())[1:]) <= 1.5 * 4096


def test_compactness_and_sigma_reach_slic(textured_image):
    base = SuperpixelConfig(region_px=32, tile_px=256)
    labels = superpixels_for_image(textured_image, base)
    loose = superpixels_for_image(textured_image, SuperpixelConfig(region_px=32, tile_px=256,
                                                                   compactness=1.0))
    sharp = superpixels_for_image(textured_image, SuperpixelConfig(region_px=32, tile_px=256,
                                                                   sigma=0.0))

    def border_length(ids):
        return int((ids[:, 1:] != ids[:, :-1]).sum() + (ids[1:] != ids[:-1]).sum())

    assert not np.array_equal(loose, labels)
    assert not np.array_equal(sharp, labels)
    # Low compactness lets colour pull regions out of shape: their boxes grow.
    def mean_box_area(ids):
        _, boxes, _ = region_stats(ids)
        return float(((boxes[1:, 2] - boxes[1:, 0]) * (boxes[1:, 3] - boxes[1:, 1])).mean())

    assert mean_box_area(loose) > 1.2 * mean_box_area(labels)


def test_glass_gets_zero_and_regions_follow_tissue(textured_image):
    config = SuperpixelConfig(region_px=32, tile_px=256)
    tissue = np.zeros((256, 384), bool)
    tissue[:, :200] = True
    labels = superpixels_for_image(textured_image, config, tissue)
    assert not labels[:, 200:].any()
    assert labels[:, :200].all() or (labels[:, :200] > 0).mean() > 0.97
    n = int(labels.max())
    assert np.array_equal(np.unique(labels[labels > 0]), np.arange(1, n + 1))
    assert np.bincount(labels.ravel())[1:].min() >= config.min_fragment_px
    assert not superpixels_for_image(textured_image, config, np.zeros((256, 384), bool)).any()


def test_min_tissue_fraction_drops_mostly_glass_regions(textured_image):
    tissue = np.zeros((256, 384), bool)
    tissue[:, :200] = True
    strict = SuperpixelConfig(region_px=32, tile_px=256, min_tissue_fraction=1.0)
    labels = superpixels_for_image(textured_image, strict, tissue)
    # Only regions entirely on tissue stay: the columns next to the edge are mostly dropped.
    assert (labels[:, 170:200] > 0).mean() < (labels[:, :150] > 0).mean()


def test_image_checks():
    config = SuperpixelConfig(region_px=8, tile_px=8)
    with pytest.raises(ValueError, match="uint8 RGB"):
        superpixels_for_image(np.zeros((8, 8), np.uint8), config)
    with pytest.raises(ValueError, match="uint8 RGB"):
        superpixels_for_image(np.zeros((8, 8, 3), np.float32), config)
    with pytest.raises(ValueError, match="uint8 RGB"):
        superpixels_for_image(np.zeros((8, 8, 4), np.uint8), config)
    with pytest.raises(ValueError, match="does not match"):
        superpixels_for_image(np.zeros((8, 8, 3), np.uint8), config, np.ones((8, 7), bool))
    empty = superpixels_for_image(np.zeros((0, 5, 3), np.uint8), config)
    assert empty.shape == (0, 5) and empty.dtype == np.uint32
    tiny = superpixels_for_image(np.full((3, 2, 3), 100, np.uint8), config)
    assert tiny.tolist() == [[1, 1], [1, 1], [1, 1]]  # smaller than a region: one region


# ---------------------------------------------------------------------------- maps in memory
def square_map(mpp=0.5, downsample=1.0) -> SuperpixelMap:
    labels = np.zeros((6, 6), np.uint32)
    labels[2:4, 1:3] = 1  # a 2 x 2 block
    labels[0, :] = 2
    labels[4:, 2:5] = 3
    return SuperpixelMap.from_array(labels, mpp=mpp, downsample=downsample)


def test_from_array_stats_and_geometry():
    regions = square_map()
    assert regions.n_regions == 3 and regions.shape == (6, 6)
    assert regions.pixel_counts.tolist() == [20, 4, 6, 6]
    assert regions.bboxes[1].tolist() == [2, 1, 4, 3]
    np.testing.assert_allclose(regions.centroids[1], [2.5, 1.5])
    assert regions.mpp == 0.5 and regions.downsample == 1.0 and regions.unit == "micrometer"
    assert regions.scale == (0.5, 0.5) and regions.translate == (0.0, 0.0)
    coarse = square_map(mpp=2.0, downsample=4.0)  # level 0 at 0.5 um/px
    assert coarse.level0_mpp == 0.5
    assert coarse.scale == (2.0, 2.0) and coarse.translate == (0.75, 0.75)
    unknown = square_map(mpp=None, downsample=2.0)
    assert unknown.unit is None and unknown.level0_mpp == 1.0
    assert unknown.scale == (2.0, 2.0) and unknown.translate == (0.5, 0.5)
    assert regions.adjacency().tolist() == [[1, 3]]
    assert "3 regions" in repr(regions) and "in memory" in repr(regions)
    with pytest.raises(ValueError, match="2-D"):
        SuperpixelMap.from_array(np.zeros((2, 2, 2), int))
    with pytest.raises(ValueError, match="non-negative"):
        SuperpixelMap.from_array(np.array([[1, -1]]))
    assert SuperpixelMap.from_array(np.zeros((0, 0), int)).n_regions == 0


def test_read_window_pads_outside():
    regions = square_map()
    window = regions.read(-1, -1, 2, 3)
    assert window.dtype == np.uint32
    assert window.tolist() == [[0, 0, 0, 0], [0, 2, 2, 2], [0, 0, 0, 0]]
    assert regions.read(10, 10, 12, 13).shape == (2, 3)
    assert not regions.read(10, 10, 12, 13).any()
    assert regions.read(3, 3, 2, 2).shape == (0, 0)
    assert regions.ids_in_window(0, 0, 6, 6).tolist() == [1, 2, 3]
    assert regions.ids_in_window(1, 0, 4, 3).tolist() == [1]
    assert regions.ids_in_window(1, 0, 2, 6).dtype == np.int64
    assert regions.ids_in_window(1, 0, 2, 6).size == 0


def test_region_mask_and_bad_ids():
    regions = square_map()
    mask, offset = regions.region_mask(1)
    assert offset == (2, 1) and mask.dtype == bool and mask.all() and mask.shape == (2, 2)
    mask, offset = regions.region_mask(3)
    assert offset == (4, 2) and mask.shape == (2, 3) and mask.all()
    for bad in (0, 4, -1):
        with pytest.raises(ValueError, match="no region"):
            regions.region_mask(bad)
    gap = SuperpixelMap.from_array(np.array([[1, 3]]))
    with pytest.raises(ValueError, match="no region 2"):
        gap.region_mask(2)


def test_square_outline_in_microns():
    outline = square_map().outline_um([1])[1]
    assert outline.shape == (9, 2)  # the chamfered square of marching squares, closed
    np.testing.assert_array_equal(outline[0], outline[-1])
    # Pixels 2..3 (rows) and 1..2 (cols) at 0.5 um, centred at index * 0.5: edges +-0.25 um.
    assert outline[:, 0].min() == pytest.approx(0.75) and outline[:, 0].max() == pytest.approx(1.75)
    assert outline[:, 1].min() == pytest.approx(0.25) and outline[:, 1].max() == pytest.approx(1.25)
    np.testing.assert_allclose(outline[:-1].mean(axis=0), [1.25, 0.75])  # centred on the block


def test_outline_with_downsample_and_unknown_mpp():
    coarse = square_map(mpp=1.0, downsample=2.0).outline_um([1])[1]  # level 0 at 0.5 um/px
    # Working rows 2..3 are level-0 rows 4..7, centred at 2.0 .. 3.5 um: edges 1.75 .. 3.75.
    assert coarse[:, 0].min() == pytest.approx(1.75) and coarse[:, 0].max() == pytest.approx(3.75)
    assert coarse[:, 1].min() == pytest.approx(0.75) and coarse[:, 1].max() == pytest.approx(2.75)
    pixels = square_map(mpp=None).outline_um([1])[1]
    assert pixels[:, 0].min() == pytest.approx(1.5) and pixels[:, 0].max() == pytest.approx(3.5)
    level0 = square_map(mpp=1.0, downsample=2.0).outline_level0([1, 3])
    assert set(level0) == {1, 3}
    xy = level0[1]
    # (x, y): working cols 1..2 -> level-0 x 2..6, working rows 2..3 -> level-0 y 4..8.
    assert xy[:, 0].min() == pytest.approx(2.0) and xy[:, 0].max() == pytest.approx(6.0)
    assert xy[:, 1].min() == pytest.approx(4.0) and xy[:, 1].max() == pytest.approx(8.0)
    np.testing.assert_array_equal(xy[0], xy[-1])


def test_outline_takes_the_longest_contour():
    labels = np.zeros((12, 12), np.uint32)
    labels[1:8, 1:8] = 1
    labels[3:6, 3:6] = 2  # a hole in region 1
    labels[10, 10] = 1  # and a stray pixel of it
    outline = SuperpixelMap.from_array(labels, mpp=1.0).outline_um([1])[1]
    assert outline[:, 0].min() == pytest.approx(0.5) and outline[:, 0].max() == pytest.approx(7.5)
    assert outline[:, 1].max() == pytest.approx(7.5)


def test_region_at_points():
    regions = square_map()
    assert regions.region_at(1.0, 0.5) == 1  # pixel (2, 1)
    assert regions.region_at(1.74, 1.24) == 1  # just inside the edge of pixel (3, 2)
    assert regions.region_at(1.76, 0.5) == 0  # row 4, col 1
    assert regions.region_at(1.76, 1.0) == 3  # row 4, col 2
    assert regions.region_at(0.0, 2.5) == 2
    assert regions.region_at(-1.0, 0.0) == 0 and regions.region_at(100.0, 0.0) == 0
    coarse = square_map(mpp=1.0, downsample=2.0)  # working px 2 level-0 px of 0.5 um
    assert coarse.region_at(2.0, 1.0) == 1  # level-0 (4, 2) -> working (2, 1)
    assert coarse.region_at(1.7, 1.0) == 0  # level-0 row 3.4 -> working row 1
    assert square_map(mpp=None, downsample=2.0).region_at(4.0, 2.0) == 1  # level-0 pixels


# ---------------------------------------------------------------------------- slide stores
def test_store_reopens_with_labels_stats_and_microns(stored):
    _, result, _ = stored
    assert isinstance(result, SuperpixelMap)
    again = SuperpixelMap.open(result.path)
    labels = np.asarray(again.labels)
    assert labels.dtype == np.uint32 and labels.shape == (448, 640)
    assert np.array_equal(labels, np.asarray(result.labels))
    assert again.config == SMALL and again.mpp == 0.5 and again.downsample == 1.0
    assert again.scale == (0.5, 0.5) and again.translate == (0.0, 0.0)
    counts, bboxes, centroids = region_stats(labels)
    assert np.array_equal(again.pixel_counts[1:], counts[1:]) and again.pixel_counts[0] == 0
    assert np.array_equal(again.bboxes, bboxes)
    np.testing.assert_allclose(again.centroids, centroids)
    assert again.labels.chunks == (128, 128)
    import zarr

    attrs = zarr.open_group(str(result.path), mode="r").attrs.asdict()
    dataset = attrs["multiscales"][0]["datasets"][0]
    assert dataset["path"] == "0"
    assert dataset["coordinateTransformations"][0] == {"type": "scale", "scale": [0.5, 0.5]}
    assert attrs["multiscales"][0]["axes"][0] == {"name": "y", "type": "space",
                                                   "unit": "micrometer"}
    assert attrs["wslal"]["n_regions"] == again.n_regions
    assert attrs["wslal"]["slide"] == "textured"
    assert str(result.path) in repr(again) and f"{again.n_regions} regions" in repr(again)


def test_ids_unique_per_slide_consecutive_and_tiled(stored):
    _, result, _ = stored
    labels = np.asarray(result.labels)
    n = result.n_regions
    assert n > 100
    assert np.array_equal(np.unique(labels[labels > 0]), np.arange(1, n + 1))
    # Every region lies in one tile: a superpixel cut by a tile border is two regions.
    tile = SMALL.tile_px
    boxes = result.bboxes[1:]
    assert np.array_equal(boxes[:, 0] // tile, (boxes[:, 2] - 1) // tile)
    assert np.array_equal(boxes[:, 1] // tile, (boxes[:, 3] - 1) // tile)
    # No slivers: every region has at least the fragment size.
    assert result.pixel_counts[1:].min() >= SMALL.min_fragment_px
    # Sizes near the nominal area inside the tissue.
    assert 0.6 * 256 <= np.median(result.pixel_counts[1:]) <= 1.5 * 256


def test_glass_is_zero_on_the_slide(stored):
    _, result, _ = stored
    labels = np.asarray(result.labels)
    (r0, r1), (c0, c1) = TISSUE_ROWS, TISSUE_COLS
    inside = np.zeros(labels.shape, bool)
    inside[r0:r1, c0:c1] = True
    assert not labels[~inside].any()
    assert (labels[inside] > 0).mean() > 0.97


def test_adjacency_crosses_tile_borders(stored):
    _, result, _ = stored
    labels = np.asarray(result.labels)
    pairs = result.adjacency()
    assert np.array_equal(pairs, region_adjacency(labels))
    tile = SMALL.tile_px
    tile_of = np.zeros((result.n_regions + 1, 2), np.int64)
    tile_of[1:] = result.bboxes[1:, :2] // tile
    across = (tile_of[pairs[:, 0]] != tile_of[pairs[:, 1]]).any(axis=1)
    assert across.sum() > 20  # pairs across both vertical and horizontal borders
    rows_differ = tile_of[pairs[:, 0], 0] != tile_of[pairs[:, 1], 0]
    cols_differ = tile_of[pairs[:, 0], 1] != tile_of[pairs[:, 1], 1]
    assert rows_differ.any() and cols_differ.any()


def test_reads_only_tissue_tiles_of_tile_size(stored):
    reader, _, records = stored
    tile = SMALL.tile_px
    assert reader.reads, "the slide was never read"
    assert all(level == 0 and w <= tile and h <= tile for level, w, h in reader.reads)
    # Tiles: 4 rows x 5 columns; the last row (rows 384..448) is glass and never read.
    assert len(reader.reads) == 15
    assert [r.step for r in records] == list(range(1, 16))
    assert {r.total for r in records} == {15}
    regions = [r.metrics["regions"] for r in records]
    assert regions == sorted(regions) and regions[-1] == stored[1].n_regions
    assert "tile 15/15" in records[-1].message


def test_working_resolution_in_microns(tmp_path):
    reader = textured_slide()
    config = SuperpixelConfig(region_px=16, tile_px=64, mpp=1.0)
    assert working_resolution(reader, config) == (2.0, 1.0)
    assert working_resolution(reader, SMALL) == (1.0, 0.5)
    assert working_resolution(textured_slide(mpp=None), SMALL) == (1.0, None)
    result = run_to_end(compute_slide_superpixels(reader, config, tmp_path / "s.zarr",
                                                  block_tissue()))
    assert result.shape == (224, 320) and result.downsample == 2.0 and result.mpp == 1.0
    assert result.scale == (1.0, 1.0) and result.translate == (0.25, 0.25)
    import zarr

    ngff = zarr.open_group(str(result.path), mode="r").attrs["multiscales"][0]
    assert ngff["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0]},
        {"type": "translation", "translation": [0.25, 0.25]},
    ]
    assert ngff["version"] == "0.4" and ngff["name"] == "textured superpixels"
    # Reads at level 0 of at most 2 x 64 level-0 pixels per side, shrunk to the tile.
    assert all(w <= 128 and h <= 128 for _, w, h in reader.reads)
    labels = np.asarray(result.labels)
    (r0, r1), (c0, c1) = TISSUE_ROWS, TISSUE_COLS
    assert not labels[: r0 // 2].any() and not labels[:, : c0 // 2].any()
    assert (labels[r0 // 2 : r1 // 2, c0 // 2 : c1 // 2] > 0).mean() > 0.97
    outline = result.outline_um([int(labels[100, 150])])
    (points,) = outline.values()
    # The region holds working pixel (100, 150), centred at ((100 + 0.5) * 2 - 0.5) * 0.5 um.
    assert points[:, 0].min() < 100.25 < points[:, 0].max()
    assert result.region_at(100.25, 150.25) == labels[100, 150]


def test_unknown_slide_resolution():
    with pytest.raises(ActiveLearningError, match="resolution") as caught:
        working_resolution(textured_slide(mpp=None), SuperpixelConfig(mpp=1.0))
    assert "mpp=None" in str(caught.value)


def test_slide_without_mpp_and_computed_tissue(tmp_path):
    reader = textured_slide(mpp=None)
    result = run_to_end(compute_slide_superpixels(reader, SMALL, tmp_path / "s.zarr"))
    assert result.mpp is None and result.unit is None and result.scale == (1.0, 1.0)
    labels = np.asarray(result.labels)
    (r0, r1), (c0, c1) = TISSUE_ROWS, TISSUE_COLS
    assert not labels[: r0 - 4].any() and not labels[r1 + 4 :].any()
    assert not labels[:, : c0 - 4].any() and not labels[:, c1 + 4 :].any()
    # A lumen open onto the glass may be left out; the rest of the block is regions.
    assert (labels[r0 + 4 : r1 - 4, c0 + 4 : c1 - 4] > 0).mean() > 0.97
    import zarr

    axes = zarr.open_group(str(result.path), mode="r").attrs["multiscales"][0]["axes"]
    assert axes[0] == {"name": "y", "type": "space"}


def test_blank_slide_gives_an_empty_store(tmp_path):
    reader = RecordingReader(np.full((300, 300, 3), GLASS, np.uint8), mpp=0.5)
    records = []
    result = run_to_end(compute_slide_superpixels(reader, SMALL, tmp_path / "s.zarr"),
                        records.append)
    assert records == [] and reader.reads == []
    assert result.n_regions == 0 and result.adjacency().shape == (0, 2)
    assert result.pixel_counts.tolist() == [0]
    assert not np.asarray(result.labels).any()


def test_interrupted_write_leaves_no_store(tmp_path):
    out = tmp_path / "superpixels" / "s.zarr"
    partial = out.with_name("s.zarr.partial")
    job = compute_slide_superpixels(textured_slide(), SMALL, out, block_tissue())
    next(job)
    assert partial.is_dir() and not out.exists()
    job.close()  # the GUI worker quits
    assert not partial.exists() and not out.exists()
    with pytest.raises(ActiveLearningError, match="no superpixels"):
        SuperpixelMap.open(out)


def test_stale_partial_is_restarted_and_old_store_kept_until_done(tmp_path):
    out = tmp_path / "s.zarr"
    partial = tmp_path / "s.zarr.partial"
    partial.mkdir()
    (partial / "junk").write_text("left by a killed run")
    first = run_to_end(compute_slide_superpixels(textured_slide(), SMALL, out, block_tissue()))
    assert not partial.exists()
    before = np.asarray(first.labels).copy()
    other = SuperpixelConfig(region_px=32, tile_px=128)
    job = compute_slide_superpixels(textured_slide(), other, out, block_tissue())
    next(job)
    job.close()
    kept = SuperpixelMap.open(out)
    assert kept.config == SMALL and np.array_equal(np.asarray(kept.labels), before)
    replaced = run_to_end(compute_slide_superpixels(textured_slide(), other, out,
                                                    block_tissue()))
    assert SuperpixelMap.open(out).config == other
    assert replaced.n_regions < first.n_regions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_write_errors_are_typed(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    job = compute_slide_superpixels(textured_slide(), SMALL, blocker / "s.zarr", block_tissue())
    with pytest.raises(ActiveLearningError, match="cannot write the superpixels") as caught:
        run_to_end(job)
    assert caught.value.path == blocker / "s.zarr"

    class Vanishing(ArrayReader):
        def read_region(self, location, level, size):
            raise SlideNotFoundError("the file disappeared", path="gone.svs")

    reader = Vanishing(np.full((300, 300, 3), GLASS, np.uint8), mpp=0.5)
    tissue = TissueMask(mask=np.ones((10, 10), bool), downsample=30.0)
    with pytest.raises(SlideError, match="disappeared"):
        run_to_end(compute_slide_superpixels(reader, SMALL, tmp_path / "v.zarr", tissue))
    assert not (tmp_path / "v.zarr.partial").exists() and not (tmp_path / "v.zarr").exists()


def test_open_rejects_damaged_and_newer_stores(stored, tmp_path):
    _, result, _ = stored
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(result.path, damaged)
    shutil.rmtree(damaged / "regions" / "count")
    with pytest.raises(ActiveLearningError, match="damaged"):
        SuperpixelMap.open(damaged)
    newer = tmp_path / "newer.zarr"
    shutil.copytree(result.path, newer)
    attrs = json.loads((newer / ".zattrs").read_text())
    attrs["wslal"]["format_version"] = sp.STORE_FORMAT_VERSION + 1
    (newer / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(ActiveLearningError, match="newer version"):
        SuperpixelMap.open(newer)
    attrs["wslal"]["format_version"] = sp.STORE_FORMAT_VERSION
    (newer / ".zattrs").write_text(json.dumps(attrs))
    assert SuperpixelMap.open(newer).n_regions == result.n_regions
    with pytest.raises(ActiveLearningError, match="no superpixels"):
        SuperpixelMap.open(tmp_path / "nothing.zarr")


def test_tissue_window_resamples_nearest():
    tissue = TissueMask(mask=np.array([[1, 0], [0, 1]], bool), downsample=4.0)
    # Working pixels of 2 level-0 px: working (r, c) samples mask[(r + .5) * 2 // 4].
    window = sp._tissue_window(tissue, 2.0, 0, 0, 4, 4)
    assert window.astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1],
                                           [0, 0, 1, 1]]
    # Outside the mask the edge is repeated; an offset window starts further in.
    assert sp._tissue_window(tissue, 2.0, 3, 3, 3, 1).astype(int).ravel().tolist() == [1, 1, 1]
    assert sp._tissue_window(tissue, 2.0, 1, 0, 1, 3).astype(int).tolist() == [[1, 1, 0]]


def test_patch_folders_are_cut_patch_by_patch(tmp_path):
    from PIL import Image

    from napari_wsl_al.core.io.image_backend import PatchFolderReader

    folder = tmp_path / "patches"
    folder.mkdir()
    sizes = [(96, 80), (64, 96), (96, 96), (40, 50), (96, 70)]  # (height, width)
    for index, (h, w) in enumerate(sizes):
        image = synthetic_he_image((h, w), seed=index).image
        Image.fromarray(image).save(folder / f"p{index}.png")
    reader = PatchFolderReader(folder, mpp=0.5)
    assert reader.cell_size == (96, 96) and reader.columns == 3
    everywhere = TissueMask(np.ones((4, 4), bool), downsample=float(max(reader.dimensions)))
    path = tmp_path / "superpixels" / "patches.zarr"
    result = run_to_end(compute_slide_superpixels(reader, SMALL, path, everywhere))
    labels = np.asarray(result.labels)
    owner = {}
    for index, (x, y, w, h) in enumerate(reader.patch_boxes):
        inside = labels[y:y + h, x:x + w]
        assert np.all(inside > 0)  # tissue everywhere in the patch: every pixel in a region
        for region in np.unique(inside):
            assert owner.setdefault(int(region), index) == index  # in one patch only
    in_patches = np.zeros(labels.shape, bool)
    for x, y, w, h in reader.patch_boxes:
        in_patches[y:y + h, x:x + w] = True
    assert not labels[~in_patches].any()  # the padding of the cells is in no region
    assert sorted(owner) == list(range(1, result.n_regions + 1))
    # regions of different patches are never neighbours
    for first, second in result.adjacency():
        assert owner[int(first)] == owner[int(second)]
    assert len(result.adjacency()) > 0


def test_outline_rings_give_holes_in_level0_pixels():
    labels = np.ones((8, 8), np.uint32)
    labels[3:5, 2:6] = 2  # enclosed by region 1: its hole
    labels[7, :] = 3
    regions = SuperpixelMap.from_array(labels, mpp=1.0, downsample=2.0)
    rings = regions.outline_rings_level0([1, 2])
    assert len(rings[1]) == 2 and len(rings[2]) == 1
    outline, hole = rings[1]
    np.testing.assert_array_equal(outline, regions.outline_level0([1])[1])
    # region 1 covers working rows 0..6, cols 0..7: level-0 x 0..16, y 0..14
    assert outline[:, 0].min() == pytest.approx(0.0) and outline[:, 0].max() == pytest.approx(16.0)
    assert outline[:, 1].min() == pytest.approx(0.0) and outline[:, 1].max() == pytest.approx(14.0)
    # the hole is region 2's outline: working rows 3..4, cols 2..5 -> x 4..12, y 6..10
    assert hole[:, 0].min() == pytest.approx(4.0) and hole[:, 0].max() == pytest.approx(12.0)
    assert hole[:, 1].min() == pytest.approx(6.0) and hole[:, 1].max() == pytest.approx(10.0)
    np.testing.assert_array_equal(hole, rings[2][0])
    np.testing.assert_array_equal(hole[0], hole[-1])
    # a region in two pieces gets no holes
    labels[0, 0] = 4
    labels[7, 7] = 4
    pieces = SuperpixelMap.from_array(labels, mpp=1.0)
    assert len(pieces.outline_rings_level0([4])[4]) == 1
