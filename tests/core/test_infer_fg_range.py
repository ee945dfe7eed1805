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


def tile_masks(reader, model, grid):
    """Each tile of ``grid`` as the model sees it and its raw mask (``raw_mask``)."""
    with torch.inference_mode():
        for row, col in grid.tiles:
            x, y = grid.position(row, col)
            tile = model.normalize(torch.from_numpy(reader.read_level(0, x, y, 64, 64))[None])
            yield tile, model.raw_mask(tile)[2]


def check_slide_range(reader, model, result, tmp_path, lows, highs):
    """The stored range is the medians of the tiles' extremes, and the run's maps equal those
    of the model calibrated by hand with it. Returns the range and the calibrated run."""
    low, high = stored_range(tmp_path / "s.zarr")
    assert low == pytest.approx(float(np.median(lows)), abs=1e-6)
    assert high == pytest.approx(float(np.median(highs)), abs=1e-6)
    calibrated = copy.deepcopy(model)
    calibrated.fg_range = (low, high)
    fixed = run_to_end(infer_slide(reader, calibrated, InferenceConfig(**FAST),
                                   MapStore(tmp_path / "fixed.zarr")))
    np.testing.assert_allclose(result.maps["fg"].levels[0].compute(),
                               fixed.maps["fg"].levels[0].compute(), atol=1e-6)
    return low, high, fixed


def test_the_slide_range_is_the_median_of_the_tiles_extremes_and_used_for_every_tile(tmp_path):
    reader = ArrayReader(gradient_image(200, 260), mpp=0.5)
    model = tiny_maxmin()
    result = run_to_end(infer_slide(reader, model, InferenceConfig(**FAST),
                                    MapStore(tmp_path / "s.zarr")))
    assert model.fg_range is None  # the model is left as it was
    # 4 x 5 tiles, fewer than the sample size: every tile is sampled.
    grid = tile_grid(reader, 64, 0, level=0)
    assert len(grid) == 20 <= FG_RANGE_SAMPLE_TILES
    masks = [mask for _, mask in tile_masks(reader, model, grid)]
    lows = [float(mask.min()) for mask in masks]
    highs = [float(mask.max()) for mask in masks]
    # Every tile used that range: the maps equal those of the model calibrated by hand.
    check_slide_range(reader, model, result, tmp_path, lows, highs)
    assert stored_range(tmp_path / "fixed.zarr") is None  # a calibrated model keeps its own
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


def tiny_cam_model(arch="wildcat"):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, classes=("a", "b"), width=0.0625)).eval()


def test_a_cam_models_slide_foreground_is_scaled_by_the_slides_range(tmp_path):
    reader = ArrayReader(gradient_image(200, 260), mpp=0.5)
    model = tiny_cam_model()
    assert model.fg_range is None
    result = run_to_end(infer_slide(reader, model, InferenceConfig(**FAST),
                                    MapStore(tmp_path / "s.zarr")))
    assert model.fg_range is None  # the model is left as it was
    grid = tile_grid(reader, 64, 0, level=0)
    lows, highs, tile_maps = [], [], []
    for tile, mask in tile_masks(reader, model, grid):
        with torch.inference_mode():
            output = model(tile)
        cam = output["cams"][0, int(output["logits"][0].argmax())]  # predicted class
        assert float(mask.min()) == pytest.approx(float(cam.min()), abs=1e-5)
        assert float(mask.max()) == pytest.approx(float(cam.max()), abs=1e-5)
        lows.append(float(mask.min()))
        highs.append(float(mask.max()))
        tile_maps.append(cam)
    _, high, _ = check_slide_range(reader, model, result, tmp_path, lows, highs)
    fg = result.maps["fg"].levels[0].compute()
    # per-tile min-max would put 0 and 1 in every tile; with one range, a tile whose CAM
    # stays below the slide's median maximum never reaches 1
    assert max(float(t.max()) for t in tile_maps) > high > min(float(t.max()) for t in tile_maps)
    assert fg.max() == pytest.approx(1.0) and fg.min() == pytest.approx(0.0)


def test_a_cam_models_localisation_by_hand():
    model = tiny_cam_model("cam-avg")
    cams = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]], [[1.0, 1.0], [1.0, 3.0]]]])
    # predicted class 0: its CAM, min-max normalised per image (the paper's protocol)
    output = {"cams": cams, "logits": torch.tensor([[2.0, 1.0]])}
    np.testing.assert_allclose(model.localize(output, (2, 2))[0, 0],
                               [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)
    # with a range (1, 5): (cam - 1) / 4, clipped to [0, 1]
    model.fg_range = (1.0, 5.0)
    np.testing.assert_allclose(model.localize(output, (2, 2))[0, 0],
                               [[0, 0.25], [0.75, 1]], atol=1e-6)
    # predicted class 1
    output["logits"] = torch.tensor([[0.0, 1.0]])
    np.testing.assert_allclose(model.localize(output, (2, 2))[0, 0],
                               [[0, 0], [0, 0.5]], atol=1e-6)
    # in training the range is not used
    model.train()
    np.testing.assert_allclose(model.localize(output, (2, 2))[0, 0],
                               [[0, 0], [0, 1]], atol=1e-6)


def test_the_sample_tiles_are_read_once_for_colour_and_foreground_range(tmp_path, monkeypatch):
    from napari_wsl_al.core.infer import engine
    from napari_wsl_al.core.models.colour import colour_target

    image = gradient_image(192, 192)
    reader = ArrayReader(image, mpp=0.5)
    model = tiny_cam_model()
    model.colour_target = colour_target([image])
    reads = []
    original = engine._TileReader.read_tile

    def counting(self, row, col):
        reads.append((row, col))
        return original(self, row, col)

    monkeypatch.setattr(engine._TileReader, "read_tile", counting)
    result = run_to_end(infer_slide(reader, model, InferenceConfig(**FAST),
                                    MapStore(tmp_path / "s.zarr")))
    spec = MapStore(tmp_path / "s.zarr").read_info()["spec"]
    assert spec["colour_source"] is not None and spec["fg_range"] is not None
    # 9 tiles: each read once for the sample (both statistics) and once by the run
    assert result.tiles_computed == 9 and len(reads) == 18
    assert sorted(set(reads)) == sorted(reads[:9])
