"""Slide reading against arrays made by hand: regions, padding, level choice, resizing, mosaics.

Every image here has pixel values that encode their position, so a window read one pixel off,
or a level picked one step off, gives other numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_wsl_al.core.errors import CorruptSlideError, SlideError
from napari_wsl_al.core.io.base import LevelArray, SlideReader, resize_rgb
from napari_wsl_al.core.io.image_backend import (
    ImageReader,
    PatchFolderReader,
    _pil_to_array,
    image_size,
    list_patch_files,
    read_image_file,
)
from napari_wsl_al.core.io.memory_backend import ArrayReader


def position_image(height: int, width: int) -> np.ndarray:
    """RGB with red = row, green = column, blue = row + column (all below 256 here)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([yy, xx, yy + xx], axis=-1).astype(np.uint8)


def test_read_level_inside_and_padded_with_white():
    image = position_image(8, 12)
    reader = ArrayReader(image)
    np.testing.assert_array_equal(reader.read_level(0, 3, 2, 5, 4), image[2:6, 3:8])
    # 2 columns left of and 1 row above the image: those read as white glass.
    window = reader.read_level(0, -2, -1, 5, 4)
    assert window.shape == (4, 5, 3)
    np.testing.assert_array_equal(window[1:, 2:], image[0:3, 0:3])
    assert (window[0] == 255).all() and (window[:, :2] == 255).all()
    # Past the right and bottom edges.
    window = reader.read_level(0, 10, 6, 4, 3)
    np.testing.assert_array_equal(window[:2, :2], image[6:8, 10:12])
    assert (window[2:] == 255).all() and (window[:, 2:] == 255).all()
    # Around the whole image, and wholly outside it.
    around = reader.read_level(0, -1, -1, 14, 10)
    np.testing.assert_array_equal(around[1:9, 1:13], image)
    assert (around[0] == 255).all() and (around[9] == 255).all()
    assert (around[:, 0] == 255).all() and (around[:, 13] == 255).all()
    assert (reader.read_level(0, 12, 0, 3, 3) == 255).all()
    assert (reader.read_level(0, -3, 0, 3, 3) == 255).all()
    assert reader.read_level(0, 0, 0, 0, 4).shape == (4, 0, 3)
    with pytest.raises(ValueError, match="non-negative"):
        reader.read_level(0, 0, 0, -1, 4)
    with pytest.raises(ValueError, match="levels 0..0"):
        reader.read_level(1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="levels 0..0"):
        reader.read_level(-1, 0, 0, 1, 1)


def test_read_region_takes_level0_locations():
    image = position_image(16, 24)
    half = image[::2, ::2].copy()
    reader = ArrayReader(image, levels=[half])
    assert reader.level_downsamples == (1.0, 2.0)
    # Level-0 (10, 6) is level-1 (5, 3).
    np.testing.assert_array_equal(reader.read_region((10, 6), 1, (4, 3)), half[3:6, 5:9])
    np.testing.assert_array_equal(reader.read_region((10, 6), 0, (4, 3)), image[6:9, 10:14])


def test_native_downsamples_average_both_axes():
    # 12 x 8 over 5 x 4: (12 / 5 + 8 / 4) / 2 = (2.4 + 2) / 2 = 2.2.
    reader = ArrayReader(position_image(8, 12), levels=[position_image(4, 5)])
    assert reader.native_downsamples == [1.0, pytest.approx(2.2)]
    assert reader.level_dimensions == ((12, 8), (5, 4))


def test_best_level_for_downsample():
    image = position_image(16, 16)
    reader = ArrayReader(image, levels=[image[::2, ::2], image[::4, ::4]])
    assert reader.level_downsamples == (1.0, 2.0, 4.0)
    assert reader.best_level_for_downsample(0.5) == 0
    assert reader.best_level_for_downsample(1.0) == 0
    assert reader.best_level_for_downsample(1.99) == 0
    assert reader.best_level_for_downsample(2.0) == 1
    # A relative tolerance of 1e-6: 2 (1 - 5e-7) still picks level 1, 2 (1 - 2e-6) does not.
    assert reader.best_level_for_downsample(2.0 * (1 - 5e-7)) == 1
    assert reader.best_level_for_downsample(2.0 * (1 - 2e-6)) == 0
    assert reader.best_level_for_downsample(3.99) == 1
    assert reader.best_level_for_downsample(4.0) == 2
    assert reader.best_level_for_downsample(100.0) == 2


