"""A slide's resolution given by the user (folders of patches, plain images) is kept by the
project: recorded in ``project.json``, applied whenever the slide is opened from the project,
from the CLI and by the distributed tasks, and never changed under its superpixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from infer_models import gradient_image
from PIL import Image

from napari_wsl_al.cli import main
from napari_wsl_al.core.al import rounds
from napari_wsl_al.core.al.session import prepare_project
from napari_wsl_al.core.al.superpixels import SuperpixelMap
from napari_wsl_al.core.errors import ProjectError
from napari_wsl_al.core.io import open_slide
from napari_wsl_al.core.io.base import given_mpp
from napari_wsl_al.core.progress import run_to_end
from napari_wsl_al.core.project import PROJECT_FILE, Project


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "patches"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(gradient_image(128, 128, seed=i)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def project(tmp_path):
    return Project.create(tmp_path / "study", classes=["benign", "malignant"])


def test_given_mpp_is_the_one_set_on_the_reader_not_the_files(tmp_path, folder):
    with open_slide(folder) as reader:
        assert reader.mpp is None and given_mpp(reader) is None
        reader.set_mpp(0.62)
        assert given_mpp(reader) == 0.62
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, gradient_image(64, 64), photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(slide) as reader:
        assert reader.mpp == pytest.approx((0.5, 0.5)) and given_mpp(reader) is None
        reader.set_mpp((0.25, 0.3))
        assert given_mpp(reader) == 0.25


def test_the_project_records_a_given_resolution_and_reopens_the_slide_at_it(project, folder):
    name = project.add_slide(folder, mpp=0.62)
    assert json.loads((project.path / PROJECT_FILE).read_text())["slides"][0]["mpp"] == 0.62
    reopened = Project.open(project.path)
    assert reopened.slide_mpp(name) == 0.62 and reopened.slide_for_path(folder) == name
    with reopened.open_slide(name) as reader:
        assert reader.mpp == (0.62, 0.62) and given_mpp(reader) == 0.62
    with rounds.open_project_slide(reopened, name) as reader:
        assert reader.mpp == (0.62, 0.62)
    # the same folder again: the name stays, a new resolution replaces the old one
    assert reopened.add_slide(folder, mpp=0.5) == name
    assert Project.open(project.path).slide_mpp(name) == 0.5
    assert reopened.add_slide(folder) == name  # none given: the recorded one stays
    assert Project.open(project.path).slide_mpp(name) == 0.5
    reopened.set_slide_mpp(name, None)
    assert "mpp" not in Project.open(project.path).slides[0]
    with reopened.open_slide(name) as reader:
        assert reader.mpp is None
    assert reopened.slide_for_path(folder.parent) is None


def test_a_slide_added_without_a_resolution_has_none_recorded(project, folder):
    name = project.add_slide(folder)
    assert project.slide_mpp(name) is None and "mpp" not in project.slides[0]
    # an in-memory slide can have one too
    memory = project.add_slide(None, name="memory", mpp=2.0)
    assert project.slide_mpp(memory) == 2.0
    assert project.add_slide(None, name="memory", mpp=3.0) == memory  # the same, re-measured
    assert Project.open(project.path).slide_mpp(memory) == 3.0
    with pytest.raises(ValueError, match="an in-memory slide needs a name"):
        project.add_slide(None, mpp=2.0)
    named = project.add_slide(folder.parent / "other", name="glas", mpp=0.62)
    assert named == "glas" and project.slide_mpp("glas") == 0.62
    with pytest.raises(ProjectError, match="has no file") as error:
        project.open_slide(memory)
    assert error.value.path == project.path / PROJECT_FILE
    with pytest.raises(ProjectError, match="no slide named 'nope'"):
        project.open_slide("nope")
    with pytest.raises(ProjectError, match="no slide named 'nope'"):
        project.set_slide_mpp("nope", 1.0)


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf"), "0.5", True])
def test_a_resolution_that_is_no_positive_number_is_refused(project, folder, bad):
    with pytest.raises(ValueError, match="positive number"):
        project.add_slide(folder, mpp=bad)
    assert project.slides == []
    name = project.add_slide(folder)
    with pytest.raises(ValueError, match="positive number"):
        project.set_slide_mpp(name, bad)
    assert project.slide_mpp(name) is None


@pytest.mark.parametrize("bad", ["-1", "0", '"0.5"', "true", "null", "[0.5]"])
def test_a_damaged_resolution_in_the_project_file_is_named(project, folder, bad):
    project.add_slide(folder, mpp=0.5)
    file = project.path / PROJECT_FILE
    text = file.read_text().replace('"mpp": 0.5', f'"mpp": {bad}')
    assert text != file.read_text()
    file.write_text(text)
    with pytest.raises(ProjectError, match="'patches' has a resolution that is not a positive") as e:
        Project.open(project.path)
    assert str(file) in str(e.value)
    assert file.read_text() == text  # left as it was


def test_the_resolution_of_a_slide_with_superpixels_is_not_changed(project, folder):
    name = project.add_slide(folder, mpp=0.62)
    run_to_end(rounds.ensure_superpixels(project, name, rounds.ALSettings(), model_mpp=1.24))
    superpixels = SuperpixelMap.open(project.superpixels_path(name))
    assert superpixels.mpp == pytest.approx(1.24)  # the working resolution: 2 level-0 pixels
    assert superpixels.level0_mpp == pytest.approx(0.62)
    for wanted in (0.5, None):
        with pytest.raises(ProjectError, match="superpixels were made at 0.62 µm per pixel") as e:
            project.set_slide_mpp(name, wanted)
        assert e.value.path == project.superpixels_path(name)
        assert e.value.hint.endswith("(Project dock) to start it over at the new resolution")
        with pytest.raises(ProjectError, match="remove its computed files"):
            project.add_slide(folder, mpp=0.5)
        assert Project.open(project.path).slide_mpp(name) == 0.62
    project.set_slide_mpp(name, 0.62)  # the same resolution again is no change
    project.add_slide(folder, mpp=0.62 * (1 + 1e-9))
    assert Project.open(project.path).slide_mpp(name) == pytest.approx(0.62)


def test_superpixels_made_without_a_resolution_keep_the_slide_without_one(project, folder):
    name = project.add_slide(folder)
    run_to_end(rounds.ensure_superpixels(project, name, rounds.ALSettings()))
    assert SuperpixelMap.open(project.superpixels_path(name)).mpp is None
    with pytest.raises(ProjectError, match="made at 1 µm per pixel of the slide, not 0.5"):
        project.set_slide_mpp(name, 0.5)
    project.set_slide_mpp(name, None)


def test_prepare_project_records_the_resolution_of_the_open_slide(tmp_path, project, folder):
    _, name = prepare_project(project.path, folder, "glas", mpp=0.62)
    assert Project.open(project.path).slide_mpp(name) == 0.62
    _, same = prepare_project(project.path, None, name, mpp=0.5)  # already registered
    assert same == name and Project.open(project.path).slide_mpp(name) == 0.5
    _, same = prepare_project(project.path, None, name)
    assert Project.open(project.path).slide_mpp(name) == 0.5


@pytest.fixture
def coarse_checkpoint(tmp_path):
    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    config = ModelConfig(arch="cam-avg", classes=("tumour", "normal"), width=0.125, mpp=1.24)
    return save_checkpoint(tmp_path / "coarse.pt", build_model(config), config)


def test_cli_slide_mpp_is_kept_by_the_project_for_later_runs(tmp_path, folder, coarse_checkpoint,
                                                             capsys):
    study = tmp_path / "cli.wslal"
    arguments = ["infer", str(folder), "--model", str(coarse_checkpoint), "--project", str(study),
                 "--tile-size", "64", "--overlap", "0", "--device", "cpu",
                 "--tissue-threshold", "0", "--maps", "fg"]
    assert main([*arguments, "--slide-mpp", "0.62"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "2 of 2 patches computed" in captured.out
    project = Project.open(study)
    assert project.slide_mpp("patches") == 0.62
    # the patches were read at the model's 1.24 µm/px: 128 px of 0.62 µm are 64 px
    from napari_wsl_al.core.infer import MapStore

    spec = MapStore(project.maps_path("patches")).read_info()["spec"]
    assert spec["resolution"] == {"level": 0, "downsample": 2.0, "mpp": 1.24}
    assert spec["slide"]["mpp"] == [0.62, 0.62]
    # a later run without the option reads the folder at the recorded resolution: no warning,
    # and the maps of the first run are reused
    assert main(arguments) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "0 of 2 patches computed" in captured.out
    # without a recorded resolution the warning names the option
    assert main([*arguments[:5], str(tmp_path / "other.wslal"), *arguments[6:]]) == 0
    assert "Give it with --slide-mpp" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-2", "abc", "inf"])
def test_cli_slide_mpp_must_be_a_positive_number(tmp_path, folder, bad, capsys):
    with pytest.raises(SystemExit):
        main(["infer", str(folder), "--project", str(tmp_path / "s"), "--slide-mpp", bad])
    assert "a positive number of microns per pixel" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_distributed_task_reads_the_slide_at_the_recorded_resolution(tmp_path, folder,
                                                                       coarse_checkpoint):
    from napari_wsl_al.core.infer import InferenceConfig
    from napari_wsl_al.core.infer.distributed import infer_slide_task

    project = Project.create(tmp_path / "dist", classes=["tumour", "normal"])
    name = project.add_slide(folder, mpp=0.62)
    config = InferenceConfig(tile_size=64, overlap=0, device="cpu", tissue_threshold=0.0,
                             maps=("fg",))
    summary = infer_slide_task(str(folder), name, str(coarse_checkpoint), str(project.path),
                               config.to_dict())
    from napari_wsl_al.core.infer import MapStore

    spec = MapStore(project.maps_path(name)).read_info()["spec"]
    assert spec["resolution"] == {"level": 0, "downsample": 2.0, "mpp": 1.24}
    assert summary["tiles_computed"] == 2
    assert np.isfinite(summary["seconds"])


def test_cli_slide_mpp_leaves_a_file_with_its_own_resolution_alone(tmp_path, folder,
                                                                  coarse_checkpoint, capsys):
    slide = tmp_path / "measured.tif"
    tifffile.imwrite(slide, gradient_image(128, 128), photometric="rgb",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    study = tmp_path / "mixed.wslal"
    assert main(["infer", str(folder), str(slide), "--model", str(coarse_checkpoint),
                 "--project", str(study), "--slide-mpp", "0.62", "--tile-size", "64",
                 "--overlap", "0", "--device", "cpu", "--tissue-threshold", "0",
                 "--maps", "fg"]) == 0
    err = capsys.readouterr().err
    assert (f"{slide}: the file records its own resolution (0.25 µm/px): --slide-mpp left out "
            "for it") in err
    project = Project.open(study)
    assert project.slide_mpp("patches") == 0.62 and project.slide_mpp("measured") is None


WRITER = """
import sys
from napari_wsl_al.core.project import Project
project = Project.open(sys.argv[1])
print("ready", flush=True)
n = 0
while True:  # record a new resolution, save, again, until killed
    project.set_slide_mpp("patches", (0.5, 0.62)[n % 2])
    n += 1
"""


def clean_state(project, mpp):
    """``project``'s file content with the folder's resolution ``mpp``."""
    data = json.loads(json.dumps(project.to_json()))
    data["slides"][0]["mpp"] = mpp
    return data


def test_a_process_killed_while_recording_resolutions_leaves_a_whole_project(project, folder):
    """``project.json`` is written atomically: a writer killed with SIGKILL at any point leaves
    the project as a clean run left it after one of its writes, never a torn file."""
    import signal
    import subprocess
    import sys
    import time

    project.add_slide(folder, mpp=0.62)
    project.add_slide(None, name="memory", mpp=2.0)
    before = Project.open(project.path)
    for delay in (0.2, 0.45, 0.7):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(project.path)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        after = Project.open(project.path)  # never torn: it opens
        # exactly what a clean run leaves after one of its writes
        assert after.to_json() in (clean_state(before, 0.5), clean_state(before, 0.62))
        with after.open_slide("patches") as reader:
            assert reader.mpp[0] == after.slide_mpp("patches")
