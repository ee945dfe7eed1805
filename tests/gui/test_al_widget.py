"""The Active learning dock: Suggest, key-press labels, undo, a round, and a reopened project."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
from napari.utils.key_bindings import KeyBinding, KeymapHandler

from napari_wsl_al._qt.al_widget import (
    CURRENT_COLOUR,
    LABELS_LAYER,
    SUGGESTIONS_LAYER,
    ActiveLearningWidget,
    format_seconds,
    slide_layers,
    viewer_camera,
)
from napari_wsl_al.core.al import rounds
from napari_wsl_al.core.al.labels import LabelStore
from napari_wsl_al.core.al.rounds import ALSettings
from napari_wsl_al.core.al.superpixels import SuperpixelConfig
from napari_wsl_al.core.al.train import RegionTrainConfig
from napari_wsl_al.core.infer.store import MapStore
from napari_wsl_al.core.project import Project

pytestmark = pytest.mark.gui

#: Where the test leaves its screenshot: ``docs/al_widget.png`` only when asked
#: (``NAPARI_WSL_AL_SCREENSHOTS=1``), so that a test run never changes tracked files.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "al_widget.png"

SETTINGS = ALSettings(
    n_suggestions=4,
    superpixels=SuperpixelConfig(region_px=32),
    train=RegionTrainConfig(steps=1, batch_size=2, crop_size=64),
    tile_px=256,
    device="cpu",
)


@pytest.fixture
def slide_path(small_synthetic_slide):
    return small_synthetic_slide


@pytest.fixture
def project(tmp_path, slide_path):
    """The widgets' default project (the conftest points it at tmp_path/study.wslal)."""
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    project.add_slide(slide_path)
    SETTINGS.save_to(project)
    return project


def press(viewer, key):
    """A key press dispatched as napari does: the active layer's keymaps, then the viewer's."""
    handler = KeymapHandler()
    active = viewer.layers.selection.active
    handler.keymap_providers = [viewer] if active is None else [active, viewer]
    assert handler.press_key(key), f"nothing bound to {key}"
    handler.release_key(key)


class PersistedEvent:
    """What napari hands to drag callbacks: an event whose later states replace it."""

    def __init__(self, event):
        self.__wrapped__ = event

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)


def mouse(type_, pos, position, modifiers=()):
    return SimpleNamespace(
        type=type_, pos=pos, position=position, button=1, modifiers=modifiers, is_dragging=False
    )


def click(viewer, position, travel=0.0):
    """Press at ``position`` (world), release ``travel`` screen pixels away."""
    mouse_press_callbacks(viewer, PersistedEvent(mouse("mouse_press", (200.0, 200.0), position)))
    mouse_release_callbacks(viewer, mouse("mouse_release", (200.0 + travel, 200.0), position))


def shown_regions(widget):
    return [s.region_id for s in widget.session.suggestions]


