"""The Inference dock widget: runs in a thread worker, adds aligned map layers, cancels, reports errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from napari_wsl_al._qt.infer_widget import MAP_LAYER_DELAY_MS, InferenceWidget
from napari_wsl_al._reader import layer_data
from napari_wsl_al.core.infer.session import MapLevel
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


def wait_for_layers(widget, qtbot, timeout=60000):
    """Until the run ended and its layers (added one per event-loop turn) are all there."""
    qtbot.waitUntil(lambda: widget.worker is None and not widget.adding_layers, timeout=timeout)


def test_run_adds_aligned_map_layers_and_an_outline(viewer_with_slide, qtbot, tmp_path):
    viewer = viewer_with_slide
    widget = make_widget(viewer, TinyModel)
    assert widget.slide_combo.currentText() == "slide"
    widget.project_edit.setText(str(tmp_path / "mystudy"))
    widget.run()
    wait_for_layers(widget, qtbot)
    assert "tiles computed" in widget.status.text()
    # The maps are saved in the project, which was created with the model's classes.
    project = tmp_path / "mystudy.wslal"
    assert (project / "project.json").exists() and (project / "maps" / "slide.zarr").is_dir()
    assert widget.session.project.class_names == ("tumour", "normal")
    # The foreground's layer is made when its box in the legend is ticked.
    fg_key = (str(project / "maps" / "slide.zarr"), "fg", None)
    widget.legend.boxes[fg_key].setChecked(True)
    wait_for_layers(widget, qtbot)
    fg = viewer.layers["slide · foreground"]
    slide = viewer.layers["slide"]
    assert fg.multiscale
    np.testing.assert_allclose(fg.scale, (2.0, 2.0))  # stride 4 x 0.5 um
    np.testing.assert_allclose(fg.translate, (0.75, 0.75))
    np.testing.assert_allclose(slide.scale, (0.5, 0.5))
    assert fg.colormap.name == "green" and fg.blending == "additive" and fg.visible
    cam = viewer.layers["slide · P(normal)"]
    assert cam.colormap.name.startswith("turbo") and cam.colormap.colors[0][3] == 0
    values = np.asarray(fg.data[0])
    assert values.shape == (96, 112)
    # The pink blob (centre) is foreground, the glass corner is less so.
    assert values[48, 56] > values[2, 2]
    outline = viewer.layers["slide · outline"]
    assert outline.metadata["threshold"] == 0.5
    before = np.asarray(outline.data[0]).copy()
    assert before.sum() > 0
    widget.threshold_slider.setValue(90)
    widget.update_outline()
    qtbot.waitUntil(lambda: outline.metadata["threshold"] == 0.9, timeout=10000)
    assert not np.array_equal(np.asarray(outline.data[0]), before)


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
    wait_for_layers(widget, qtbot, timeout=120000)
    assert "tiles computed" in widget.status.text(), widget.status.text()
    widget.show_map(widget.run_map_key("fg"))
    wait_for_layers(widget, qtbot)
    fg = viewer.layers["synthetic · foreground"]
    # Maps sit on the slide in microns: same extent, pixel centres aligned.
    np.testing.assert_allclose(fg.scale, (2.0, 2.0))  # stride 4 x 0.5 um
    np.testing.assert_allclose(fg.translate, (0.75, 0.75))
    extent = np.asarray(fg.data[0].shape) * np.asarray(fg.scale)
    np.testing.assert_allclose(extent, np.asarray(slide.data[0].shape[:2]) * slide.scale, atol=2)
    values = np.asarray(fg.data[0])
    assert values.max() > 0.5 and values.min() == 0.0  # tissue found, glass left out


class ModelAt05(TinyModel):
    """A model trained at 0.5 µm/px: its resolution needs the slide's."""

    mpp = 0.5


