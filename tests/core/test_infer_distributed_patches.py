"""Distributed inference of a folder of patches names its per-patch table, as one process does."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import torch
from infer_models import gradient_image, make_constant_model
from PIL import Image

from napari_wsl_al.cli import main
from napari_wsl_al.core.infer import InferenceConfig
from napari_wsl_al.core.infer.distributed import infer_slides_distributed
from napari_wsl_al.core.project import Project

distributed = pytest.importorskip("distributed")

COLOURS = [(200, 40, 90), (30, 180, 60), (90, 90, 220)]


def write_patches(folder):
    folder.mkdir()
    for index, colour in enumerate(COLOURS):
        image = np.empty((40, 48, 3), np.uint8)
        image[:] = colour
        Image.fromarray(image).save(folder / f"patch_{index}.png")
    return folder


@pytest.fixture
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None, protocol="tcp",
                                  host="127.0.0.1") as local:
        yield local


def test_summaries_name_the_patch_table_of_a_folder_and_none_for_a_slide(tmp_path, cluster):
    folder = write_patches(tmp_path / "cohort")
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, gradient_image(96, 96), tile=(64, 64), photometric="rgb")
    project = Project.create(tmp_path / "study", classes=["tumour", "normal"])
    config = InferenceConfig(level=0, tile_size=64, overlap=16, batch_size=4, device="cpu",
                             tissue_gate=False, tissue_threshold=0, maps=("fg", "probs"))
    patches, tiles = infer_slides_distributed([folder, slide], make_constant_model, project,
                                              config, cluster.scheduler_address)
    table = project.maps_dir / "cohort.patches.csv"
    assert patches["patches_csv"] == str(table) and table.is_file()
    assert patches["tiles_total"] == patches["tiles_computed"] == 3
    # ConstantModel: logits (2, 0.5) on every patch, so p(tumour) = 1 / (1 + e^-1.5)
    tumour = 1 / (1 + np.exp(-1.5))
    assert [p.name for p in patches["patches"]] == [f"patch_{i}.png" for i in range(3)]
    for prediction in patches["patches"]:
        assert prediction.prediction == "tumour"
        assert prediction.confidence == pytest.approx(tumour, abs=1e-6)
    with open(table, newline="") as stream:
        assert [row["patch"] for row in csv.DictReader(stream)] == [
            f"patch_{i}.png" for i in range(3)]
    assert tiles["patches_csv"] is None and tiles["patches"] == []


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    config = ModelConfig(arch="cam-avg", classes=("tumour", "normal"), width=0.125)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", build_model(config), config)


def test_cli_with_a_scheduler_prints_the_patch_classes_and_their_table(tmp_path, cluster,
                                                                         tiny_checkpoint,
                                                                         capsys):
    folder = write_patches(tmp_path / "cohort")
    project = tmp_path / "study.wslal"
    args = ["infer", str(folder), "--model", str(tiny_checkpoint), "--project", str(project),
            "--device", "cpu", "--maps", "fg,probs", "--scheduler", cluster.scheduler_address]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = project / "maps" / "cohort.patches.csv"
    with open(table, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["patch"] for row in rows] == [f"patch_{i}.png" for i in range(3)]
    assert f"maps written to {project / 'maps' / 'cohort.zarr'} (3 of 3 patches computed" in out
    counts = {name: sum(row["prediction"] == name for row in rows) for name in ("tumour", "normal")}
    first = next(name for name in ("tumour", "normal") if counts[name])
    assert f"  3 patches: {counts[first]} {first} (mean confidence" in out
    assert f"per-patch classes in {table}" in out
    assert "  least confident: " in out


def test_a_task_waits_only_as_long_as_its_lock_timeout(tmp_path, cluster):
    import time

    from filelock import FileLock

    from napari_wsl_al.core.infer.errors import MapStoreError
    from napari_wsl_al.core.infer.store import lock_path

    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, gradient_image(96, 96), tile=(64, 64), photometric="rgb")
    project = Project.create(tmp_path / "study", classes=["tumour", "normal"])
    config = InferenceConfig(level=0, tile_size=64, overlap=16, batch_size=4, device="cpu",
                             tissue_gate=False, tissue_threshold=0, maps=("fg",))
    project.maps_dir.mkdir(parents=True, exist_ok=True)
    store = project.maps_path(project.add_slide(slide))
    with FileLock(str(lock_path(store)), thread_local=False):  # another run writes the store
        started = time.perf_counter()
        with pytest.raises(MapStoreError, match="waited 0.3 s"):
            infer_slides_distributed([slide], make_constant_model, project, config,
                                     cluster.scheduler_address, lock_timeout=0.3)
        assert time.perf_counter() - started < 8.0  # not the store's default of 10 s