def test_the_labelling_loop(make_napari_viewer, qtbot, project, slide_path):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(str(slide_path), plugin="napari-wsl-al")
    widget = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Active learning", area="right")
    assert widget.project.path == project.path
    assert widget.slide_combo.currentText() == "synth" and len(slide_layers(viewer)) == 1
    assert widget.batch_spin.value() == 4 and widget.strategy_combo.currentText() == "oreal"
    assert "No suggestions yet" in widget.current_label.text()
    assert widget.mode() == "multi"  # the default: several classes
    widget.mode_combo.setCurrentIndex(0)
    assert widget.mode() == "dominant"

    widget.suggest()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "4 suggestions" in widget.status.text(), widget.status.text()
    session = widget.session
    assert session.mode == "dominant"
    first = session.current_region
    assert first == shown_regions(widget)[0]
    outlines = viewer.layers[SUGGESTIONS_LAYER]
    assert len(outlines.data) == 4  # 3 pending + the current one, drawn last
    np.testing.assert_allclose(outlines.data[-1], session.current_outline_um())
    np.testing.assert_allclose(outlines.edge_color[-1][:3], [0, 229 / 255, 1], atol=0.01)
    assert CURRENT_COLOUR == "#00e5ff"
    assert outlines.edge_width[-1] > outlines.edge_width[0]
    # fitted to the canvas as it was then (a status line wrapping later may resize it a little)
    target = session.camera_target(widget.camera_view_px)
    assert np.allclose(widget.camera_view_px, widget.view_px(), rtol=0.1)
    camera = viewer_camera(viewer)
    np.testing.assert_allclose(camera.center[-2:], target.center)
    assert camera.zoom == pytest.approx(target.zoom)
    assert widget.suggestion_list.count() == 4 and widget.suggestion_list.currentRow() == 0
    assert viewer.layers.selection.active is slide_layers(viewer)[0]

    # Dominant mode: "2" sets benign, Enter stores it and moves on (the image layer is
    # active: its own "2" would switch it to transform mode).
    press(viewer, "2")
    assert "benign" in widget.current_label.text()
    press(viewer, "Enter")
    with LabelStore.for_project(project.path) as store:
        assert store.get("synth", first).classes == ("benign",)
    assert slide_layers(viewer)[0].mode == "pan_zoom"
    second = session.current_region
    assert second == shown_regions(widget)[1]
    assert len(viewer.layers[LABELS_LAYER].data) == 1
    assert len(outlines.data) == 3

    # Multi-class mode: keys toggle; Enter stores both.
    widget.mode_combo.setCurrentIndex(1)
    press(viewer, "1")
    press(viewer, "3")
    press(viewer, "Enter")
    with LabelStore.for_project(project.path) as store:
        assert store.get("synth", second).classes == ("background", "malignant")
    # Undo (U) brings the region back, unlabelled; Ctrl+Z undoes the label before it.
    press(viewer, "u")
    assert session.current_region == second
    assert len(viewer.layers[LABELS_LAYER].data) == 1
    press(viewer, "Control-z")
    assert session.current_region == first and len(viewer.layers[LABELS_LAYER].data) == 0
    press(viewer, "2")
    press(viewer, "Enter")  # first: benign again (multi mode, one class)
    press(viewer, "3")
    press(viewer, "Enter")  # second: malignant
    press(viewer, "s")  # third: skipped
    assert [s.status for s in session.suggestions] == ["labelled", "labelled", "skipped", "pending"]
    assert "2</b> labels" in widget.counters_label.text()

    # A click on any superpixel selects it.
    superpixels = session.superpixels
    labelled = {first, second, *shown_regions(widget)}
    clicked = next(r for r in range(1, superpixels.n_regions + 1) if r not in labelled)
    rows, cols = np.nonzero(superpixels.read(0, 0, *superpixels.shape) == clicked)
    step, unit = superpixels.scale[0], superpixels.level0_mpp
    where = (rows[0] * step + (step - unit) / 2, cols[0] * step + (step - unit) / 2)
    click(viewer, where, travel=10.0)  # a drag pans: nothing selected
    assert session.current_region != clicked
    click(viewer, where, travel=2.0)
    assert (
        session.current_region == clicked and "a region you clicked" in widget.current_label.text()
    )
    press(viewer, "1")
    press(viewer, "Enter")
    assert len(viewer.layers[LABELS_LAYER].data) == 3

    # The next round trains in a worker; suggestions and labels are redrawn.
    before = shown_regions(widget)
    widget.train()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=90000)
    assert "Round 1 done" in widget.status.text(), widget.status.text()
    after = shown_regions(widget)
    assert after != before and not set(after) & {first, second, clicked}
    # the session on the new suggestions was opened (and outlined) in the worker
    assert widget.session is not session and session.store is not widget.session.store
    session = widget.session
    assert all(s.round == 1 for s in session.suggestions)
    assert set(session._outlines) >= set(after)
    assert len(outlines.data) == 4 and len(viewer.layers[LABELS_LAYER].data) == 3
    # the round's maps appear, one layer per event-loop turn; fg is shown
    qtbot.waitUntil(lambda: "synth round 1 ovr_entropy_max" in viewer.layers, timeout=5000)
    assert viewer.layers["synth round 1 fg"].visible
    assert not viewer.layers["synth round 1 ovr_entropy_max"].visible
    assert viewer.layers["synth round 1 fg"].metadata["wslal_round"] == 1
    names = [layer.name for layer in viewer.layers]
    assert names.index(SUGGESTIONS_LAYER) > names.index("synth round 1 fg")
    labels = {lab.region_id: lab.classes for lab in session.store.current(source="oracle")}
    assert labels == {first: ("benign",), second: ("malignant",), clicked: ("background",)}

    # Keys follow the dock: on new layers, off while it is hidden.
    points = viewer.add_points()
    assert KeyBinding.from_str("2") in points.keymap
    viewer.layers.remove(points)
    dock = widget.parent()
    dock.hide()
    assert KeyBinding.from_str("Enter") not in viewer.keymap
    dock.show()
    assert KeyBinding.from_str("Enter") in viewer.keymap

    # Removing the dock removes its keys and its mouse callback.
    assert widget.hooks.mouse_callback in viewer.mouse_drag_callbacks
    viewer.window.remove_dock_widget(widget)
    assert KeyBinding.from_str("Enter") not in viewer.keymap
    assert KeyBinding.from_str("2") not in slide_layers(viewer)[0].keymap
    assert widget.hooks.mouse_callback not in viewer.mouse_drag_callbacks
    viewer.close()

    # A new viewer and dock: the project's slide, labels and suggestions come back.
    again = make_napari_viewer()
    reopened = ActiveLearningWidget(again)
    again.window.add_dock_widget(reopened)
    assert [layer.name for layer in slide_layers(again)] == ["synth"]
    qtbot.waitUntil(lambda: "synth round 1 fg" in again.layers, timeout=5000)
    assert shown_regions(reopened) == after
    assert reopened.session.current_region == after[0]
    assert len(again.layers[LABELS_LAYER].data) == 3
    assert len(again.layers[SUGGESTIONS_LAYER].data) == 4
    assert reopened.suggestion_list.count() == 4
    assert "3</b> labels" in reopened.counters_label.text()


