"""Bad input to open_slide: missing, empty, truncated, renamed, unreadable and unsupported files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_wsl_al.core.errors import (
    CorruptSlideError,
    SlideError,
    SlideNotFoundError,
    SlidePermissionError,
    UnsupportedFormatError,
)
from napari_wsl_al.core.io import ArrayReader, can_open, open_slide

REPO = Path(__file__).resolve().parents[2]
REAL_SVS = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
needs_real = pytest.mark.skipif(
    not REAL_SVS.exists(), reason=f"real test data not present at {REAL_SVS} (CI has it)"
)


def assert_names_path_and_hint(error: SlideError, path: Path) -> None:
    assert error.path == path
    assert str(path) in str(error)
    assert error.hint


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere.svs"
    with pytest.raises(SlideNotFoundError) as info:
        open_slide(path)
    assert isinstance(info.value, FileNotFoundError)
    assert_names_path_and_hint(info.value, path)
    assert not can_open(path)


@needs_real
@pytest.mark.parametrize("keep", [1000, 500_000, 1_277_000, 1_900_000])
def test_truncated_svs(tmp_path, keep):
    path = tmp_path / "truncated.svs"
    path.write_bytes(REAL_SVS.read_bytes()[:keep])
    with pytest.raises(CorruptSlideError) as info:
        reader = open_slide(path)
        reader.level_array(0).compute()  # damage may only show when tiles are decoded
    assert_names_path_and_hint(info.value, path)


def test_random_bytes_svs(tmp_path):
    path = tmp_path / "random.svs"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(CorruptSlideError) as info:
        open_slide(path)
    assert_names_path_and_hint(info.value, path)
    assert not can_open(path)


def test_text_file_named_tif(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("these are not pixels\n" * 20)
    with pytest.raises(CorruptSlideError, match="named .tif") as info:
        open_slide(path)
    assert_names_path_and_hint(info.value, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(CorruptSlideError, match="empty") as info:
        open_slide(path)
    assert_names_path_and_hint(info.value, path)
    assert not can_open(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user (root?) who can read a chmod-000 file")
        with pytest.raises(SlidePermissionError) as info:
            open_slide(path)
        assert isinstance(info.value, PermissionError)
        assert_names_path_and_hint(info.value, path)
        assert not can_open(path)
    finally:
        path.chmod(0o644)


def test_unknown_format_lists_supported(tmp_path):
    path = tmp_path / "data.xyz"
    path.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(UnsupportedFormatError) as info:
        open_slide(path)
    assert_names_path_and_hint(info.value, path)
    assert "OME-Zarr" in info.value.hint and ".svs" in info.value.hint


def test_truncated_png(tmp_path):
    from PIL import Image

    path = tmp_path / "cut.png"
    Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (200, 200, 3), np.uint8)
    ).save(path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CorruptSlideError) as info:
        open_slide(path)
    assert_names_path_and_hint(info.value, path)


def test_truncated_tiled_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    image = np.random.default_rng(2).integers(0, 256, (512, 512, 3), np.uint8)
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib", photometric="rgb")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptSlideError, match="truncated") as info:
        open_slide(path)
    assert_names_path_and_hint(info.value, path)


def test_damaged_tile_fails_on_read(tmp_path):
    path = tmp_path / "damaged.tif"
    image = np.random.default_rng(2).integers(0, 256, (512, 512, 3), np.uint8)
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[5]
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    reader = open_slide(path)  # the directory is intact: opening works
    with pytest.raises(CorruptSlideError, match="reading level 0") as info:
        reader.level_array(0).compute()
    assert_names_path_and_hint(info.value, path)


def test_zarr_group_without_multiscales(tmp_path):
    path = tmp_path / "plain_group.zarr"
    group = zarr.open_group(path, mode="w")
    group.create_array("raw", shape=(10, 10), dtype="uint8")
    with pytest.raises(UnsupportedFormatError, match="multiscales") as info:
        open_slide(path)
    assert_names_path_and_hint(info.value, path)
    assert "raw" in info.value.hint


def test_empty_zarr_folder_and_folder_without_images(tmp_path):
    store = tmp_path / "empty.zarr"
    store.mkdir()
    with pytest.raises(UnsupportedFormatError) as info:
        open_slide(store)
    assert_names_path_and_hint(info.value, store)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "readme.txt").write_text("hi")
    with pytest.raises(UnsupportedFormatError) as info:
        open_slide(folder)
    assert_names_path_and_hint(info.value, folder)
    assert not can_open(folder)


def test_patch_folder_skips_broken_patch(tmp_path):
    from PIL import Image

    folder = tmp_path / "patches"
    folder.mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png")
    reader = open_slide(folder)
    assert reader.patch_names == ["a.png"] and reader.skipped == ["b.png"]


def test_wrong_backend_and_bad_backend_name(tmp_path):
    path = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(path)
    with pytest.raises((UnsupportedFormatError, CorruptSlideError)):
        open_slide(path, backend="openslide")
    with pytest.raises(ValueError, match="backend"):
        open_slide(path, backend="magic")


def test_closed_reader_and_unknown_mpp():
    reader = ArrayReader(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(SlideError, match="microns per pixel"):
        reader.read_region_mpp((0, 0), 1.0, (8, 8))
    reader.set_mpp(0.5)
    assert reader.read_region_mpp((0, 0), 1.0, (8, 8)).shape == (8, 8, 3)
    with pytest.raises(ValueError):
        reader.set_mpp(-1)
    reader.close()
    with pytest.raises(SlideError, match="closed"):
        reader.read_region((0, 0), 0, (8, 8))
