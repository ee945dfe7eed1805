"""Slide backends on tiny fixture files and on the real Aperio slide: geometry, pixels, laziness."""

from __future__ import annotations

import threading
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_wsl_al.core.io import (
    ArrayReader,
    ImageReader,
    OpenSlideReader,
    PatchFolderReader,
    TiffReader,
    ZarrReader,
    open_slide,
)
from napari_wsl_al.core.io.base import SMALLEST_LEVEL_SIZE

REPO = Path(__file__).resolve().parents[2]
REAL_SVS = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
SAMPLE_SVS = REPO / "sample_data" / "CMU-1-Small-Region.svs"
needs_real = pytest.mark.skipif(
    not REAL_SVS.exists(), reason=f"real test data not present at {REAL_SVS} (CI has it)"
)


def rgb_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random RGB pixels: every pixel differs, so misplaced reads are caught."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def halve(image: np.ndarray) -> np.ndarray:
    return image[::2, ::2].copy()


@pytest.fixture(scope="module")
def image_1000x1500() -> np.ndarray:
    return rgb_image(1000, 1500)


# ---------------------------------------------------------------------- the real slide
@pytest.fixture(scope="module")
def real_slide():
    with open_slide(REAL_SVS) as reader:
        yield reader


@needs_real
def test_real_svs_geometry_and_metadata(real_slide):
    assert isinstance(real_slide, OpenSlideReader)
    assert real_slide.format == "openslide:aperio"
    assert real_slide.dimensions == (2220, 2967)
    assert len(real_slide.native_dimensions) == 1
    assert real_slide.mpp == pytest.approx((0.499, 0.499))
    assert real_slide.objective_power == 20
    assert real_slide.native_tile_sizes == [(240, 240)]
    # Lazy pyramid: halves until the longer side fits SMALLEST_LEVEL_SIZE.
    assert real_slide.level_dimensions == ((2220, 2967), (1110, 1483), (555, 741))
    assert max(real_slide.level_dimensions[-1]) <= SMALLEST_LEVEL_SIZE
    assert real_slide.level_downsamples == (1.0, 2.0, 4.0)
    assert set(real_slide.associated_image_names()) == {"label", "macro", "thumbnail"}
    meta = real_slide.metadata()
    assert meta["mpp"] == pytest.approx([0.499, 0.499]) and meta["native_levels"] == 1


@needs_real
def test_real_svs_associated_images_are_rgb(real_slide):
    for name, size in {"label": (387, 463), "macro": (1280, 431), "thumbnail": (574, 768)}.items():
        image = real_slide.read_associated(name)
        assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
    with pytest.raises(KeyError, match="nope"):
        real_slide.read_associated("nope")


@needs_real
def test_real_svs_pixels_match_openslide(real_slide):
    import openslide

    bare = openslide.OpenSlide(str(REAL_SVS))
    rgba = np.asarray(bare.read_region((1000, 1200), 0, (300, 200)))
    assert (rgba[..., 3] == 255).all()
    direct = real_slide.read_region((1000, 1200), 0, (300, 200))
    np.testing.assert_array_equal(direct, rgba[..., :3])
    lazy = real_slide.level_array(0)[1200:1400, 1000:1300].compute()
    np.testing.assert_array_equal(lazy, direct)
    bare.close()


@needs_real
def test_real_svs_lazy_array_chunks_and_lazy_level(real_slide):
    array = real_slide.level_array(0)
    assert array.shape == (2967, 2220, 3) and array.dtype == np.uint8
    assert array.chunks[0][0] % 240 == 0 and array.chunks[1][0] % 240 == 0
    level1 = real_slide.level_array(1)[100:164, 200:264].compute()
    above = real_slide.read_level(0, 400, 200, 128, 128).astype(np.float32)
    expected = np.round(above.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))).astype(np.uint8)
    np.testing.assert_allclose(level1, expected, atol=1)
    np.testing.assert_array_equal(level1, real_slide.read_level(1, 200, 100, 64, 64))