def test_suggest_on_the_real_sample_creates_the_project(
    make_napari_viewer, qtbot, cmu1_path, tmp_path
):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(str(cmu1_path), plugin="napari-wsl-al")
    widget = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Active learning", area="right")
    assert widget.project is None
    assert widget.slide_combo.currentText() == "CMU-1-Small-Region  (new: Suggest adds it)"
    widget.batch_spin.setValue(8)
    widget.suggest()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=80000)
    assert "8 suggestions" in widget.status.text(), widget.status.text()
    # the first suggestions of a new project are random: said so, and no score is shown
    assert "random: no round trained yet" in widget.status.text()
    assert "random tissue regions" in widget.status.toolTip()
    rows = [widget.suggestion_list.item(i).text() for i in range(8)]
    assert all("random pick" in row and "score" not in row for row in rows), rows
    # The project was created with the default model's classes, and holds the slide.
    project = Project.open(tmp_path / "study.wslal")
    assert project.class_names == ("benign", "malignant")
    assert project.slide_names() == ["CMU-1-Small-Region"]
    assert widget.slide_combo.currentText() == "CMU-1-Small-Region"
    assert len(slide_layers(viewer)) == 1 and len(viewer.layers[SUGGESTIONS_LAYER].data) == 8
    slide = slide_layers(viewer)[0]
    extent = np.asarray(slide.data[0].shape[:2]) * np.asarray(slide.scale)
    outline = widget.session.current_outline_um()
    assert np.all(outline >= -1) and np.all(outline <= extent + 1)
    target = SCREENSHOT if os.environ.get("NAPARI_WSL_AL_SCREENSHOTS") else tmp_path / "al.png"
    viewer.screenshot(str(target), canvas_only=False)
    assert target.stat().st_size > 0