def test_level_for_mpp_and_level_mpp():
    image = position_image(16, 16)
    reader = ArrayReader(image, mpp=0.25, levels=[image[::2, ::2], image[::4, ::4]])
    assert reader.level_for_mpp(0.25) == (0, 1.0)
    assert reader.level_for_mpp(0.1) == (0, 1.0)  # finer than the scan: level 0, no upscale
    assert reader.level_for_mpp(0.5) == (1, 1.0)
    level, factor = reader.level_for_mpp(0.75)  # downsample 3: level 1, then 1.5
    assert level == 1 and factor == pytest.approx(1.5)
    level, factor = reader.level_for_mpp(1.6)  # downsample 6.4: level 2, then 1.6
    assert level == 2 and factor == pytest.approx(1.6)
    assert reader.level_mpp(2) == pytest.approx((1.0, 1.0))
    anisotropic = ArrayReader(image, mpp=(0.25, 0.3), levels=[image[::2, ::2]])
    assert anisotropic.level_mpp(1) == pytest.approx((0.5, 0.6))
    assert anisotropic.napari_scale() == (0.3, 0.25)  # (y, x)
    unknown = ArrayReader(image)
    assert unknown.level_mpp(0) is None and unknown.napari_scale() == (1.0, 1.0)
    with pytest.raises(SlideError, match="microns per pixel are unknown"):
        unknown.level_for_mpp(0.5)


def test_set_mpp_checks_its_values():
    reader = ArrayReader(position_image(4, 4))
    reader.set_mpp(0.5)
    assert reader.mpp == (0.5, 0.5)
    reader.set_mpp((0.25, 0.3))
    assert reader.mpp == (0.25, 0.3)
    for bad in (0, -0.5, float("nan"), float("inf"), (0.25, 0.0), (float("nan"), 0.3)):
        with pytest.raises(ValueError, match="positive"):
            reader.set_mpp(bad)
    assert reader.mpp == (0.25, 0.3)


def test_lazy_pyramid_dimensions():
    # Halved (rounding down) while the longer side is over 1024 and the shorter at least 2.
    reader = ArrayReader(np.zeros((1030, 2051, 3), np.uint8))
    assert reader.level_dimensions == ((2051, 1030), (1025, 515), (512, 257))
    assert reader.level_downsamples == (1.0, 2.0, 4.0)
    assert [reader.is_native(level) for level in range(3)] == [True, False, False]
    assert ArrayReader(np.zeros((1024, 1024, 3), np.uint8)).level_count == 1
    assert ArrayReader(np.zeros((1, 2100, 3), np.uint8)).level_count == 1  # one row
    # 4200 x 4 -> 2100 x 2 -> 1050 x 1, then it stops (one row left).
    thin = ArrayReader(np.zeros((4, 4200, 3), np.uint8))
    assert thin.level_dimensions == ((4200, 4), (2100, 2), (1050, 1))


def test_thumbnail_size_and_level():
    reader = ArrayReader(np.zeros((1030, 2051, 3), np.uint8))
    # Factor 2051 / 1024 = 2.0029: read level 1 (1025 x 515), resized to 1024 x 514.
    assert reader.thumbnail(1024).shape == (514, 1024, 3)
    assert reader.thumbnail(4096).shape == (1030, 2051, 3)  # never enlarged


