"""Removing slides from a project and editing its classes (names, colours, keys)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from napari_wsl_al.core.al.labels import LabelStore
from napari_wsl_al.core.errors import ProjectError
from napari_wsl_al.core.project import (
    FALLBACK_CLASSES,
    ClassSpec,
    Project,
    check_class_specs,
    default_project_classes,
    free_class_key,
)


@pytest.fixture
def project(two_slide_project):
    return two_slide_project


def saved(project):
    return json.loads((project.path / "project.json").read_text())


def computed_folders(project, name):
    folders = [project.maps_path(name), project.superpixels_path(name)]
    for folder in folders:
        (folder / "0").mkdir(parents=True)
        (folder / "0" / "chunk").write_bytes(b"\0" * 8)
    return folders


# ---------------------------------------------------------------------- remove_slide
def test_remove_slide_saves_at_once_and_keeps_files_and_labels(project):
    folders = computed_folders(project, "first")
    with LabelStore.for_project(project.path) as store:
        store.add_label("first", 3, ["benign"])
        store.add_label("first", 4, ["malignant"])
        store.add_label("second", 1, ["benign"])
    removed = project.remove_slide("first")
    assert removed.entry["name"] == "first" and removed.entry["path"].endswith("first.tif")
    assert removed.deleted == () and removed.labels_kept == 2
    assert [entry["name"] for entry in saved(project)["slides"]] == ["second"]
    assert Project.open(project.path).slide_names() == ["second"]
    assert all(folder.is_dir() for folder in folders)
    with LabelStore.for_project(project.path) as store:
        assert len(store.current("first")) == 2  # labels stay: adding the slide again finds them


def test_remove_slide_can_delete_its_maps_and_superpixels(project):
    folders = computed_folders(project, "first")
    others = computed_folders(project, "second")
    removed = project.remove_slide("first", delete_files=True)
    assert set(removed.deleted) == set(folders)
    assert not any(folder.exists() for folder in folders)
    assert all(folder.is_dir() for folder in others)
    assert removed.labels_kept == 0  # no label database yet: none is created
    assert not (project.path / "labels.sqlite").exists()


def test_remove_slide_deletes_its_round_maps_too(project, tmp_path):
    from napari_wsl_al.core.al.rounds import round_maps_path

    rounds = [round_maps_path(project, "first", n) for n in (1, 2, 12)]
    for folder in rounds:
        (folder / "fg").mkdir(parents=True)
        (folder.parent / (folder.name + ".lock")).write_bytes(b"")
    kept = [round_maps_path(project, "second", 1), project.maps_dir / "first.round_x.zarr",
            project.maps_dir / "firsts.round_0001.zarr"]
    for folder in kept:
        folder.mkdir(parents=True)
    # a slide whose own name looks like a round's store of "first" keeps its maps
    other = tmp_path / "first.round_0007.tif"
    other.write_bytes(b"not read")
    assert project.add_slide(other) == "first.round_0007"
    own = project.maps_path("first.round_0007")
    own.mkdir()
    kept.append(own)
    assert project.round_maps_paths("first") == rounds
    removed = project.remove_slide("first", delete_files=True)
    assert set(removed.deleted) == set(rounds)
    assert not any(folder.exists() for folder in rounds)
    assert not any(folder.parent.joinpath(folder.name + ".lock").exists() for folder in rounds)
    assert all(folder.is_dir() for folder in kept)
    assert project.round_maps_paths("second") == [round_maps_path(project, "second", 1)]


def test_remove_slide_without_computed_files_deletes_nothing(project):
    assert project.remove_slide("second", delete_files=True).deleted == ()


def test_remove_unknown_slide_names_the_known_ones(project):
    with pytest.raises(ProjectError, match="no slide named 'third'.*first, second"):
        project.remove_slide("third")
    assert project.slide_names() == ["first", "second"]


def test_remove_slide_reports_a_damaged_label_database(project):
    (project.path / "labels.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ProjectError, match="labels.sqlite"):
        project.remove_slide("first")
    assert saved(project)["slides"][0]["name"] == "first"  # nothing changed


# ---------------------------------------------------------------------- set_classes
def test_set_classes_saves_colours_keys_and_new_classes(project):
    benign, malignant = project.classes
    project.set_classes(
        [
            replace(benign, colour="#00FF00", key="B"),
            replace(malignant, key="m"),
            ClassSpec("stroma", "#123456", ""),
        ]
    )
    classes = saved(project)["classes"]
    assert classes == [
        {"name": "benign", "colour": "#00ff00", "key": "b"},
        {"name": "malignant", "colour": malignant.colour, "key": "m"},
        {"name": "stroma", "colour": "#123456", "key": ""},  # takes its positional key, 4
    ]
    assert Project.open(project.path).classes == project.classes


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("1", "key '1' labels a region background"),
        ("s", "key 's' skips a suggestion"),
        ("U", "key 'u' undoes the last label"),
        ("3", "share the key '3'"),
        ("ab", "one digit or letter"),
        ("é", "one digit or letter"),
        ("-", "one digit or letter"),
    ],
)
def test_set_classes_refuses_bad_keys(project, key, message):
    before = (project.path / "project.json").read_bytes()
    benign, malignant = project.classes
    with pytest.raises(ValueError, match=message):
        project.set_classes([replace(benign, key=key), malignant])
    assert (project.path / "project.json").read_bytes() == before
    assert project.classes == (benign, malignant)


def test_a_class_without_key_clashes_through_its_positional_key(project):
    benign, malignant = project.classes
    with pytest.raises(ValueError, match="positional key"):
        project.set_classes([replace(benign, key="3"), replace(malignant, key="")])


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "at least one class"),
        ([ClassSpec("a", "#000000", "2"), ClassSpec("A", "#000000", "3")], "own name"),
        ([ClassSpec(" ", "#000000", "2")], "has no name"),
        ([ClassSpec("a;b", "#000000", "2")], "contains ';'"),
        ([ClassSpec("a", "red", "2")], "#rrggbb"),
        ([ClassSpec("a", "#12345", "2")], "#rrggbb"),
        ([ClassSpec("a", "#000000", "2"), ClassSpec("background", "#000000", "3")], "key 1"),
    ],
)
def test_check_class_specs_refuses(specs, message):
    with pytest.raises(ValueError, match=message):
        check_class_specs(specs)


def test_check_class_specs_refuses_other_types():
    with pytest.raises(TypeError, match="not a ClassSpec"):
        check_class_specs(["benign"])


def test_a_listed_background_class_keeps_key_1():
    specs = check_class_specs(
        [ClassSpec("background", "#808080", "1"), ClassSpec(" tumour ", "#FF0000", "")]
    )
    assert specs == (ClassSpec("background", "#808080", "1"), ClassSpec("tumour", "#ff0000", ""))


def test_renaming_a_class_without_labels_is_allowed(project):
    benign, malignant = project.classes
    with LabelStore.for_project(project.path) as store:
        store.add_label("first", 1, ["malignant"])
    project.set_classes([replace(benign, name="normal"), malignant])
    assert saved(project)["classes"][0]["name"] == "normal"


def test_renaming_or_removing_a_labelled_class_is_refused(project):
    benign, malignant = project.classes
    with LabelStore.for_project(project.path) as store:
        store.add_label("first", 1, ["benign", "malignant"])
        store.add_label("first", 2, ["benign"])
    before = (project.path / "project.json").read_bytes()
    with pytest.raises(ValueError, match=r"'benign' is used by labels .*\(2 live\): it cannot be"):
        project.set_classes([replace(benign, name="normal"), malignant])
    with pytest.raises(ValueError, match=r"'malignant' is used by labels in labels.sqlite \(1 live"):
        project.set_classes([benign])
    assert (project.path / "project.json").read_bytes() == before
    assert project.class_names == ("benign", "malignant")


def test_a_class_whose_labels_undo_can_bring_back_keeps_its_name(project):
    benign, malignant = project.classes
    with LabelStore.for_project(project.path) as store:
        store.add_label("first", 1, ["benign"])
        store.undo()
        assert store.current() == []
    assert project.class_label_counts() == {"benign": (0, 1)}
    with pytest.raises(ValueError, match="0 live and 1 earlier ones kept for undo"):
        project.set_classes([replace(benign, name="normal"), malignant])


def test_free_class_key_and_default_classes(project):
    assert free_class_key(project.classes) == "4"
    many = [ClassSpec(f"c{i}", "#000000", "") for i in range(8)]
    assert free_class_key(many) == "0"
    classes = default_project_classes()
    assert tuple(spec.name for spec in classes) in (("benign", "malignant"), FALLBACK_CLASSES)
    assert [spec.key for spec in classes] == ["2", "3"]
    assert check_class_specs(classes) == classes
