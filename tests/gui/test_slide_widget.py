"""The Slide dock widget on the real sample slide and on an image without a known resolution."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.io import imsave

from napari_wsl_al._qt.slide_widget import SlideWidget, slide_layers

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_widget_describes_the_real_slide(viewer, cmu1_path):
    viewer.open(str(cmu1_path), plugin="napari-wsl-al")
    widget = SlideWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert [layer.name for layer in slide_layers(viewer)] == ["CMU-1-Small-Region"]
    assert widget.layer_combo.currentText() == "CMU-1-Small-Region"
    text = widget.info.text()
    assert "2,220 x 2,967" in text and "0.499" in text and "20x" in text
    associated = [widget.associated_combo.itemText(i) for i in range(widget.associated_combo.count())]
    assert {"label", "macro", "thumbnail"} <= set(associated)
    assert not widget.preview.pixmap().isNull()


def test_tissue_mask_is_added_in_microns(viewer, cmu1_path, qtbot):
    viewer.open(str(cmu1_path), plugin="napari-wsl-al")
    widget = SlideWidget(viewer)
    widget.show_tissue_mask()
    qtbot.waitUntil(lambda: "CMU-1-Small-Region tissue" in viewer.layers, timeout=30000)
    qtbot.waitUntil(lambda: widget.tissue_button.isEnabled(), timeout=5000)
    tissue = viewer.layers["CMU-1-Small-Region tissue"]
    slide = viewer.layers["CMU-1-Small-Region"]
    # The mask covers the same extent in microns as the slide.
    slide_extent = np.asarray(slide.data[0].shape[:2]) * np.asarray(slide.scale)
    mask_extent = np.asarray(tissue.data.shape) * np.asarray(tissue.scale)
    np.testing.assert_allclose(mask_extent, slide_extent, rtol=0.02)
    assert 0.05 < tissue.data.mean() < 0.95


def test_resolution_can_be_set_when_unknown(viewer, tmp_path):
    image = np.full((600, 800, 3), 230, np.uint8)
    image[100:500, 200:600] = (180, 60, 150)
    path = tmp_path / "patch.png"
    imsave(path, image, check_contrast=False)
    viewer.open(str(path), plugin="napari-wsl-al")
    widget = SlideWidget(viewer)
    assert "unknown" in widget.info.text()
    widget.mpp_spin.setValue(0.25)
    widget.mpp_button.click()
    layer = viewer.layers["patch"]
    np.testing.assert_allclose(layer.scale, (0.25, 0.25))
    assert str(layer.units[0]) in ("micrometer", "µm", "um")
    assert layer.metadata["slide"]["mpp"] == [0.25, 0.25]
    assert "0.25" in widget.info.text()


def test_widget_follows_layers(viewer, cmu1_path):
    widget = SlideWidget(viewer)
    assert not widget.tissue_button.isEnabled()
    viewer.open(str(cmu1_path), plugin="napari-wsl-al")
    assert widget.tissue_button.isEnabled()
    viewer.layers.clear()
    assert widget.layer_combo.count() == 0
    assert not widget.tissue_button.isEnabled()


def test_other_layers_do_not_make_the_widget_read_the_slide_again(viewer, cmu1_path,
                                                                  monkeypatch):
    viewer.open(str(cmu1_path), plugin="napari-wsl-al")
    widget = SlideWidget(viewer)
    reader = widget.reader
    reads = []
    original = reader.read_associated
    monkeypatch.setattr(reader, "read_associated", lambda name: reads.append(name) or original(name))
    viewer.add_image(np.zeros((8, 8)), name="a map")
    viewer.layers.remove("a map")
    assert reads == [] and widget.layer_combo.currentText() == "CMU-1-Small-Region"
    assert not widget.preview.pixmap().isNull()