def test_lazy_levels_are_box_means_across_read_blocks():
    # Level 0: 2 * ((x // 2) % 100) + 2 * (y % 2): every 2 x 2 block averages to an integer,
    # 2 * ((x // 2) % 100) + 1, so level 1 pixel (y, j) is 2 * (j % 100) + 1.
    height, width = 4, 4200
    yy, xx = np.mgrid[0:height, 0:width]
    grey = (2 * ((xx // 2) % 100) + 2 * (yy % 2)).astype(np.uint8)
    reader = ArrayReader(grey)
    assert reader.level_dimensions[1] == (2100, 2)
    # A window across the 1024-pixel read blocks of level 1 (2048 level-0 pixels).
    window = reader.read_level(1, 1000, 0, 100, 2)
    expected = 2 * (np.arange(1000, 1100) % 100) + 1
    np.testing.assert_array_equal(window[..., 0], np.broadcast_to(expected, (2, 100)))
    np.testing.assert_array_equal(window[..., 1], window[..., 0])
    # Level 2 (4 x 4 blocks): columns 4j..4j+3 hold x // 2 = 2j, 2j+1, rows add 0, 2, 0, 2:
    # 2 * ((2j) % 100 + (2j + 1) % 100) / 2 + 1, i.e. 4j % 200 + 2 unless 2j + 1 wraps at 100.
    level2 = reader.read_level(2, 500, 0, 30, 1)[0, :, 0]
    j = np.arange(500, 530)
    expected2 = (2 * j % 100 + (2 * j + 1) % 100) + 1
    np.testing.assert_array_equal(level2, expected2)
    # The dask array gives the same pixels.
    np.testing.assert_array_equal(reader.level_array(1)[:, 1000:1100].compute(), window)


def test_tile_size_groups_small_tiles():
    image = position_image(8, 8)
    assert ArrayReader(image, tile=64).tile_size(0) == (256, 256)  # 4 tiles a side
    assert ArrayReader(image, tile=100).tile_size(0) == (300, 300)  # ceil(256 / 100) = 3
    assert ArrayReader(image, tile=512).tile_size(0) == (512, 512)
    big = ArrayReader(np.zeros((1030, 2051, 3), np.uint8), tile=64)
    assert big.tile_size(1) == (512, 512)  # a lazy level: the default chunk
    assert big.level_array(0).chunks[1][:2] == (256, 256)


def test_level_array_indexing_matches_numpy():
    image = position_image(20, 30)
    reader = ArrayReader(image)
    view = reader.level_view(0)
    assert isinstance(view, LevelArray) and view.shape == (20, 30, 3) and len(view) == 20
    for key in [(slice(3, 9), slice(4, 20)), (5, 7), (5,), (slice(None), 2), (4, slice(1, 5)),
                (slice(2, 12, 3), slice(None, None, 4)), (slice(10, 2, -2), slice(5, 8)),
                (slice(5, 5), slice(0, 3)), ([1, 7, 3], slice(2, 6)), (slice(1, 4), 3, 1),
                (slice(0, 2), slice(0, 2), 2), 3]:
        np.testing.assert_array_equal(view[key], image[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(view), image)
    assert np.asarray(view, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="levels"):
        reader.level_view(1)


def test_resize_rgb_against_pillows_bilinear_weights():
    # Shrinking by 2: the bilinear filter widens to 2 source pixels each side, weights
    # 0.75, 0.75, 0.25 (edge pixels have fewer neighbours, weights renormalised):
    # output 0 = (3 * 0 + 3 * 70 + 140) / 7 = 50, output 1 = (70 + 3 * 140 + 3 * 210) / 7 = 160.
    image = np.zeros((4, 4, 3), np.uint8)
    image[:] = np.array([0, 70, 140, 210], np.uint8)[None, :, None]
    shrunk = resize_rgb(image, (2, 4))  # (width, height): rows unchanged
    assert shrunk.shape == (4, 2, 3)
    np.testing.assert_array_equal(shrunk[..., 0], [[50, 160]] * 4)
    # Enlarging by 2: plain bilinear at pixel centres: a0, (3 a0 + a1) / 4, (a0 + 3 a1) / 4, a1.
    image = np.zeros((2, 2, 3), np.uint8)
    image[:] = np.array([0, 200], np.uint8)[None, :, None]
    np.testing.assert_array_equal(resize_rgb(image, (4, 2))[..., 2], [[0, 50, 150, 200]] * 2)
    same = position_image(3, 5)
    assert resize_rgb(same, (5, 3)) is same


def test_read_region_mpp_reads_a_larger_window_and_shrinks_it():
    image = np.zeros((4, 8, 3), np.uint8)
    image[:] = np.array([0, 70, 140, 210, 0, 0, 0, 0], np.uint8)[None, :, None]
    reader = ArrayReader(image, mpp=0.25)
    # 0.5 um/px from a 0.25 um/px scan: a 4 x 2 window shrunk to 2 x 1 (see above).
    np.testing.assert_array_equal(reader.read_region_mpp((0, 0), 0.5, (2, 1))[..., 0],
                                  [[50, 160]])
    # Within 0.1 % of the scan's resolution: read as is.
    np.testing.assert_array_equal(reader.read_region_mpp((1, 1), 0.25025, (3, 2)),
                                  image[1:3, 1:4])


# ---------------------------------------------------------------------- single images
def test_image_modes_convert_to_rgb(tmp_path):
    bilevel = Image.new("1", (3, 2))
    bilevel.putpixel((1, 0), 1)
    bilevel.save(tmp_path / "bilevel.png")
    pixels = read_image_file(tmp_path / "bilevel.png")
    assert pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(pixels[..., 0], [[0, 255, 0], [0, 0, 0]])

    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image_file(tmp_path / "palette.png"),
                                  [[[10, 20, 30], [200, 100, 50]]])

    # A 16-bit grey PNG (Pillow opens it as 32-bit integers): scaled by the uint16 range,
    # v / 257.
    wide = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    wide.save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as reopened:
        assert reopened.mode in ("I", "I;16")
    np.testing.assert_array_equal(read_image_file(tmp_path / "wide.png")[0, :, 0], [0, 100, 255])

    # Grey + alpha over white: alpha 0 is white, 255 the grey, 128 in between:
    # (0 * 128 + 255 * 127 + 127) // 255 = 127.
    grey_alpha = Image.fromarray(np.array([[[0, 0], [0, 255], [0, 128]]], np.uint8), mode="LA")
    grey_alpha.save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image_file(tmp_path / "la.png")[0, :, 1], [255, 0, 127])

    cmyk = Image.new("CMYK", (1, 1), (0, 0, 0, 0))
    cmyk.save(tmp_path / "cmyk.jpg")
    np.testing.assert_array_equal(read_image_file(tmp_path / "cmyk.jpg"), [[[255, 255, 255]]])


def test_tiff_axes_are_reduced_to_rgb(tmp_path):
    image = position_image(6, 7)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(image, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_image_file(tmp_path / "planar.tif"), image)
    # A stack of two RGB images: the first one is read.
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, 255 - image]), photometric="rgb")
    np.testing.assert_array_equal(read_image_file(tmp_path / "stack.tif"), image)
    assert image_size(tmp_path / "stack.tif") == (7, 6)
    Image.fromarray(image).save(tmp_path / "plain.png")
    assert image_size(tmp_path / "plain.png") == (7, 6)
    reader = ImageReader(tmp_path / "plain.png", mpp=0.5)
    assert reader.format == "image:png" and reader.name == "plain" and reader.mpp == (0.5, 0.5)
    np.testing.assert_array_equal(reader.read_level(0, 2, 1, 3, 4), image[1:5, 2:5])


