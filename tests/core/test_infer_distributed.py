"""Slide inference on a dask.distributed LocalCluster (threads, loopback)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from infer_models import gradient_image, make_constant_model

from napari_wsl_al.core.infer import InferenceConfig, MapStore
from napari_wsl_al.core.infer.distributed import infer_slides_distributed
from napari_wsl_al.core.project import Project

distributed = pytest.importorskip("distributed")


def test_one_task_per_slide_on_a_local_cluster(tmp_path):
    slides = []
    for index in range(2):
        path = tmp_path / f"slide{index}.tif"
        tifffile.imwrite(path, gradient_image(160, 200, seed=index), tile=(64, 64),
                         photometric="rgb")
        slides.append(path)
    project = Project.create(tmp_path / "study", classes=["tumour", "normal"])
    config = InferenceConfig(level=0, tile_size=64, overlap=16, batch_size=4, device="cpu",
                             tissue_gate=False,
                             tissue_threshold=0, maps=("fg", "probs"))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None, protocol="tcp",
                                  host="127.0.0.1") as cluster:
        summaries = infer_slides_distributed(slides, make_constant_model, project, config,
                                             cluster.scheduler_address)
    assert [s["name"] for s in summaries] == ["slide0", "slide1"]
    assert all(s["tiles_computed"] == s["tiles_total"] > 0 for s in summaries)
    assert Project.open(project.path).slide_names() == ["slide0", "slide1"]
    for name in ("slide0", "slide1"):
        fg = MapStore(project.maps_path(name)).handles()["fg"].levels[0].compute()
        np.testing.assert_allclose(fg, 0.7, atol=1e-6)


def test_slide_mpp_is_kept_for_the_slides_without_their_own(tmp_path):
    bare, measured = tmp_path / "bare.tif", tmp_path / "measured.tif"
    tifffile.imwrite(bare, gradient_image(128, 128), photometric="rgb")
    tifffile.imwrite(measured, gradient_image(128, 128, seed=1), photometric="rgb",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    project = Project.create(tmp_path / "study", classes=["tumour", "normal"])
    config = InferenceConfig(level=0, tile_size=64, overlap=0, batch_size=4, device="cpu",
                             tissue_gate=False, tissue_threshold=0, maps=("fg",))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None, protocol="tcp",
                                  host="127.0.0.1") as cluster:
        infer_slides_distributed([bare, measured], make_constant_model, project, config,
                                 cluster.scheduler_address, slide_mpp=0.5)
    reopened = Project.open(project.path)
    assert reopened.slide_mpp("bare") == 0.5 and reopened.slide_mpp("measured") is None
    for name, mpp in (("bare", 0.5), ("measured", 0.25)):  # each task read its slide at it
        spec = MapStore(project.maps_path(name)).read_info()["spec"]
        assert spec["slide"]["mpp"] == pytest.approx([mpp, mpp])