@needs_real
def test_real_svs_reads_outside_are_white(real_slide):
    region = real_slide.read_region((2100, -50), 0, (200, 100))
    assert region.shape == (100, 200, 3)
    assert (region[:50] == 255).all() and (region[:, 120:] == 255).all()
    inside = real_slide.read_region((2100, 0), 0, (120, 50))
    np.testing.assert_array_equal(region[50:, :120], inside)
    assert (real_slide.read_region((5000, 5000), 0, (10, 10)) == 255).all()


@needs_real
def test_real_svs_read_region_mpp(real_slide):
    assert real_slide.level_for_mpp(0.499) == (0, 1.0)
    level, factor = real_slide.level_for_mpp(1.0)
    assert level == 1 and factor == pytest.approx(1.0 / 0.998, rel=1e-6)
    assert real_slide.level_for_mpp(10.0)[0] == 2
    assert real_slide.level_for_mpp(0.25) == (0, 1.0)
    region = real_slide.read_region_mpp((0, 0), 1.0, (128, 96))
    assert region.shape == (96, 128, 3) and region.dtype == np.uint8
    at_level0 = real_slide.read_region_mpp((500, 500), 0.499, (64, 64))
    np.testing.assert_array_equal(at_level0, real_slide.read_region((500, 500), 0, (64, 64)))


@needs_real
def test_sample_data_copy_is_the_same_slide():
    if not SAMPLE_SVS.exists():
        pytest.skip("sample_data/ copy absent")
    with open_slide(SAMPLE_SVS) as reader:
        assert reader.dimensions == (2220, 2967)


# ---------------------------------------------------------------------- TIFF
def test_tiff_subifd_pyramid_with_cm_resolution(tmp_path, image_1000x1500):
    path = tmp_path / "pyramid.tif"
    levels = [image_1000x1500, halve(image_1000x1500), halve(halve(image_1000x1500))]
    with tifffile.TiffWriter(path) as tif:
        options = dict(tile=(256, 256), photometric="rgb", compression="zlib")
        tif.write(
            levels[0], subifds=2, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **options
        )
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)
    reader = open_slide(path)
    assert isinstance(reader, TiffReader)
    assert reader.native_dimensions == [(1500, 1000), (750, 500), (375, 250)]
    assert reader.native_downsamples == [1.0, 2.0, 4.0]
    assert reader.mpp == pytest.approx((0.5, 0.5))
    assert reader.native_tile_sizes == [(256, 256)] * 3
    for index, level in enumerate(levels):
        array = reader.level_array(index)
        assert array.shape == level.shape
        assert array.chunks[0][0] == min(256, level.shape[0])
        np.testing.assert_array_equal(array[37:301, 11:290].compute(), level[37:301, 11:290])
    np.testing.assert_array_equal(
        reader.read_region((400, 200), 1, (100, 60)), levels[1][100:160, 200:300]
    )


def test_tiff_page_pyramid_and_whole_level(tmp_path, image_1000x1500):
    path = tmp_path / "pages.tiff"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image_1000x1500, tile=(128, 128), photometric="rgb")
        tif.write(halve(image_1000x1500), tile=(128, 128), photometric="rgb", subfiletype=1)
    reader = open_slide(path)
    assert reader.native_dimensions == [(1500, 1000), (750, 500)]
    assert reader.mpp is None and reader.napari_scale() == (1.0, 1.0)
    np.testing.assert_array_equal(reader.level_array(0).compute(), image_1000x1500)
    np.testing.assert_array_equal(reader.level_array(1).compute(), halve(image_1000x1500))


def test_ome_tiff_physical_size(tmp_path, image_1000x1500):
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            image_1000x1500,
            tile=(256, 256),
            photometric="rgb",
            subifds=1,
            metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.3},
        )
        tif.write(halve(image_1000x1500), tile=(256, 256), photometric="rgb", subfiletype=1)
    reader = open_slide(path)
    assert reader.format == "tifffile:ome" and reader.name == "slide"
    assert reader.mpp == pytest.approx((0.25, 0.3))
    assert reader.napari_scale() == pytest.approx((0.3, 0.25))
    assert len(reader.native_dimensions) == 2
    np.testing.assert_array_equal(reader.read_region((0, 0), 1, (750, 500)), halve(image_1000x1500))


