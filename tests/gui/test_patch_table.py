"""The patch table of the Inference dock: filled after a run on a folder, sortable, click to go."""

from __future__ import annotations

import numpy as np
import pytest
from infer_models import BlockColourModel
from PIL import Image
from qtpy.QtCore import Qt

from napari_wsl_al._qt.infer_widget import InferenceWidget
from napari_wsl_al._qt.patch_table import PatchTable, _camera
from napari_wsl_al._reader import layer_data
from napari_wsl_al.core.infer.patches import PatchPrediction
from napari_wsl_al.core.io.image_backend import PatchFolderReader

pytestmark = pytest.mark.gui

#: Colour and (width, height) of each patch: red-dominant patches are "red", the others "blue".
PATCHES = [((220, 40, 60), (48, 40)), ((40, 60, 220), (48, 40)), ((200, 30, 120), (40, 32)),
           ((60, 90, 230), (24, 40))]


def red_blue_model():
    """CAMs = red and blue block means at stride 8, foreground = red; image logits 16 times the
    mean red and blue, so p(red) = sigmoid(16 (mean red - mean blue))."""
    return BlockColourModel(("red", "blue"), channels=(0, 2), gain=16.0, output_stride=8)


@pytest.fixture
def folder_in_viewer(make_napari_viewer, tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    for index, (colour, (width, height)) in enumerate(PATCHES):
        image = np.empty((height, width, 3), np.uint8)
        image[:] = colour
        Image.fromarray(image).save(folder / f"p{index}.png")
    viewer = make_napari_viewer()
    reader = PatchFolderReader(folder, mpp=0.5)
    data, kwargs, _ = layer_data(reader)[0]
    layer = viewer.add_image(data, **kwargs)
    return viewer, reader, layer


def run_widget(viewer, qtbot):
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_factory = red_blue_model
    widget.tissue_threshold = 0.0
    widget.device_combo.setCurrentText("cpu")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    return widget


def column(table, index):
    return [table.table.item(row, index).text() for row in range(table.table.rowCount())]


def test_a_run_on_a_folder_fills_the_table_and_a_click_shows_the_patch(folder_in_viewer, qtbot):
    viewer, reader, _ = folder_in_viewer
    widget = run_widget(viewer, qtbot)
    table = widget.patch_table
    assert not table.isHidden()
    assert column(table, 0) == ["p0.png", "p1.png", "p2.png", "p3.png"]
    assert column(table, 1) == ["red", "blue", "red", "blue"]
    assert table.summary.text() == "4 patches: 2 red, 2 blue"
    # Confidence = sigmoid(16 (mean red - mean blue)) = softmax of (d, -d), d = 8 (red - blue),
    # for patch p2:
    d = 8 * (200 - 120) / 255
    expected = 1 / (1 + np.exp(-2 * d))
    assert column(table, 2)[2] == f"{expected:.2f}"
    # Sorting by confidence is numeric; the rows keep their patches.
    table.table.sortItems(2, Qt.AscendingOrder)
    values = [float(v) for v in column(table, 2)]
    assert values == sorted(values)
    row = column(table, 0).index("p3.png")
    table.table.cellClicked.emit(row, 0)
    # p3 is 24 x 40 pixels at (48, 40) (cells of 48 x 40, two columns), 0.5 um per pixel.
    x, y, w, h = reader.patch_boxes[3]
    assert (x, y, w, h) == (48, 40, 24, 40)
    camera = _camera(viewer)
    np.testing.assert_allclose(camera.center[-2:], (0.5 * (y + (h - 1) / 2),
                                                    0.5 * (x + (w - 1) / 2)))
    view_h, view_w = table.view_px()
    assert camera.zoom == pytest.approx(0.9 * min(view_h / (0.5 * h), view_w / (0.5 * w)))


def test_reopened_maps_fill_the_table_and_a_slide_hides_it(folder_in_viewer, qtbot):
    viewer, _, _ = folder_in_viewer
    widget = run_widget(viewer, qtbot)
    widget.patch_table.set_patches([])
    assert widget.patch_table.isHidden()
    widget.run()  # finished maps: nothing computed, the table comes from the store
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.patch_table.table.rowCount() == 4 and not widget.patch_table.isHidden()
    widget.patch_table.update_from(None, None, None)
    assert widget.patch_table.isHidden()
    widget.patch_table.update_from(None, widget.session.store, None)  # a cancelled run's
    assert widget.patch_table.table.rowCount() == 4


def test_errors_in_the_table_become_notifications(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    shown = []
    monkeypatch.setattr("napari_wsl_al._qt.patch_table.show_error", shown.append)
    table = PatchTable(viewer)
    patch = PatchPrediction(0, "gone.png", (0, 0, 10, 10), ("a", "b"), (0.3, 0.7))
    table.set_patches([patch], layer=None)  # the folder's layer was closed
    table.table.cellClicked.emit(0, 0)
    assert shown and "no longer in the viewer" in shown[0]

    class Broken:
        def exists(self):
            raise OSError("disk gone")

    table.update_from(None, Broken(), None)
    assert "disk gone" in shown[-1]