def test_class_of_interest_first_no_colour_bars_and_a_legend(viewer_with_slide, qtbot):
    viewer = viewer_with_slide
    widget = make_widget(viewer, TinyModel)
    inserted = []
    viewer.layers.events.inserted.connect(lambda event: inserted.append(event.value.name))
    widget.run()
    wait_for_layers(widget, qtbot)
    # Two layers when the maps appear: the class of interest's CAM (the last class), made
    # while the run goes on, and the foreground's outline at its end; the other maps have none.
    assert inserted == ["slide · P(normal)", "slide · outline"]
    assert [layer.name for layer in widget.map_layers()] == ["slide · P(normal)"]
    cam = viewer.layers["slide · P(normal)"]
    assert cam.visible and cam.metadata["description"].startswith(
        "how strongly each spot looks like normal to the model")
    # No napari colour bar: the dock's legend gives each map's colour ramp, range and meaning.
    assert not any(layer.colorbar.visible for layer in viewer.layers)
    rows = {row["title"]: row for row in widget.legend.rows}
    assert list(rows) == ["P(tumour), P(normal)", "foreground", "uncertainty", "outline"]
    assert rows["P(tumour), P(normal)"]["description"].startswith("how strongly each spot looks like normal")
    assert (rows["uncertainty"]["low"], rows["uncertainty"]["high"]) == (0.0, pytest.approx(np.log(2)))
    # One box per layer, ticked for the layers shown.
    boxes = {box.text(): box for box in widget.legend.boxes.values()}
    assert list(boxes) == ["P(tumour)", "P(normal)", "foreground", "uncertainty", "outline"]
    assert [name for name, box in boxes.items() if box.isChecked()] == ["P(normal)", "outline"]
    # Ticking a map makes its layer once, shown, in a turn of its own; unticking hides it.
    boxes["uncertainty"].setChecked(True)
    assert "slide · uncertainty" not in viewer.layers  # not yet: its own event-loop turn
    wait_for_layers(widget, qtbot)
    uncertainty = viewer.layers["slide · uncertainty"]
    assert uncertainty.visible and not uncertainty.colorbar.visible
    boxes["uncertainty"].setChecked(False)
    assert not uncertainty.visible
    boxes["uncertainty"].setChecked(True)
    qtbot.wait(3 * MAP_LAYER_DELAY_MS)
    assert uncertainty.visible and viewer.layers["slide · uncertainty"] is uncertainty
    assert inserted.count("slide · uncertainty") == 1
    # The layer list's eye and the box agree; a removed layer is made again when ticked.
    uncertainty.visible = False
    assert not boxes["uncertainty"].isChecked()
    viewer.layers.remove(cam)
    assert not boxes["P(normal)"].isChecked()
    boxes["P(normal)"].setChecked(True)
    wait_for_layers(widget, qtbot)
    assert inserted.count("slide · P(normal)") == 2 and viewer.layers["slide · P(normal)"].visible
    outline = viewer.layers["slide · outline"]
    assert outline.visible
    names = [layer.name for layer in viewer.layers]
    assert names.index("slide · outline") == len(names) - 1  # above the maps
    # The outline raster is two pixels wide: no 3 x 3 block of it is full.
    raster = np.asarray(outline.data[0]).astype(bool)
    assert raster.any()
    full = np.ones_like(raster[2:, 2:])
    for dy in range(3):
        for dx in range(3):
            full &= raster[dy : raster.shape[0] - 2 + dy, dx : raster.shape[1] - 2 + dx]
    assert not full.any()


def test_the_project_can_choose_the_class_of_interest(viewer_with_slide, qtbot, tmp_path):
    from napari_wsl_al.core.project import Project

    project = Project.create(tmp_path / "chosen.wslal", classes=["tumour", "normal"])
    project.update_settings(class_of_interest="tumour")
    widget = make_widget(viewer_with_slide, TinyModel)
    widget.project_edit.setText(str(project.path))
    widget.run()
    wait_for_layers(widget, qtbot)
    assert [layer.name for layer in widget.map_layers() if layer.visible] == ["slide · P(tumour)"]


def test_tissue_threshold_field_reaches_the_config_and_the_run(make_napari_viewer, qtbot,
                                                                monkeypatch):
    viewer = make_napari_viewer()
    reader = ArrayReader(np.full((256, 256, 3), 250, np.uint8), mpp=0.5, name="glass")
    data, kwargs, _ = layer_data(reader)[0]
    viewer.add_image(data, **kwargs)
    shown = []
    monkeypatch.setattr("napari_wsl_al._qt.infer_widget.show_error", shown.append)
    widget = InferenceWidget(viewer)
    assert widget.tissue_spin.value() == 0.05  # InferenceConfig's default
    widget.model_factory = TinyModel
    widget.device_combo.setCurrentText("cpu")
    widget.tile_spin.setValue(64)
    widget.tissue_spin.setValue(0.3)
    assert widget.config().tissue_threshold == 0.3
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert len(shown) == 1 and "lower the tissue threshold" in shown[0] and "30%" in shown[0]
    # The message names the field to change: at 0, every tile is processed: 64-pixel tiles
    # overlapping by 16 start every 48 pixels, at 0, 48, ..., 192: 5 x 5 tiles.
    widget.tissue_spin.setValue(0.0)
    widget.run()
    wait_for_layers(widget, qtbot)
    assert len(shown) == 1 and "25 of 25 tiles computed" in widget.status.text()