def test_plain_tiff_gets_a_lazy_pyramid(tmp_path):
    image = rgb_image(2100, 2500, seed=3)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image, resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH")
    reader = open_slide(path)
    assert isinstance(reader, TiffReader)
    assert len(reader.native_dimensions) == 1
    assert reader.level_dimensions == ((2500, 2100), (1250, 1050), (625, 525))
    assert reader.mpp == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(reader.read_level(0, 1000, 900, 64, 32), image[900:932, 1000:1064])
    lazy = reader.level_array(2)[:10, :10].compute()
    assert lazy.shape == (10, 10, 3)
    expected = image[:40, :40].astype(np.float32).reshape(10, 4, 10, 4, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(lazy, expected, atol=1.01)


def test_tiff_channel_first_grey16_and_rgba(tmp_path):
    image = rgb_image(300, 400, seed=4)
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(image, 2, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(open_slide(planar).read_level(0, 0, 0, 400, 300), image)

    grey = np.arange(200 * 300, dtype=np.uint16).reshape(200, 300)
    grey16 = tmp_path / "grey16.tif"
    tifffile.imwrite(grey16, grey, tile=(128, 128))
    pixels = open_slide(grey16).read_level(0, 0, 0, 300, 200)
    expected = np.round(grey / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
    custom = TiffReader(grey16, value_range=(0, 200 * 300 - 1)).read_level(0, 0, 0, 300, 200)
    assert custom[-1, -1, 0] == 255 and custom[0, 0, 0] == 0

    rgba = np.dstack([image, np.full((300, 400), 255, np.uint8)])
    rgba[:10, :, 3] = 0
    rgba_path = tmp_path / "rgba.tif"
    tifffile.imwrite(rgba_path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    pixels = open_slide(rgba_path).read_level(0, 0, 0, 400, 300)
    assert (pixels[:10] == 255).all()
    np.testing.assert_array_equal(pixels[10:], image[10:])


# ---------------------------------------------------------------------- zarr
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_yxc(tmp_path, zarr_format, image_1000x1500):
    path = tmp_path / f"v{zarr_format}.zarr"
    array = zarr.create_array(
        path, shape=image_1000x1500.shape, chunks=(200, 300, 3), dtype="uint8",
        zarr_format=zarr_format,
    )  # fmt: skip
    array[:] = image_1000x1500
    reader = open_slide(path)
    assert isinstance(reader, ZarrReader) and reader.format == f"zarr:v{zarr_format}"
    assert reader.native_tile_sizes == [(200, 300)]
    # Tiles under 256 pixels are grouped into larger chunks (base.tile_size).
    assert reader.tile_size(0) == (400, 600)
    assert reader.level_array(0).chunks[0][0] == 400
    assert reader.level_dimensions == ((1500, 1000), (750, 500))
    np.testing.assert_array_equal(reader.level_array(0)[123:456, 7:999].compute(),
                                  image_1000x1500[123:456, 7:999])  # fmt: skip


def test_zarr_array_channel_first(tmp_path):
    image = rgb_image(200, 300, seed=5)
    path = tmp_path / "cyx.zarr"
    array = zarr.create_array(path, shape=(3, 200, 300), chunks=(3, 64, 64), dtype="uint8")
    array[:] = np.moveaxis(image, 2, 0)
    reader = open_slide(path)
    np.testing.assert_array_equal(reader.read_level(0, 0, 0, 300, 200), image)


def test_ome_zarr_multiscales_tcyx(tmp_path, image_1000x1500):
    path = tmp_path / "image.ome.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=2)
    tcyx = np.moveaxis(image_1000x1500, 2, 0)[None]
    for level in range(3):
        data = tcyx[..., :: 2**level, :: 2**level]
        group.create_array(str(level), shape=data.shape, chunks=(1, 3, 256, 256), dtype="uint8")[
            :
        ] = data
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "t", "type": "time"},
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": str(level),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1, 1, 0.25 * 2**level, 0.25 * 2**level]}
                    ],
                }
                for level in range(3)
            ],
        }
    ]
    reader = open_slide(path)
    assert reader.format == "ome-zarr:0.4"
    assert reader.native_dimensions == [(1500, 1000), (750, 500), (375, 250)]
    assert reader.mpp == pytest.approx((0.25, 0.25))
    assert reader.native_tile_sizes == [(256, 256)] * 3
    for level in range(3):
        expected = image_1000x1500[:: 2**level, :: 2**level]
        np.testing.assert_array_equal(reader.level_array(level).compute(), expected)