# ---------------------------------------------------------------------- patch folders
SIZES = [(40, 30), (50, 20), (30, 45), (20, 20), (50, 45)]  # (width, height): cells 50 x 45


@pytest.fixture
def mosaic(tmp_path):
    """A folder of 5 patches and the 150 x 90 mosaic they make, built by hand."""
    folder = tmp_path / "patches"
    folder.mkdir()
    expected = np.full((90, 150, 3), 255, np.uint8)
    origins = [(0, 0), (50, 0), (100, 0), (0, 45), (50, 45)]  # 3 columns, row-major
    for index, ((w, h), (x, y)) in enumerate(zip(SIZES, origins)):
        patch = position_image(h, w)
        patch[..., 2] = 40 * index  # which patch
        Image.fromarray(patch).save(folder / f"p{index}.png")
        expected[y : y + h, x : x + w] = patch
    return PatchFolderReader(folder), expected


def test_patch_at_cell_and_patch_borders(mosaic):
    reader, _ = mosaic
    assert reader.patch_at(0, 0) == 0 and reader.patch_at(39.5, 29.5) == 0
    assert reader.patch_at(40, 10) is None and reader.patch_at(10, 30) is None  # padding
    assert reader.patch_at(49.9, 0) is None and reader.patch_at(50, 0) == 1
    assert reader.patch_at(99.9, 19.9) == 1 and reader.patch_at(60, 20) is None
    assert reader.patch_at(100, 44.9) == 2 and reader.patch_at(129.9, 0) == 2
    assert reader.patch_at(0, 45) == 3 and reader.patch_at(19.9, 64.9) == 3
    assert reader.patch_at(99.9, 89.9) == 4
    assert reader.patch_at(100, 45) is None  # the sixth cell holds no patch
    assert reader.patch_at(150, 0) is None and reader.patch_at(0, 90) is None
    assert reader.patch_at(-0.1, 5) is None and reader.patch_at(5, -0.1) is None


