"""The Project dock: create, slides and patch folders, classes, round history, reopen."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor

from napari_wsl_al._qt.project_widget import ProjectWidget
from napari_wsl_al._qt.slide_widget import set_layer_resolution, slide_layers
from napari_wsl_al.core.al.labels import LabelStore
from napari_wsl_al.core.data.synthetic import write_synthetic_patch_set
from napari_wsl_al.core.project import Project

pytestmark = pytest.mark.gui

#: Where the test leaves its screenshot: ``docs/project_widget.png`` only when asked
#: (``NAPARI_WSL_AL_SCREENSHOTS=1``), so that a test run never changes tracked files.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "project_widget.png"


@pytest.fixture
def patch_folder(tmp_path):
    return write_synthetic_patch_set(tmp_path / "patches", n_per_class=2, shape=(64, 64)) / "images"


@pytest.fixture
def notes(monkeypatch):
    """The notifications the dock shows: ``("error" | "info", text)``."""
    shown = []
    for kind in ("error", "info"):
        monkeypatch.setattr(
            f"napari_wsl_al._qt.project_widget.show_{kind}",
            lambda text, kind=kind: shown.append((kind, text)),
        )
    return shown


def saved(path):
    return json.loads((Path(path) / "project.json").read_text())


def slide_rows(widget):
    return [widget.slide_list.item(row).text() for row in range(widget.slide_list.count())]


def class_rows(widget):
    table = widget.class_table
    return [
        (table.item(row, 0).text(), table.cellWidget(row, 1).text(), table.item(row, 2).text())
        for row in range(table.rowCount())
    ]


def test_create_add_remove_and_edit_classes(
    make_napari_viewer, qtbot, tmp_path, small_synthetic_slide, patch_folder, notes, monkeypatch
):
    viewer = make_napari_viewer()
    widget = ProjectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Project")
    changes = []
    widget.project_changed.connect(changes.append)
    folder = tmp_path / "study.wslal"  # the default project (conftest)
    assert widget.project is None and Path(widget.project_edit.text()) == folder
    assert "press Create" in widget.status.text()
    assert not widget.add_file_button.isEnabled() and widget.create_button.isEnabled()
    assert [name for name, _, _ in class_rows(widget)] == ["benign", "malignant"]

    # Classes edited before Create are those of the new project.
    widget.class_table.item(1, 2).setText("M")
    widget.create_project()
    assert isinstance(widget.project, Project) and changes == [widget.project]
    assert [c["key"] for c in saved(folder)["classes"]] == ["2", "m"]
    assert widget.add_file_button.isEnabled() and not widget.create_button.isEnabled()

    widget.add_slide_file(small_synthetic_slide)
    widget.add_patch_folder(patch_folder)
    assert [entry["name"] for entry in saved(folder)["slides"]] == ["synth", "images"]
    assert slide_rows(widget) == ["synth   ·   synth.tif", "images   ·   images"]
    assert len(changes) == 3 and not [n for n in notes if n[0] == "error"]

    # Another folder of the same name gets a name of its own, and the user is told.
    twin = tmp_path / "elsewhere" / "images"
    twin.mkdir(parents=True)
    first = min(Path(patch_folder).iterdir())
    (twin / first.name).write_bytes(first.read_bytes())
    widget.add_patch_folder(twin)
    assert [entry["name"] for entry in saved(folder)["slides"]][-1] == "elsewhere_images"
    assert "elsewhere_images (the name images was taken by another file)" in widget.status.text()
    widget.project.remove_slide("elsewhere_images")
    changes.pop()

    # What cannot be read as a slide is refused, with what to do.
    bad = tmp_path / "notes.txt"
    bad.write_text("not a slide")
    widget.add_slide_file(bad)
    assert notes[-1][0] == "error" and "notes.txt" in notes[-1][1]
    assert len(saved(folder)["slides"]) == 2

    # Removing a slide keeps its labels, and deletes its maps only when asked.
    maps = widget.project.maps_path("images")
    maps.mkdir(parents=True)
    with LabelStore.for_project(folder) as store:
        store.add_label("images", 1, ["benign"])
    widget.slide_list.setCurrentRow(1)
    widget.delete_files_check.setChecked(True)
    # while a run writes the slide's maps, the dock says so at once and removes nothing
    import filelock

    from napari_wsl_al.core.infer.store import lock_path

    with filelock.FileLock(str(lock_path(maps)), thread_local=False):
        started = time.perf_counter()
        widget.remove_selected_slide()
        assert time.perf_counter() - started < 2.0
    assert notes[-1][0] == "error" and "another run is writing the maps" in notes[-1][1]
    assert len(saved(folder)["slides"]) == 2 and maps.exists()
    widget.remove_selected_slide()
    assert [entry["name"] for entry in saved(folder)["slides"]] == ["synth"]
    assert not maps.exists() and slide_rows(widget) == ["synth   ·   synth.tif"]
    assert notes[-1][0] == "info" and "Its labels (1) stay in labels.sqlite" in notes[-1][1]

    # A colour from the colour dialog and a key typed in the table are saved at once.
    monkeypatch.setattr(
        "napari_wsl_al._qt.project_widget.QColorDialog.getColor",
        lambda *args: QColor("#123456"),
    )
    qtbot.mouseClick(widget.class_table.cellWidget(0, 1), Qt.MouseButton.LeftButton)
    widget.class_table.item(0, 2).setText("b")
    assert saved(folder)["classes"][0] == {"name": "benign", "colour": "#123456", "key": "b"}
    assert class_rows(widget)[0] == ("benign", "#123456", "b")

    # A reserved or repeated key is refused: a notification, project.json unchanged.
    before = (folder / "project.json").read_bytes()
    for key in ("1", "m"):
        widget.class_table.item(0, 2).setText(key)
        assert notes[-1][0] == "error"
        assert (folder / "project.json").read_bytes() == before
        assert class_rows(widget)[0] == ("benign", "#123456", "b")  # the table is reverted
    assert "key '1' labels a region background" in notes[-2][1]
    assert "share the key 'm'" in notes[-1][1]

    # A class that labels use keeps its name; one without labels can be renamed.
    widget.class_table.item(0, 0).setText("normal")
    assert "'benign' is used by labels in labels.sqlite (1 live)" in notes[-1][1]
    assert (folder / "project.json").read_bytes() == before
    widget.class_table.item(1, 0).setText("tumour")
    widget.add_class("stroma")
    assert [c["name"] for c in saved(folder)["classes"]] == ["benign", "tumour", "stroma"]
    assert saved(folder)["classes"][2]["key"] == "2"  # the first key no class uses (b, m)

    # A new dock on the same folder shows the same state.
    again = ProjectWidget(make_napari_viewer())
    assert again.project.path == folder
    assert slide_rows(again) == slide_rows(widget)
    assert class_rows(again) == class_rows(widget)


def test_round_history(make_napari_viewer, tmp_path, notes):
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    with LabelStore.for_project(project.path) as store:
        store.add_label("slide", 1, ["benign"])
        store.start_round(1, {})
        store.finish_round(1, {"loss": 0.6931, "labels": 1}, "round_0001.pt")
        store.start_round(2, {})
        store.finish_round(2, {"loss": 0.25, "labels": 7, "dice": 0.8123}, "round_0002.pt")
        store.start_round(3, {})
        store.fail_round(3, "cancelled")
    widget = ProjectWidget(make_napari_viewer())
    widget.open_project(project.path)
    table = widget.round_table
    rows = [
        [table.item(row, column).text() for column in range(table.columnCount())]
        for row in range(table.rowCount())
    ]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert [row[2:] for row in rows] == [
        ["1", "0.693", "–"],
        ["7", "0.250", "0.812"],
        ["1", "failed", "–"],
    ]
    assert rows[0][1][:2] == "20" and len(rows[0][1]) == 10  # YYYY-MM-DD
    assert table.item(2, 3).toolTip().startswith("round 3: failed (cancelled), finished 20")
    assert "2 classes, 3 rounds" in widget.status.text()
    assert notes[-1] == ("info", f"Opened project {project.path}")


def test_open_slides_and_mistakes(make_napari_viewer, tmp_path, small_synthetic_slide, notes,
                                  patch_folder):
    viewer = make_napari_viewer()
    widget = ProjectWidget(viewer)
    widget.add_open_slides()  # no project yet: says what to do
    assert notes[-1][0] == "error" and "press Open, or Create" in notes[-1][1]
    widget.remove_selected_slide()
    assert "no slide selected" in notes[-1][1]
    widget.create_project(tmp_path / "new")
    assert widget.project.path == tmp_path / "new.wslal"
    widget.create_project()
    assert "a project already exists here" in notes[-1][1]
    widget.add_open_slides()
    assert "no slide is open in napari" in notes[-1][1]
    viewer.open(str(small_synthetic_slide), plugin="napari-wsl-al")
    widget.add_open_slides()
    widget.add_open_slides()
    assert saved(widget.project.path)["slides"] == [
        {"name": "synth", "path": str(small_synthetic_slide.resolve())}
    ]
    assert "in it already" in widget.status.text()
    # a folder given its resolution in the Slide dock is added with it (the file's own
    # resolution, as the synthetic slide's, is not copied into the project)
    viewer.open(str(patch_folder), plugin="napari-wsl-al")
    set_layer_resolution(slide_layers(viewer)[-1], 0.62)
    widget.add_open_slides()
    assert saved(widget.project.path)["slides"][1] == {
        "name": patch_folder.name, "path": str(patch_folder.resolve()), "mpp": 0.62}
    assert slide_rows(widget) == ["synth   ·   synth.tif", "images   ·   images   ·   0.62 µm/px"]
    widget.open_project(tmp_path / "nothing")
    assert widget.project is None and notes[-1][0] == "info" and "Create" in notes[-1][1]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "project.json").write_text("{not json")
    widget.open_project(damaged)  # an error in a slot becomes a notification
    assert notes[-1][0] == "error" and "project.json" in notes[-1][1]


def test_screenshot(make_napari_viewer, qtbot, tmp_path, small_synthetic_slide, patch_folder):
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    project.add_slide(small_synthetic_slide)
    project.add_slide(patch_folder, name="glas_patches")
    with LabelStore.for_project(project.path) as store:
        store.start_round(1, {})
        store.finish_round(1, {"loss": 0.52, "labels": 20, "dice": 0.71}, "round_0001.pt")
        store.start_round(2, {})
        store.finish_round(2, {"loss": 0.31, "labels": 40, "dice": 0.78}, "round_0002.pt")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(str(small_synthetic_slide), plugin="napari-wsl-al")
    widget = ProjectWidget(viewer)
    widget.open_project(project.path, notify=False)
    viewer.window.add_dock_widget(widget, name="Project", area="right")
    widget.slide_list.setCurrentRow(0)
    qtbot.waitExposed(widget)
    qtbot.wait(100)  # the dock is laid out
    target = SCREENSHOT if os.environ.get("NAPARI_WSL_AL_SCREENSHOTS") else tmp_path / "p.png"
    viewer.screenshot(str(target), canvas_only=False)
    assert target.stat().st_size > 0