def test_ome_zarr_v05_nanometer_units(tmp_path):
    image = rgb_image(128, 160, seed=6)
    path = tmp_path / "v05.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("s0", shape=(3, 128, 160), chunks=(3, 64, 64), dtype="uint8")[:] = (
        np.moveaxis(image, 2, 0)
    )
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", "unit": "nanometer"},
                    {"name": "x", "type": "space", "unit": "nanometer"},
                ],
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [{"type": "scale", "scale": [1, 400, 500]}],
                    }
                ],
            }
        ],
    }
    reader = open_slide(path)
    assert reader.format == "ome-zarr:0.5"
    assert reader.mpp == pytest.approx((0.5, 0.4))
    np.testing.assert_array_equal(reader.read_level(0, 0, 0, 160, 128), image)


# ---------------------------------------------------------------------- images
@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg"])
def test_single_images(tmp_path, suffix):
    image = np.zeros((90, 120, 3), np.uint8)
    image[:, :60] = (200, 40, 120)
    image[:, 60:] = (30, 180, 90)
    path = tmp_path / f"patch{suffix}"
    Image.fromarray(image).save(path, quality=95) if suffix == ".jpg" else Image.fromarray(
        image
    ).save(path)
    reader = open_slide(path)
    assert isinstance(reader, ImageReader) and reader.format == f"image:{suffix[1:]}"
    assert reader.dimensions == (120, 90) and reader.level_count == 1
    pixels = reader.level_array(0).compute()
    if suffix == ".jpg":
        assert np.abs(pixels.astype(int) - image).mean() < 4
    else:
        np.testing.assert_array_equal(pixels, image)