def test_windows_across_cell_borders(mosaic):
    reader, expected = mosaic
    for x, y, w, h in [(35, 15, 30, 40), (0, 0, 150, 90), (95, 40, 20, 10), (49, 44, 2, 2),
                       (120, 30, 30, 60), (45, 60, 10, 30)]:
        np.testing.assert_array_equal(reader.read_level(0, x, y, w, h),
                                      expected[y : y + h, x : x + w], err_msg=str((x, y, w, h)))
    # Past the mosaic's edges: white.
    window = reader.read_level(0, 130, 80, 30, 20)
    np.testing.assert_array_equal(window[:10, :20], expected[80:90, 130:150])
    assert (window[10:] == 255).all() and (window[:, 20:] == 255).all()


def test_metadata_repr_and_closing():
    image = position_image(16, 24)
    reader = ArrayReader(image, mpp=(0.25, 0.3), name="tiny", levels=[image[::2, ::2]])
    assert reader.metadata() == {
        "path": None, "name": "tiny", "format": "memory", "dimensions": [24, 16],
        "level_dimensions": [[24, 16], [12, 8]], "level_downsamples": [1.0, 2.0],
        "native_levels": 2, "mpp": [0.25, 0.3], "objective_power": None,
        "associated_images": [], "properties": {},
    }
    assert repr(reader) == "<ArrayReader 'tiny' 24x16, 2 levels, 0.25 um/px>"
    assert repr(ArrayReader(image)) == "<ArrayReader 'array' 24x16, 1 levels, unknown mpp>"
    assert repr(reader.level_view(1)) == "<LevelArray 'tiny' level 1 shape (8, 12, 3)>"
    with pytest.raises(KeyError, match="label"):
        reader.read_associated("label")
    with reader as opened:
        assert opened is reader
        np.testing.assert_array_equal(reader.read_level(1, 0, 0, 2, 2), image[:4:2, :4:2])
    with pytest.raises(SlideError, match="closed"):
        reader.read_level(0, 0, 0, 1, 1)
    reader.close()  # twice is fine


class TwoLevelSlide(SlideReader):
    """A backend that sets only its level sizes, as a minimal file backend does."""

    def __init__(self, dimensions, region_shape=None):
        super().__init__()
        self.native_dimensions = list(dimensions)
        self.region_shape = region_shape
        self._finish_init()

    def _read_native(self, level, x, y, width, height):
        shape = self.region_shape or (height, width, 3)
        return np.full(shape, level, np.uint8)