def test_mistakes_become_notifications(make_napari_viewer, qtbot, project, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_wsl_al._qt.al_widget.show_error", shown.append)
    viewer = make_napari_viewer()
    widget = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert [layer.name for layer in slide_layers(viewer)] == ["synth"]  # opened for labelling
    press(viewer, "Enter")
    assert "no region to label" in shown[-1]
    widget.train()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    assert "no labels yet" in shown[-1] and "no labels yet" in widget.status.text()
    widget.project_edit.setText(str(project.path.parent / "elsewhere"))
    widget.load_project()
    assert widget.project is None and widget.session is None
    assert "Suggest creates it" in widget.status.text()
    assert widget.slide_combo.currentText().startswith("synth  (new")
    press(viewer, "2")
    assert "no slide to label" in shown[-1]


def test_the_next_round_trains_for_the_steps_and_from_the_start_asked(
    make_napari_viewer, project, monkeypatch
):
    """The dock shows the project's training steps and start, and trains the next round with
    what the user set there (the project's settings on disk unchanged)."""
    viewer = make_napari_viewer()
    widget = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.steps_spin.value() == 1 and not widget.reinit_check.isChecked()
    started = []
    monkeypatch.setattr(widget, "_start", lambda job, *args, **kwargs: started.append(args))
    widget.steps_spin.setValue(1800)
    widget.reinit_check.setChecked(True)
    widget.train()
    settings = started[-1][1]
    assert settings.train.steps == 1800 and settings.init == "wsl"
    assert settings.train.crop_size == 64 and settings.tile_px == 256  # the rest: the project's
    widget.reinit_check.setChecked(False)
    widget.train()
    assert started[-1][1].init == "previous" and started[-1][1].train.steps == 1800
    assert ALSettings.of_project(Project.open(project.path)).train.steps == 1
    widget.project_edit.setText(str(project.path.parent / "elsewhere"))
    widget.load_project(notify=False)
    assert widget.steps_spin.value() == ALSettings().train.steps == 300
    assert not widget.reinit_check.isChecked()


def test_a_project_path_typed_and_left_is_opened(make_napari_viewer, project, tmp_path):
    """Leaving the project field (Tab, or a click on Suggest) opens the project typed there, so
    that Suggest never writes into the one shown before; the same path again reloads nothing."""
    viewer = make_napari_viewer()
    widget = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.project.path == project.path and widget.session is not None
    session = widget.session
    widget.project_edit.setText(str(project.path))
    widget.project_edit.editingFinished.emit()
    assert widget.session is session  # the same project: left open as it was
    other = Project.create(tmp_path / "other", classes=["benign", "malignant"])
    widget.project_edit.setText(str(other.path))
    widget.project_edit.editingFinished.emit()
    assert widget.project.path == other.path and widget.session is None
    widget.project_edit.setText(str(tmp_path / "new"))
    widget.project_edit.editingFinished.emit()
    assert widget.project is None and "Suggest creates it" in widget.status.text()


def test_format_seconds():
    assert format_seconds(42.4) == "42 s"
    assert format_seconds(185) == "3 min 05 s"
    assert format_seconds(3720) == "1 h 02 min"


def test_the_loop_on_a_folder_of_patches(make_napari_viewer, qtbot, tmp_path):
    from napari_wsl_al.core.data.synthetic import write_synthetic_patch_set

    root = write_synthetic_patch_set(tmp_path / "glas", n_per_class=2, shape=(160, 192))
    folder = root / "images"
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    SETTINGS.save_to(project)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(folder), plugin="napari-wsl-al")
    widget = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Active learning", area="right")
    assert widget.slide_combo.currentText() == "images  (new: Suggest adds it)"
    assert widget.mode() == "multi"  # several classes per region, the default
    widget.suggest()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "4 suggestions" in widget.status.text(), widget.status.text()
    assert Project.open(project.path).slide_names() == ["images"]
    reader = slide_layers(viewer)[0].metadata["reader"]
    session = widget.session
    # every suggested region lies inside one patch (none in the white padding of the mosaic)
    for region in shown_regions(widget):
        row0, col0, row1, col1 = (int(v) for v in session.superpixels.bboxes[region])
        patches = {reader.patch_at(x + 0.5, y + 0.5) for y in (row0, row1 - 1)
                   for x in (col0, col1 - 1)}
        assert len(patches) == 1 and None not in patches

    first = session.current_region
    press(viewer, "2")
    press(viewer, "3")  # both classes in one region
    press(viewer, "Enter")
    second = session.current_region
    press(viewer, "1")
    press(viewer, "Enter")
    press(viewer, "u")  # the background label of `second` is taken back
    assert session.current_region == second
    press(viewer, "3")
    press(viewer, "Enter")
    with LabelStore.for_project(project.path) as store:
        labels = {lab.region_id: lab.classes for lab in store.current(source="oracle")}
    assert labels == {first: ("benign", "malignant"), second: ("malignant",)}
    assert len(viewer.layers[LABELS_LAYER].data) == 2

    widget.train()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert "Round 1 done" in widget.status.text(), widget.status.text()
    after = shown_regions(widget)
    assert not set(after) & {first, second} and len(after) == 4
    assert len(viewer.layers[LABELS_LAYER].data) == 2
    qtbot.waitUntil(lambda: "images round 1 ovr_entropy_max" in viewer.layers, timeout=5000)
    layers_after_round_1 = len(viewer.layers)

    # A second round: the latest maps' layers get round 2's data, round 1's foreground stays
    # beside them (hidden) for comparison.
    press(viewer, "2")
    press(viewer, "Enter")
    widget.train()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert "Round 2 done" in widget.status.text(), widget.status.text()
    qtbot.waitUntil(lambda: "images round 1 fg" in viewer.layers
                    and "images round 2 fg" in viewer.layers, timeout=5000)
    latest, previous = viewer.layers["images round 2 fg"], viewer.layers["images round 1 fg"]
    assert latest.metadata["wslal_round_role"] == "latest" and latest.visible
    assert previous.metadata["wslal_round_role"] == "previous" and not previous.visible
    assert "images round 2 ovr_entropy_max" in viewer.layers
    assert len(viewer.layers) == layers_after_round_1 + 1
    after = shown_regions(widget)
    np.testing.assert_array_equal(
        np.asarray(previous.data[-1]), np.asarray(
            MapStore(rounds.round_maps_path(project, "images", 1)).handles()["fg"].levels[-1]))
    viewer.close()

    again = make_napari_viewer()
    reopened = ActiveLearningWidget(again)
    again.window.add_dock_widget(reopened)
    assert [layer.name for layer in slide_layers(again)] == ["images"]
    assert shown_regions(reopened) == after
    assert len(again.layers[LABELS_LAYER].data) == 3
    assert "3</b> labels" in reopened.counters_label.text()
    qtbot.waitUntil(lambda: "images round 1 fg" in again.layers, timeout=5000)
    assert "images round 2 fg" in again.layers