def test_grey_rgba_and_16bit_png(tmp_path):
    grey = np.tile(np.arange(100, dtype=np.uint8), (50, 1))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    pixels = open_slide(tmp_path / "grey.png").read_level(0, 0, 0, 100, 50)
    np.testing.assert_array_equal(pixels, np.repeat(grey[..., None], 3, axis=2))

    rgba = np.zeros((50, 100, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[:, :50, 3] = 0
    rgba[:, 50:60, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    pixels = open_slide(tmp_path / "rgba.png").read_level(0, 0, 0, 100, 50)
    assert (pixels[:, :50] == 255).all()
    np.testing.assert_array_equal(pixels[0, 55], [round((200 * 128 + 255 * 127) / 255), 127, 127])
    np.testing.assert_array_equal(pixels[:, 60:], np.broadcast_to([200, 0, 0], (50, 40, 3)))

    deep = (np.arange(50 * 100).reshape(50, 100) * 13).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    pixels = open_slide(tmp_path / "deep.png").read_level(0, 0, 0, 100, 50)
    np.testing.assert_array_equal(pixels[..., 1], np.round(deep / 257.0).astype(np.uint8))


def test_image_smaller_than_a_tile(tmp_path):
    image = rgb_image(23, 37, seed=7)
    Image.fromarray(image).save(tmp_path / "tiny.png")
    reader = open_slide(tmp_path / "tiny.png")
    assert reader.level_count == 1 and reader.level_array(0).shape == (23, 37, 3)
    assert reader.level_array(0).numblocks == (1, 1, 1)
    region = reader.read_region((-5, -5), 0, (50, 40))
    assert (region[:5] == 255).all() and (region[:, 42:] == 255).all()
    np.testing.assert_array_equal(region[5:28, 5:42], image)
    assert reader.thumbnail(16).shape == (10, 16, 3)


# ---------------------------------------------------------------------- patch folders
@pytest.fixture
def patch_folder(tmp_path):
    folder = tmp_path / "patches"
    folder.mkdir()
    sizes = [(40, 30), (50, 20), (30, 45), (20, 20), (50, 45)]  # (width, height)
    patches = {}
    for index, (w, h) in enumerate(sizes):
        patch = rgb_image(h, w, seed=10 + index)
        name = f"p{index:02d}.png"
        Image.fromarray(patch).save(folder / name)
        patches[name] = patch
    (folder / "notes.txt").write_text("not an image")
    return folder, patches


def test_patch_folder_mosaic_layout(patch_folder):
    folder, patches = patch_folder
    reader = open_slide(folder)
    assert isinstance(reader, PatchFolderReader)
    assert reader.patch_names == sorted(patches)
    assert reader.columns == 3 and reader.rows == 2 and reader.cell_size == (50, 45)
    assert reader.dimensions == (150, 90)
    assert reader.patch_boxes == [
        (0, 0, 40, 30), (50, 0, 50, 20), (100, 0, 30, 45), (0, 45, 20, 20), (50, 45, 50, 45),
    ]  # fmt: skip
    mosaic = reader.level_array(0).compute()
    for name, (x, y, w, h) in zip(reader.patch_names, reader.patch_boxes):
        np.testing.assert_array_equal(mosaic[y : y + h, x : x + w], patches[name])
    assert (mosaic[30:45, 0:50] == 255).all()  # padding under p00
    assert (mosaic[45:, 100:] == 255).all()  # empty last cell
    assert reader.patch_at(10, 10) == 0 and reader.patch_at(60, 50) == 4
    assert reader.patch_at(45, 10) is None and reader.patch_at(120, 60) is None


def test_patch_folder_is_lazy(patch_folder):
    folder, patches = patch_folder
    reader = PatchFolderReader(folder, cache_size=2)
    assert len(reader._cache) == 0
    np.testing.assert_array_equal(reader.read_region((5, 5), 0, (10, 10)), patches["p00.png"][5:15, 5:15])
    assert list(reader._cache) == [0]
    reader.read_region((0, 0), 0, (150, 90))
    assert len(reader._cache) == 2


# ---------------------------------------------------------------------- memory
def test_array_reader_levels_and_lazy_mean():
    image = rgb_image(2500, 3000, seed=8)
    reader = ArrayReader(image, mpp=0.25, tile=256, levels=[halve(image)])
    assert reader.native_dimensions == [(3000, 2500), (1500, 1250)]
    assert reader.level_dimensions[-1] == (750, 625)
    assert reader.level_mpp(2) == pytest.approx((1.0, 1.0))
    lazy = reader.level_array(2)[:8, :8].compute().astype(np.float32)
    expected = halve(image)[:16, :16].astype(np.float32).reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(lazy, expected, atol=0.51)
    grey = ArrayReader(np.zeros((10, 10), np.uint16) + 65535)
    assert (grey.read_level(0, 0, 0, 10, 10) == 255).all()


def test_concurrent_reads_are_consistent(image_1000x1500, tmp_path):
    path = tmp_path / "threads.tif"
    tifffile.imwrite(path, image_1000x1500, tile=(64, 64), compression="zlib", photometric="rgb")
    reader = open_slide(path)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(20):
            x, y = int(rng.integers(0, 1400)), int(rng.integers(0, 900))
            try:
                np.testing.assert_array_equal(
                    reader.read_level(0, x, y, 100, 100), image_1000x1500[y : y + 100, x : x + 100]
                )
            except AssertionError as error:  # collected for the main thread
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(reader.level_array(0).compute(), image_1000x1500)


def test_opening_reads_no_level(monkeypatch, image_1000x1500, tmp_path):
    path = tmp_path / "lazy.tif"
    tifffile.imwrite(path, image_1000x1500, tile=(128, 128), photometric="rgb")
    calls = []
    original = TiffReader._read_native
    monkeypatch.setattr(
        TiffReader, "_read_native", lambda self, *a: calls.append(a) or original(self, *a)
    )
    reader = open_slide(path)
    reader.levels()
    assert calls == []
    reader.level_array(0)[:10, :10].compute()
    # dask fuses the slice into the chunk's read: exactly the window is read.
    assert len(calls) == 1 and calls[0][3:] == (10, 10)