def test_unknown_resolution_is_warned_in_the_widget_and_as_a_notification(make_napari_viewer,
                                                                          qtbot, monkeypatch):
    viewer = make_napari_viewer()
    reader = ArrayReader(slide_image(256, 256), name="nompp")
    data, kwargs, _ = layer_data(reader)[0]
    viewer.add_image(data, **kwargs)
    warned = []
    monkeypatch.setattr("napari_wsl_al._qt.infer_widget.show_warning", warned.append)
    widget = make_widget(viewer, ModelAt05)
    assert not widget.warning.isHidden()
    assert "nompp has no resolution" in widget.warning.text()
    widget.resolution_combo.setCurrentText("Slide level")
    assert widget.warning.isHidden()
    widget.resolution_combo.setCurrentText("Model's resolution")
    widget.run()
    wait_for_layers(widget, qtbot)
    assert len(warned) == 1
    assert "model's resolution (0.5 µm/px) cannot be applied" in warned[0]
    assert widget.warning.text() == warned[0] and not widget.warning.isHidden()
    assert "tiles computed" in widget.status.text()
    # A slide with a resolution: no warning.
    reader.set_mpp(0.5)
    widget._update_resolution_warning()
    assert widget.warning.isHidden()


def test_progress_says_what_happens_now(viewer_with_slide, qtbot):
    widget = make_widget(viewer_with_slide, TinyModel)
    widget.tissue_threshold = 0.05
    messages = []
    show = widget._on_progress

    def record(progress):
        messages.append(progress.message)
        show(progress)

    widget._on_progress = record
    widget.run()
    wait_for_layers(widget, qtbot)
    total = widget.session.store.done_bitmap().sum()
    assert total > 1
    assert messages[:3] == ["loading the model…", "detecting tissue…",
                            "running the model on the first tiles…"]
    assert messages[-1] == f"{total} of {total} tiles"
    assert widget.status.text().startswith(f"{total} of {total} tiles computed in ")
    # Again: the finished maps are reused, and the widget says so.
    messages.clear()
    widget.run()
    wait_for_layers(widget, qtbot)
    assert messages[-1] == f"reused finished maps: {total} of {total} tiles"
    assert widget.status.text().startswith(
        f"reused finished maps: {total} of {total} tiles, nothing to compute")


def test_refreshes_keep_the_layers_and_read_what_was_written(viewer_with_slide, qtbot, monkeypatch):
    viewer = viewer_with_slide
    widget = make_widget(viewer, SlowModel)
    widget.map_checks["uncertainty"].setChecked(False)
    inserted, refreshed = [], []
    viewer.layers.events.inserted.connect(lambda event: inserted.append(event.value.name))

    def follow(event):
        if event.value.name == "slide · P(normal)":
            event.value.events.data.connect(refreshed.append)

    viewer.layers.events.inserted.connect(follow)
    store_reads = []
    read = MapLevel.__getitem__

    def recorded(level, key):
        if not level.in_memory:
            store_reads.append(threading.current_thread() is threading.main_thread())
        return read(level, key)

    monkeypatch.setattr(MapLevel, "__getitem__", recorded)
    widget.run()
    wait_for_layers(widget, qtbot, timeout=120000)
    # 72 tiles at 0.2 s a batch of 4: several refreshes of the same layer, none of which
    # added a layer; the layer reads copies of the map levels made by the worker thread (they
    # are small), never the store on the UI thread, where a read waits behind the writes.
    assert inserted == ["slide · P(normal)", "slide · outline"]
    assert len(refreshed) >= 2
    cam = viewer.layers["slide · P(normal)"]
    assert all(isinstance(level, MapLevel) and level.in_memory for level in cam.data)
    assert store_reads and not any(store_reads)  # all in the worker threads
    monkeypatch.setattr(MapLevel, "__getitem__", read)
    # Values written into the store after the run show at the next refresh, same layer.
    centre = (192 * 0.5, 224 * 0.5)
    assert cam.get_value(centre, world=True)[1] != 0.25
    group = zarr.open_group(str(widget.session.store.path), mode="r+", zarr_format=2)
    group["cam/0"][1] = np.float32(0.25)
    widget.refresh_layers()
    assert viewer.layers["slide · P(normal)"] is cam and inserted.count("slide · P(normal)") == 1
    assert cam.get_value(centre, world=True)[1] == 0.25