def test_a_folder_given_its_resolution_is_labelled_at_it_in_every_session(
    make_napari_viewer, qtbot, tmp_path
):
    """A folder of patches given its µm / pixel in the Slide dock: Suggest records it in the
    project, the superpixels are made at it, and a later session shows the folder at it."""
    from napari_wsl_al._qt.slide_widget import SlideWidget
    from napari_wsl_al.core.al.superpixels import SuperpixelMap
    from napari_wsl_al.core.data.synthetic import write_synthetic_patch_set

    folder = write_synthetic_patch_set(tmp_path / "glas", n_per_class=2, shape=(160, 192)) / "images"
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    SETTINGS.save_to(project)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(folder), plugin="napari-wsl-al")
    slides = SlideWidget(viewer)
    slides.mpp_spin.setValue(0.62)
    slides.set_resolution()
    widget = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Active learning", area="right")
    widget.suggest()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "4 suggestions" in widget.status.text(), widget.status.text()
    assert Project.open(project.path).slide_mpp("images") == 0.62
    superpixels = SuperpixelMap.open(project.superpixels_path("images"))
    assert superpixels.mpp == pytest.approx(rounds.WORKING_MPP)
    assert superpixels.level0_mpp == pytest.approx(0.62)
    viewer.close()

    again = make_napari_viewer(show=True)
    again.open(str(folder), plugin="napari-wsl-al")  # the folder says nothing of its resolution
    layer = slide_layers(again)[0]
    assert layer.metadata["reader"].mpp is None
    reopened = ActiveLearningWidget(again)
    again.window.add_dock_widget(reopened)
    qtbot.waitUntil(lambda: reopened.session is not None and reopened.worker is None,
                    timeout=30000)
    np.testing.assert_allclose(layer.scale, (0.62, 0.62))
    # the suggested outlines fall on the folder's mosaic, in microns
    extent = np.asarray(layer.data[0].shape[:2]) * np.asarray(layer.scale)
    outline = reopened.session.current_outline_um()
    assert np.all(outline >= -1) and np.all(outline <= extent + 1)
    assert outline.max() > extent.max() / 20  # not squeezed into the corner of pixel units
