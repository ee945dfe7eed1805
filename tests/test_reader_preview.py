"""The in-memory preview of a slide's computed levels: the same pixels as reading the levels,
filled in the background, read directly until then."""

from __future__ import annotations

import numpy as np
from PIL import Image

from napari_wsl_al._reader import PLACEHOLDER_VALUE, PyramidPreview, layer_data, preview_levels
from napari_wsl_al.core.io import ArrayReader, open_slide


def test_computed_levels_are_box_means_worked_out_by_hand():
    # A 2056 x 4 image whose first rows hold 10 * (4 * y + x) in red; its 2 x 2 (level 1) and
    # 4 x 4 (level 2) box means are whole numbers.
    image = np.zeros((2056, 4, 3), np.uint8)
    image[:4, :, 0] = np.arange(16).reshape(4, 4) * 10
    reader = ArrayReader(image, tile=64)
    assert reader.level_count == 3  # 2056 -> 1028 -> 514 rows
    preview = PyramidPreview(reader, [1, 2])
    preview.start()
    assert preview.wait(30) and preview.error is None
    level1 = preview.arrays[1][:2, :, 0]
    # Means of (0, 10, 40, 50), (20, 30, 60, 70), (80, 90, 120, 130), (100, 110, 140, 150).
    np.testing.assert_array_equal(level1, [[25, 45], [105, 125]])
    # Level 2: one 4 x 4 box of level 0: the mean of 0, 10, ..., 150 = 75.
    assert preview.arrays[2][0, 0, 0] == 75
    assert preview.filled_rows == {1: 1028, 2: 514}


def test_preview_equals_direct_reads_of_a_patch_folder(tmp_path):
    folder = tmp_path / "patches"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(7):
        patch = rng.integers(0, 255, (310 + 10 * index, 420, 3), dtype=np.uint8)
        Image.fromarray(patch).save(folder / f"p{index}.png")
    reader = open_slide(folder)
    cached = [level for level in range(reader.level_count) if not reader.is_native(level)]
    assert cached == [1]  # 3 x 3 cells of 420 x 370: 1260 x 1110, then 630 x 555
    preview = PyramidPreview(reader, cached)
    # Strips are whole rows of cells (370 rows), so that no patch is decoded twice.
    assert preview.strip_rows() == 370
    preview.start()
    assert preview.wait(60) and preview.error is None
    expected = reader.read_level(1, 0, 0, *reader.level_dimensions[1])
    np.testing.assert_array_equal(preview.arrays[1], expected)
    np.testing.assert_array_equal(np.asarray(preview.view(1)), expected)


def test_unfilled_rows_are_read_directly_or_shown_grey():
    image = np.random.default_rng(2).integers(0, 255, (3000, 600, 3), dtype=np.uint8)
    reader = ArrayReader(image, tile=100)
    preview = PyramidPreview(reader, [1, 2])  # not started: nothing filled
    view = preview.view(1)
    np.testing.assert_array_equal(view[10:20, 5:50], reader.read_level(1, 5, 10, 45, 10))
    preview.placeholders = True  # inside napari's GUI: grey until filled, then redrawn
    assert (view[10:20, 5:50] == PLACEHOLDER_VALUE).all()


def test_layer_data_keeps_small_computed_levels_in_memory(cmu1_path):
    data, kwargs, _ = layer_data(open_slide(cmu1_path))[0]
    preview = kwargs["metadata"]["preview"]
    assert preview.levels == [1, 2]  # CMU-1 has one level in the file
    assert preview.wait(60)
    reader = kwargs["metadata"]["reader"]
    np.testing.assert_array_equal(np.asarray(data[2]), reader.read_level(2, 0, 0, 555, 741))
    # A budget keeps the smallest levels first.
    assert preview_levels(reader, [0, 1, 2], max_bytes=555 * 741 * 3) == [2]
    assert preview_levels(reader, [0, 1, 2], max_bytes=100) == []