def test_a_backend_gets_downsamples_tiles_and_checked_regions():
    slide = TwoLevelSlide([(100, 60), (50, 30), (25, 15)])
    assert slide.native_downsamples == [1.0, 2.0, 4.0]  # level-0 width over the level's
    assert slide.native_tile_sizes == [None, None, None]
    assert slide.tile_size(1) == (512, 512)
    assert slide.level_array(2) is slide.level_array(2)  # made once
    assert [level.shape for level in slide.levels()] == [(60, 100, 3), (30, 50, 3), (15, 25, 3)]
    assert (slide.read_level(1, 0, 0, 3, 2) == 1).all()
    with pytest.raises(SlideError, match="backend returned"):
        TwoLevelSlide([(100, 60)], region_shape=(2, 2, 3)).read_level(0, 0, 0, 3, 3)
    with pytest.raises(SlideError, match="no image"):
        TwoLevelSlide([])
    view = slide.level_view(0)
    assert (view.size, view.ndim, view.dtype) == (60 * 100 * 3, 3, np.uint8)


def test_pil_modes_and_depths():
    assert _pil_to_array(Image.new("1", (2, 1), 1)).tolist() == [[255, 255]]
    in_range = _pil_to_array(Image.fromarray(np.array([[0, 65535]], np.int32), mode="I"))
    assert in_range.dtype == np.uint16 and in_range.tolist() == [[0, 65535]]
    beyond = _pil_to_array(Image.fromarray(np.array([[0, 70000]], np.int32), mode="I"))
    assert beyond.dtype == np.int32 and beyond.tolist() == [[0, 70000]]
    negative = _pil_to_array(Image.fromarray(np.array([[-1, 5]], np.int32), mode="I"))
    assert negative.dtype == np.int32
    sixteen = _pil_to_array(Image.fromarray(np.array([[3, 60000]], np.uint16)))
    assert sixteen.dtype == np.uint16 and sixteen.tolist() == [[3, 60000]]
    floats = _pil_to_array(Image.fromarray(np.array([[0.25, 2.5]], np.float32), mode="F"))
    assert floats.dtype == np.float32 and floats.tolist() == [[0.25, 2.5]]
    palette = Image.new("P", (1, 1))
    palette.putpalette([1, 2, 3] + [0] * 765)
    assert _pil_to_array(palette).tolist() == [[[1, 2, 3, 255]]]  # via RGBA
    assert _pil_to_array(Image.new("YCbCr", (1, 1), (255, 128, 128))).shape == (1, 1, 3)
    assert _pil_to_array(Image.new("LA", (1, 1), (7, 9))).tolist() == [[[7, 9]]]
    assert _pil_to_array(Image.new("RGBA", (1, 1), (1, 2, 3, 4))).tolist() == [[[1, 2, 3, 4]]]


def test_list_patch_files_and_folder_properties(tmp_path):
    folder = tmp_path / "patches"
    folder.mkdir()
    for name, size in [("b.png", (4, 3)), ("a.JPG", (5, 2)), (".hidden.png", (4, 3)),
                       ("c.tif", (2, 6))]:
        array = np.zeros((size[1], size[0], 3), np.uint8)
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, array, photometric="rgb")
        else:
            Image.fromarray(array).save(folder / name, format="JPEG" if "JPG" in name else None)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()  # a folder named like an image
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert [p.name for p in list_patch_files(folder)] == ["a.JPG", "b.png", "broken.png", "c.tif"]
    reader = PatchFolderReader(folder, mpp=0.5)
    assert reader.patch_names == ["a.JPG", "b.png", "c.tif"] and reader.skipped == ["broken.png"]
    # 3 patches: 2 columns, 2 rows of 5 x 6 cells.
    assert reader.properties == {"patches.count": "3", "patches.columns": "2",
                                 "patches.cell_size": "5x6", "patches.skipped": "broken.png"}
    assert reader.dimensions == (10, 12) and reader.mpp == (0.5, 0.5)
    assert reader.native_tile_sizes == [(6, 5)] and reader.format == "patch-folder"
    assert reader.patch_boxes == [(0, 0, 5, 2), (5, 0, 4, 3), (0, 6, 2, 6)]


def test_a_patch_that_changed_size_is_reported(tmp_path):
    folder = tmp_path / "patches"
    folder.mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(folder / "a.png")
    reader = PatchFolderReader(folder, cache_size=1)
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(folder / "a.png")
    with pytest.raises(CorruptSlideError, match="4x5, its header said 4x3"):
        reader.read_patch(0)
