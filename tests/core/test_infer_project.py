"""Tests of the project folder: create, open, newer versions refused, atomic writes, map paths."""

from __future__ import annotations

import json

import pytest

from napari_wsl_al.core.errors import ProjectError
from napari_wsl_al.core.project import PROJECT_FORMAT_VERSION, Project


def test_create_and_open_round_trip(tmp_path):
    project = Project.create(tmp_path / "study", classes=["tumour", "stroma"])
    assert project.path.name == "study.wslal"
    assert project.class_names == ("tumour", "stroma")
    assert project.classes[0].key == "2" and project.classes[0].colour.startswith("#")
    name = project.add_slide(tmp_path / "slide one.svs")
    assert name == "slide_one"
    assert project.add_slide(tmp_path / "slide one.svs") == "slide_one"  # once
    reopened = Project.open(project.path)
    assert reopened.slide_names() == ["slide_one"]
    assert reopened.classes == project.classes
    assert reopened.maps_path("slide_one") == project.path / "maps" / "slide_one.zarr"
    data = json.loads((project.path / "project.json").read_text())
    assert data["format_version"] == PROJECT_FORMAT_VERSION
    assert "saved_with" in data
    assert not [p for p in project.path.iterdir() if p.name.endswith(".tmp")]


def test_newer_format_is_refused_naming_the_file(tmp_path):
    project = Project.create(tmp_path / "s.wslal", classes=["a", "b"])
    file = project.path / "project.json"
    data = json.loads(file.read_text())
    data["format_version"] = PROJECT_FORMAT_VERSION + 1
    file.write_text(json.dumps(data))
    with pytest.raises(ProjectError, match="newer") as info:
        Project.open(project.path)
    assert "project.json" in str(info.value)


def test_missing_damaged_and_existing(tmp_path):
    with pytest.raises(ProjectError, match="not a napari-wsl-al project"):
        Project.open(tmp_path / "nothing")
    project = Project.create(tmp_path / "s.wslal", classes=["a"])
    with pytest.raises(ProjectError, match="already exists"):
        Project.create(project.path, classes=["a"])
    assert Project.create(project.path, classes=["a"], exist_ok=True).class_names == ("a",)
    (project.path / "project.json").write_text("{broken")
    with pytest.raises(ProjectError, match="cannot read"):
        Project.open(project.path)


def test_settings_are_saved_atomically(tmp_path, monkeypatch):
    project = Project.create(tmp_path / "s.wslal", classes=["a", "b"])
    project.update_settings(inference={"mpp": 0.5})
    assert Project.open(project.path).settings["inference"] == {"mpp": 0.5}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("napari_wsl_al.core.atomic.os.replace", fail)
    with pytest.raises(ProjectError, match="No space left on device"):
        project.update_settings(inference={"mpp": 1.0})
    monkeypatch.undo()
    assert Project.open(project.path).settings["inference"] == {"mpp": 0.5}
    assert not [p for p in project.path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        (lambda d: d["slides"].append({"path": "/x.svs"}), "slide entry 1 is damaged"),
        (lambda d: d["slides"].append("x.svs"), "slide entry 1 is damaged"),
        (lambda d: d["slides"].append({"name": "x", "path": 3}), "path that is not text"),
        (lambda d: d.__setitem__("slides", {"a": 1}), "'slides' must be a list"),
        (lambda d: d.__setitem__("settings", [1, 2]), "'settings' must be a JSON object"),
    ],
)
def test_damaged_entries_are_named_and_the_file_left_alone(tmp_path, breakage, fragment):
    project = Project.create(tmp_path / "s.wslal", classes=["a", "b"])
    file = project.path / "project.json"
    data = json.loads(file.read_text())
    breakage(data)
    file.write_text(json.dumps(data))
    before = file.read_bytes()
    with pytest.raises(ProjectError, match=fragment) as info:
        Project.open(project.path)
    assert "project.json" in str(info.value)
    assert file.read_bytes() == before


def test_a_file_is_not_a_project(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("hello")
    for action in (Project.open, lambda p: Project.create(p, classes=["a"])):
        with pytest.raises(ProjectError, match="a file, not a project folder") as info:
            action(file)
        assert "notes.txt" in str(info.value)
    assert file.read_text() == "hello"


def test_a_project_that_cannot_be_saved_says_so(tmp_path, monkeypatch):
    import napari_wsl_al.core.project as project_module

    project = Project.create(tmp_path / "s.wslal", classes=["a", "b"])
    before = (project.path / "project.json").read_bytes()

    def read_only(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(project_module, "write_json_atomic", read_only)
    with pytest.raises(ProjectError, match="cannot save the project file: Permission denied") as info:
        project.add_slide(tmp_path / "new.svs")
    assert "project.json" in str(info.value) and "writable" in str(info.value)
    assert (project.path / "project.json").read_bytes() == before
