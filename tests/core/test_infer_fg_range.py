"""A slide's Max-Min foreground is normalised once per slide, from a sample of tissue tiles."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from infer_models import gradient_image

from napari_wsl_al.core.infer import InferenceConfig, MapStore, infer_slide, tile_grid
from napari_wsl_al.core.infer.engine import FG_RANGE_SAMPLE_TILES
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.models.factory import ModelConfig, build_model
from napari_wsl_al.core.progress import run_to_end

FAST = {"tile_size": 64, "overlap": 0, "batch_size": 4, "device": "cpu", "readers": 1,
        "tissue_threshold": 0, "tissue_gate": False, "maps": ("fg",)}


def tiny_maxmin(**head):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="maxmin", classes=("a", "b"), width=0.0625, head=head))
    return model.eval()


def stored_range(path):
    return MapStore(path).read_info()["spec"].get("fg_range")


def test_the_slide_range_is_the_median_of_the_tiles_extremes_and_used_for_every_tile(tmp_path):
    reader = ArrayReader(gradient_image(200, 260), mpp=0.5)
    model = tiny_maxmin()
    result = run_to_end(infer_slide(reader, model, InferenceConfig(**FAST),
                                    MapStore(tmp_path / "s.zarr")))
    assert model.fg_range is None  # the model is left as it was
    # 4 x 5 tiles, fewer than the sample size: every tile is sampled.
    grid = tile_grid(reader, 64, 0, level=0)
    assert len(grid) == 20 <= FG_RANGE_SAMPLE_TILES
    lows, highs = [], []
    with torch.inference_mode():
        for row, col in grid.tiles:
            x, y = grid.position(row, col)
            tile = model.normalize(torch.from_numpy(reader.read_level(0, x, y, 64, 64))[None])
            mask = model.raw_mask(tile)[2]
            lows.append(float(mask.min()))
            highs.append(float(mask.max()))
    low, high = stored_range(tmp_path / "s.zarr")
    assert low == pytest.approx(float(np.median(lows)), abs=1e-6)
    assert high == pytest.approx(float(np.median(highs)), abs=1e-6)
    # Every tile used that range: the maps equal those of the model calibrated by hand.
    calibrated = copy.deepcopy(model)
    calibrated.fg_range = (low, high)
    fixed = run_to_end(infer_slide(reader, calibrated, InferenceConfig(**FAST),
                                   MapStore(tmp_path / "fixed.zarr")))
    assert stored_range(tmp_path / "fixed.zarr") is None  # a calibrated model keeps its own
    np.testing.assert_allclose(result.maps["fg"].levels[0].compute(),
                               fixed.maps["fg"].levels[0].compute(), atol=1e-6)
    # The tiles' own extremes differ, so per-tile min-max scaling would give other maps.
    assert np.ptp(lows) > 1e-3 and np.ptp(highs) > 1e-3


def test_a_region_and_a_resumed_run_share_the_slide_range(tmp_path):
    reader = ArrayReader(gradient_image(200, 260), mpp=0.5)
    model = tiny_maxmin()
    path = tmp_path / "s.zarr"
    first = run_to_end(infer_slide(reader, model, InferenceConfig(**FAST), MapStore(path),
                                   region=(0, 0, 60, 60)))
    in_region = stored_range(path)
    run_to_end(infer_slide(reader, model, InferenceConfig(**FAST), MapStore(tmp_path / "w.zarr")))
    assert stored_range(tmp_path / "w.zarr") == in_region
    # The rest of the slide resumes in the same store, with the range kept there.
    result = run_to_end(infer_slide(reader, model, InferenceConfig(**FAST), MapStore(path)))
    assert first.tiles_total == 1 and result.tiles_computed == 20 - 1 and stored_range(path) == in_region
