"""End-to-end test of ``napari-wsl-al infer`` on a small TIFF with a tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from infer_models import gradient_image

from napari_wsl_al.cli import main
from napari_wsl_al.core.infer import MapStore
from napari_wsl_al.core.project import Project


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    config = ModelConfig(arch="cam-avg", classes=("tumour", "normal"), width=0.125)
    return save_checkpoint(tmp_path / "tiny.pt", build_model(config), config)


def write_tiff(path, image):
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb")
    return path


def test_cli_infer_writes_maps_into_the_project(tmp_path, tiny_checkpoint, capsys):
    slide = write_tiff(tmp_path / "slide-a.tif", gradient_image(320, 384))
    project_path = tmp_path / "study.wslal"
    code = main([
        "infer", str(slide), "--model", str(tiny_checkpoint), "--project", str(project_path),
        "--level", "0", "--tile-size", "128", "--overlap", "32", "--batch-size", "4",
        "--maps", "cam,fg,uncertainty", "--device", "cpu", "--tissue-threshold", "0",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "maps written to" in out and "slide-a.zarr" in out
    project = Project.open(project_path)
    assert project.class_names == ("tumour", "normal")
    assert project.slide_names() == ["slide-a"]
    maps = MapStore(project.maps_path("slide-a")).handles()
    assert {"cam", "fg", "uncertainty/entropy", "uncertainty/ovr_entropy_max"} <= set(maps)
    fg = maps["fg"].levels[0].compute()
    assert fg.shape == (20, 24) and np.isfinite(fg).all()  # 16-pixel map pixels
    # Run again: nothing to compute.
    assert main([
        "infer", str(slide), "--model", str(tiny_checkpoint), "--project", str(project_path),
        "--level", "0", "--tile-size", "128", "--overlap", "32", "--batch-size", "4",
        "--maps", "cam,fg,uncertainty", "--device", "cpu", "--tissue-threshold", "0",
    ]) == 0
    assert "0 of 12 tiles computed" in capsys.readouterr().out
    # Map pixels of 32 pixels, the model's output stride, on request.
    assert main([
        "infer", str(slide), "--model", str(tiny_checkpoint), "--project", str(project_path),
        "--level", "0", "--tile-size", "128", "--overlap", "32", "--batch-size", "4",
        "--maps", "fg", "--device", "cpu", "--tissue-threshold", "0", "--map-stride", "32",
    ]) == 0
    assert MapStore(project.maps_path("slide-a")).handles()["fg"].levels[0].shape == (10, 12)
    with pytest.raises(SystemExit, match="map_stride must be a positive integer"):
        main(["infer", str(slide), "--model", str(tiny_checkpoint), "--project",
              str(project_path), "--map-stride", "0"])


def test_cli_infer_reports_typed_errors(tmp_path, tiny_checkpoint, capsys):
    glass = write_tiff(tmp_path / "glass.tif", np.full((256, 256, 3), 250, np.uint8))
    code = main(["infer", str(glass), "--model", str(tiny_checkpoint), "--project",
                 str(tmp_path / "p.wslal"), "--level", "0", "--tile-size", "128",
                 "--overlap", "0", "--device", "cpu"])
    assert code == 1
    assert "tissue" in capsys.readouterr().err
    code = main(["infer", str(glass), "--model", str(tmp_path / "missing.pt"), "--project",
                 str(tmp_path / "p.wslal"), "--device", "cpu"])
    assert code == 1
    assert "missing.pt" in capsys.readouterr().err


def test_cli_infer_refuses_a_model_for_other_classes(tmp_path, tiny_checkpoint, capsys):
    slide = write_tiff(tmp_path / "slide.tif", gradient_image(256, 256))
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    code = main(["infer", str(slide), "--model", str(tiny_checkpoint), "--project",
                 str(project.path), "--level", "0", "--tile-size", "128", "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    assert "project.json" in err and "['tumour', 'normal']" in err and "benign" in err
    assert not project.maps_dir.exists() or not any(project.maps_dir.iterdir())


def test_cli_infer_goes_on_past_slides_it_cannot_use_and_sums_up(tmp_path, tiny_checkpoint,
                                                                 capsys):
    good = write_tiff(tmp_path / "a.tif", gradient_image(256, 256))
    broken = tmp_path / "b.svs"
    broken.write_bytes(b"not a slide at all")
    glass = write_tiff(tmp_path / "c.tif", np.full((256, 256, 3), 250, np.uint8))
    last = write_tiff(tmp_path / "d.tif", gradient_image(256, 320))
    options = ["--model", str(tiny_checkpoint), "--project", str(tmp_path / "study.wslal"),
               "--level", "0", "--tile-size", "128", "--overlap", "0", "--device", "cpu"]
    code = main(["infer", str(good), str(broken), str(glass), str(last), *options])
    assert code == 1
    captured = capsys.readouterr()
    assert "d.tif: maps written to" in captured.out  # the slide after the failures was done
    assert "4 slides: 2 done, 0 reused (already computed), 2 failed" in captured.out
    assert f"failed: {broken}:" in captured.out and f"failed: {glass}:" in captured.out
    assert f"{broken}: error:" in captured.err and "tissue" in captured.err
    # the glass slide opened and stays registered (a lower --tissue-threshold may do); the
    # file that is not a slide is not
    assert Project.open(tmp_path / "study.wslal").slide_names() == ["a", "c", "d"]
    # again with the good ones: both reused, exit 0
    assert main(["infer", str(good), str(last), *options]) == 0
    assert "2 slides: 0 done, 2 reused (already computed), 0 failed" in capsys.readouterr().out


def test_cli_infer_warns_when_the_model_cannot_read_a_folder_at_its_resolution(tmp_path,
                                                                               capsys):
    from PIL import Image

    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    config = ModelConfig(arch="cam-avg", classes=("tumour", "normal"), width=0.125, mpp=2.48)
    model_path = save_checkpoint(tmp_path / "coarse.pt", build_model(config), config)
    folder = tmp_path / "patches"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(gradient_image(64, 64)).save(folder / f"p{i}.png")  # no resolution
    arguments = ["infer", str(folder), "--model", str(model_path), "--project",
                 str(tmp_path / "study.wslal"), "--tile-size", "64", "--overlap", "0",
                 "--device", "cpu", "--tissue-threshold", "0", "--maps", "fg"]
    assert main(arguments) == 0
    err = capsys.readouterr().err
    assert f"{folder}: warning: patches has no resolution (µm per pixel)" in err
    assert "model's resolution (2.48 µm/px) cannot be applied" in err
    assert "Give it with --slide-mpp" in err and "Slide widget" not in err
    assert main([*arguments, "--level", "0"]) == 0  # on its own pixels, knowingly
    assert "warning" not in capsys.readouterr().err
    # a slide with a resolution: no warning
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, gradient_image(128, 128), photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert main(["infer", str(slide), *arguments[2:]]) == 0
    assert "warning" not in capsys.readouterr().err
