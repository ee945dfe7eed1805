"""Slide names are unique in a project: two files never share maps, one file keeps its name."""

from __future__ import annotations

import numpy as np
import tifffile
from infer_models import gradient_image

from napari_wsl_al.cli import main
from napari_wsl_al.core.infer import MapStore
from napari_wsl_al.core.project import Project, slide_key


def test_slide_key_keeps_latin_letters_and_gives_a_name_to_the_rest():
    assert slide_key("CMU-1 (small).svs") == "CMU-1_small_.svs"
    assert slide_key("Präparat_é") == "Praparat_e"
    assert slide_key("切片") == "slide"
    assert slide_key("..hidden..") == "hidden"


def test_same_file_names_in_two_folders_get_two_names(tmp_path):
    project = Project.create(tmp_path / "study")
    for case in ("caseA", "caseB", "caseC"):
        (tmp_path / case).mkdir()
        (tmp_path / case / "slide.png").write_bytes(b"")
    a = project.add_slide(tmp_path / "caseA" / "slide.png")
    b = project.add_slide(tmp_path / "caseB" / "slide.png")
    assert (a, b) == ("slide", "caseB_slide")
    # The same file again, under any name, keeps its first name.
    assert project.add_slide(tmp_path / "caseB" / "slide.png", name="other") == "caseB_slide"
    assert project.add_slide(tmp_path / "caseA" / ".." / "caseA" / "slide.png") == "slide"
    # A folder name already used falls back to a number.
    (tmp_path / "x" / "caseB").mkdir(parents=True)
    (tmp_path / "x" / "caseB" / "slide.png").write_bytes(b"")
    assert project.add_slide(tmp_path / "x" / "caseB" / "slide.png") == "slide-2"
    reopened = Project.open(project.path)
    assert reopened.slide_names() == ["slide", "caseB_slide", "slide-2"]
    paths = [entry["path"] for entry in reopened.slides]
    assert paths == [str((tmp_path / c / "slide.png").resolve())
                     for c in ("caseA", "caseB", "x/caseB")]
    assert len({project.maps_path(n) for n in reopened.slide_names()}) == 3


def test_names_differing_only_in_case_or_script_are_made_unique(tmp_path):
    project = Project.create(tmp_path / "study")
    files = [tmp_path / "Slide.png", tmp_path / "sub" / "slide.png",
             tmp_path / "cases" / "切片.png", tmp_path / "cases" / "スライド.png"]
    for file in files:
        file.parent.mkdir(exist_ok=True)
        file.write_bytes(b"")
    names = [project.add_slide(f) for f in files]
    assert names == ["Slide", "sub_slide", "cases_slide", "slide-2"]
    assert len({n.casefold() for n in names}) == 4


def test_in_memory_slides_are_named_by_their_name(tmp_path):
    project = Project.create(tmp_path / "study")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synth.tif").write_bytes(b"")
    assert project.add_slide(None, name="synth") == "synth"
    assert project.add_slide(None, name="synth") == "synth"
    assert project.add_slide(tmp_path / "data" / "synth.tif") == "data_synth"
    assert project.add_slide(None, name="data_synth") == "data_synth-2"
    assert project.slide_names() == ["synth", "data_synth", "data_synth-2"]


def test_cli_infer_keeps_the_maps_of_same_named_slides_apart(tmp_path, capsys):
    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    config = ModelConfig(arch="cam-avg", classes=("tumour", "normal"), width=0.125)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", build_model(config), config)
    slides = []
    for case, image in (("caseA", gradient_image(256, 256)),
                        ("caseB", gradient_image(256, 256)[::-1, ::-1].copy())):
        (tmp_path / case).mkdir()
        slides.append(tmp_path / case / "slide.tif")
        tifffile.imwrite(slides[-1], image, tile=(128, 128), photometric="rgb")
    project_path = tmp_path / "study.wslal"
    args = ["--model", str(checkpoint), "--project", str(project_path), "--level", "0",
            "--tile-size", "128", "--overlap", "0", "--maps", "cam", "--device", "cpu",
            "--tissue-threshold", "0"]
    assert main(["infer", *map(str, slides), *args]) == 0
    project = Project.open(project_path)
    assert project.slide_names() == ["slide", "caseB_slide"]
    cam_a = MapStore(project.maps_path("slide")).handles()["cam"].levels[0].compute()
    cam_b = MapStore(project.maps_path("caseB_slide")).handles()["cam"].levels[0].compute()
    assert not np.allclose(cam_a, cam_b)
    info = MapStore(project.maps_path("caseB_slide")).read_info()
    assert info["spec"]["slide"]["path"] == str(slides[1])
    capsys.readouterr()