def test_added_map_layers_leave_the_selection_alone(viewer_with_slide, qtbot):
    """napari selects each layer it adds: the dock adds its maps and outline without it, so
    the layer the user works on stays selected (and its controls stay in place)."""
    viewer = viewer_with_slide
    slide = viewer.layers["slide"]
    viewer.layers.selection.active = slide
    selected = []
    viewer.layers.selection.events.active.connect(lambda event: selected.append(event.value))
    widget = make_widget(viewer, TinyModel)
    widget.run()
    wait_for_layers(widget, qtbot)
    widget.show_map(widget.run_map_key("uncertainty/ovr_entropy_max"))
    wait_for_layers(widget, qtbot)
    assert "slide · uncertainty" in viewer.layers and "slide · outline" in viewer.layers
    assert viewer.layers.selection.active is slide and set(viewer.layers.selection) == {slide}
    assert selected == []  # never switched, not even for a moment
    assert viewer.layers._activate_on_insert  # napari's own adds select as before


def test_keep_selection_restores_the_active_layer_without_napari_switch():
    from napari_wsl_al._qt.infer_widget import keep_selection

    class Selection:
        active = "slide"

    class Layers(list):
        selection = Selection()

    layers = Layers(["slide"])
    with keep_selection(layers):
        layers.append("map")
        layers.selection.active = "map"  # what napari does on insert
    assert layers.selection.active == "slide"


def test_the_run_waits_while_napari_makes_the_first_map_layer(viewer_with_slide, qtbot):
    """napari makes and paints a layer on the UI thread; inference beside it would compete for
    the cores, so the run waits until the first map layer was added (and painted)."""
    import napari_wsl_al._qt.infer_widget as module

    viewer = viewer_with_slide
    events = []

    class Recorded(threading.Event):
        def wait(self, timeout=None):
            events.append(("wait", timeout, threading.current_thread() is threading.main_thread()))
            return super().wait(timeout)

        def set(self):
            events.append(("set", [layer.name for layer in viewer.layers]))
            super().set()

    widget = make_widget(viewer, SlowModel)
    widget._first_layer_shown = Recorded()
    widget.map_checks["uncertainty"].setChecked(False)
    widget.run()
    wait_for_layers(widget, qtbot, timeout=120000)
    waits = [event for event in events if event[0] == "wait"]
    assert waits == [("wait", module.LAYER_PAUSE_S, False)]  # once, in the worker thread
    sets = [event for event in events if event[0] == "set"]
    assert sets and "slide · P(normal)" in sets[0][1]  # released once the layer is there
    assert events.index(waits[0]) < events.index(sets[0])


def test_a_folder_given_its_resolution_keeps_it_in_the_project(make_napari_viewer, qtbot,
                                                                tmp_path):
    """The µm / pixel given to a folder of patches in the Slide dock is recorded by the run's
    project; the folder opened again in a later session is read (and shown) at it."""
    from PIL import Image

    from napari_wsl_al._qt.slide_widget import SlideWidget
    from napari_wsl_al.core.project import Project

    folder = tmp_path / "patches"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(slide_image(128, 128)).save(folder / f"p{i}.png")
    study = tmp_path / "study.wslal"
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin="napari-wsl-al")
    slides = SlideWidget(viewer)
    slides.mpp_spin.setValue(0.25)
    slides.set_resolution()
    widget = make_widget(viewer, ModelAt05)
    widget.project_edit.setText(str(study))
    assert widget.warning.isHidden()
    widget.run()
    wait_for_layers(widget, qtbot)
    assert "2 of 2 patches computed" in widget.status.text(), widget.status.text()
    assert Project.open(study).slide_mpp("patches") == 0.25
    viewer.close()

    again = make_napari_viewer()
    again.open(str(folder), plugin="napari-wsl-al")
    layer = again.layers["patches"]
    assert layer.metadata["reader"].mpp is None and tuple(layer.scale) == (1.0, 1.0)
    widget = make_widget(again, ModelAt05)
    widget.project_edit.setText(str(study))
    widget.run()
    wait_for_layers(widget, qtbot)
    assert layer.metadata["reader"].mpp == (0.25, 0.25)
    np.testing.assert_allclose(layer.scale, (0.25, 0.25))
    assert widget.warning.isHidden()
    assert "reused finished maps: 2 of 2 patches" in widget.status.text(), widget.status.text()
