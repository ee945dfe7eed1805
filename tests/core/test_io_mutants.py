"""Reader behaviours that mutation testing of ``core/io`` found untested."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from infer_models import gradient_image
from PIL import Image

from napari_wsl_al.core.errors import CorruptSlideError, SlideError
from napari_wsl_al.core.io import image_backend
from napari_wsl_al.core.io._convert import to_rgb_uint8
from napari_wsl_al.core.io.base import resize_rgb
from napari_wsl_al.core.io.image_backend import PatchFolderReader, read_image_file
from napari_wsl_al.core.io.memory_backend import ArrayReader


def test_read_region_mpp_reads_a_window_scaled_in_both_directions():
    reader = ArrayReader(gradient_image(200, 300), mpp=0.5)
    out = reader.read_region_mpp((10, 20), 1.0, (60, 30))  # (width, height), half resolution
    assert out.shape == (30, 60, 3)
    expected = resize_rgb(reader.read_region((10, 20), 0, (120, 60)), (60, 30))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mpp", [(0.0, 0.5), (0.5, 0.0), (-1.0, 0.5), (float("inf"), 0.5)])
def test_set_mpp_refuses_a_zero_negative_or_infinite_axis(mpp):
    reader = ArrayReader(gradient_image(16, 16))
    with pytest.raises(ValueError, match="must be positive numbers"):
        reader.set_mpp(mpp)
    assert reader.mpp is None


def test_level_view_names_the_levels_there_are():
    reader = ArrayReader(gradient_image(64, 64), name="tiny")
    with pytest.raises(ValueError, match=rf"tiny has levels 0\.\.{reader.level_count - 1}, not 9"):
        reader.level_view(9)


def test_a_closed_reader_says_so():
    reader = ArrayReader(gradient_image(32, 32))
    reader.close()
    with pytest.raises(SlideError, match="the slide was closed"):
        reader.read_region((0, 0), 0, (4, 4))


def test_read_image_file_applies_the_value_range(tmp_path):
    values = np.array([[0, 500, 1000, 4000]], np.uint16).repeat(4, axis=0)
    path = tmp_path / "grey16.tif"
    tifffile.imwrite(path, values)
    ranged = read_image_file(path, (0, 1000))
    np.testing.assert_array_equal(ranged, to_rgb_uint8(values, (0, 1000)))
    assert ranged[0, 2, 0] == 255 and ranged[0, 1, 0] in (127, 128)
    assert not np.array_equal(ranged, read_image_file(path))


def test_a_patch_folder_is_named_after_its_folder_and_keeps_the_newest_patches(tmp_path,
                                                                               monkeypatch):
    folder = tmp_path / "biopsy_7"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * index, np.uint8)).save(folder / f"p{index}.png")
    reader = PatchFolderReader(folder, cache_size=2)
    assert reader.name == "biopsy_7"
    decoded = []
    original = image_backend.read_image_file
    monkeypatch.setattr(image_backend, "read_image_file",
                        lambda path, *a: decoded.append(path.name) or original(path, *a))
    for index in (0, 1, 2, 2, 1, 0):
        reader.read_patch(index)
    # Least recently used out: 2 and 1 stay cached after 0, 1, 2; 0 is decoded again.
    assert decoded == ["p0.png", "p1.png", "p2.png", "p0.png"]


def test_a_patch_that_changed_size_says_to_reopen_the_folder(tmp_path):
    folder = tmp_path / "patches"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    reader = PatchFolderReader(folder)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(folder / "a.png")
    with pytest.raises(CorruptSlideError, match="reopen the folder"):
        reader.read_patch(0)
