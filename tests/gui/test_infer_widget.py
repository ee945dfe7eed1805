"""The Inference dock widget: runs in a thread worker, adds aligned map layers, cancels, reports errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from napari_wsl_al._qt.infer_widget import InferenceWidget
from napari_wsl_al._reader import layer_data
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.models.base import WslModel

pytestmark = pytest.mark.gui


class TinyModel(WslModel):
    """Foreground where green is low (stained tissue); CAMs from red and green; optional delay."""

    classes = ("tumour", "normal")
    output_stride = 4
    delay = 0.0

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        pooled = nn.functional.avg_pool2d(x[:, :2], self.output_stride) * self.scale
        fg = torch.sigmoid(-4 * pooled[:, 1:2])
        return {"logits": pooled.mean(dim=(2, 3)), "cams": pooled, "fg": fg}


class SlowModel(TinyModel):
    delay = 0.2


def slide_image(height, width):
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.full((height, width, 3), 235, np.uint8)
    blob = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 3) ** 2
    image[blob] = (200, 60, 150)
    return image


@pytest.fixture
def viewer_with_slide(make_napari_viewer):
    viewer = make_napari_viewer()
    reader = ArrayReader(slide_image(384, 448), mpp=0.5, name="slide")
    data, kwargs, _ = layer_data(reader)[0]
    viewer.add_image(data, **kwargs)
    return viewer


def make_widget(viewer, factory):
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_factory = factory
    widget.tissue_threshold = 0.0
    widget.tile_spin.setValue(64)
    widget.batch_spin.setValue(4)
    widget.device_combo.setCurrentText("cpu")
    return widget


def test_run_adds_aligned_map_layers_and_an_outline(viewer_with_slide, qtbot, tmp_path):
    viewer = viewer_with_slide
    widget = make_widget(viewer, TinyModel)
    assert widget.slide_combo.currentText() == "slide"
    widget.project_edit.setText(str(tmp_path / "mystudy"))
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "tiles computed" in widget.status.text()
    # The maps are saved in the project, which was created with the model's classes.
    project = tmp_path / "mystudy.wslal"
    assert (project / "project.json").exists() and (project / "maps" / "slide.zarr").is_dir()
    assert widget.session.project.class_names == ("tumour", "normal")
    fg = viewer.layers["slide fg"]
    slide = viewer.layers["slide"]
    assert fg.multiscale
    np.testing.assert_allclose(fg.scale, (2.0, 2.0))  # stride 4 x 0.5 um
    np.testing.assert_allclose(fg.translate, (0.75, 0.75))
    np.testing.assert_allclose(slide.scale, (0.5, 0.5))
    assert fg.colormap.name == "green" and fg.blending == "additive"
    assert "slide cam tumour" in viewer.layers and "slide ovr_entropy_max" in viewer.layers
    cam = viewer.layers["slide cam tumour"]
    assert cam.colormap.name.startswith("inferno") and cam.colormap.colors[0][3] == 0
    values = np.asarray(fg.data[0])
    assert values.shape == (96, 112)
    # The pink blob (centre) is foreground, the glass corner is less so.
    assert values[48, 56] > values[2, 2]
    outline = viewer.layers["slide fg outline"]
    assert len(outline.data) >= 1
    before = [p.copy() for p in outline.data]
    widget.threshold_slider.setValue(90)
    widget.update_outline()
    assert len(outline.data) == 0 or any(
        a.shape != b.shape or not np.allclose(a, b) for a, b in zip(outline.data, before))


def test_cancel_stops_between_batches_and_resumes(viewer_with_slide, qtbot):
    viewer = viewer_with_slide
    widget = make_widget(viewer, SlowModel)
    widget.map_checks["uncertainty"].setChecked(False)
    widget.run()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0, timeout=60000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "cancelled" in widget.status.text()
    done = widget.session.store.done_bitmap()
    assert 0 < done.sum() < done.size
    widget.model_factory = TinyModel  # another model: recomputed from scratch
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.session.store.done_bitmap().all()


def test_errors_become_notifications(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    reader = ArrayReader(np.full((256, 256, 3), 250, np.uint8), mpp=0.5, name="glass")
    data, kwargs, _ = layer_data(reader)[0]
    viewer.add_image(data, **kwargs)
    shown = []
    monkeypatch.setattr("napari_wsl_al._qt.infer_widget.show_error", shown.append)
    widget = make_widget(viewer, TinyModel)
    widget.tissue_threshold = 0.05
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert shown and "tissue" in shown[0]


def test_inference_on_the_synthetic_slide_file(make_napari_viewer, qtbot, tmp_path):
    """The generator's pyramidal TIFF, opened by the plugin's reader, run from the widget."""
    from napari_wsl_al.core.data.synthetic import write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "synthetic.tif", 1536, 1024, mpp=0.5, seed=3)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-wsl-al")
    slide = viewer.layers["synthetic"]
    widget = make_widget(viewer, TinyModel)
    widget.tissue_threshold = 0.05
    widget.tile_spin.setValue(128)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert "tiles computed" in widget.status.text(), widget.status.text()
    fg = viewer.layers["synthetic fg"]
    # Maps sit on the slide in microns: same extent, pixel centres aligned.
    np.testing.assert_allclose(fg.scale, (2.0, 2.0))  # stride 4 x 0.5 um
    np.testing.assert_allclose(fg.translate, (0.75, 0.75))
    extent = np.asarray(fg.data[0].shape) * np.asarray(fg.scale)
    np.testing.assert_allclose(extent, np.asarray(slide.data[0].shape[:2]) * slide.scale, atol=2)
    values = np.asarray(fg.data[0])
    assert values.max() > 0.5 and values.min() == 0.0  # tissue found, glass left out
