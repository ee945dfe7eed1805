"""Tests of tiled slide inference: seamless blending, alignment, uncertainty, resume, errors."""

from __future__ import annotations

import errno
import warnings

import numpy as np
import pytest
import torch
from infer_models import ConstantModel, DropoutModel, OomModel, RedModel, gradient_image

from napari_wsl_al.core.infer.engine import InferenceConfig, infer_slide
from napari_wsl_al.core.infer.errors import DiskFullError, NoTissueError
from napari_wsl_al.core.infer.store import MapStore, blend_window
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.progress import run_to_end

# No tissue skipping, no foreground gating: these tests check the blending of model outputs.
FAST = dict(tile_size=64, overlap=16, batch_size=4, device="cpu", tissue_threshold=0, readers=1,
            tissue_gate=False)


def run(reader, model, store_path, region=None, **changes):
    config = InferenceConfig(**{**FAST, **changes})
    return run_to_end(infer_slide(reader, model, config, MapStore(store_path), region=region))


def block_mean(image, k):
    h, w = image.shape[0] // k * k, image.shape[1] // k * k
    return image[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def test_blend_window_ramps_sum_to_one():
    w = blend_window(16, 4)
    assert np.allclose(w[-4:] + w[:4], 1.0)
    assert (w > 0).all() and np.allclose(w[4:12], 1.0)


def test_constant_model_gives_constant_maps_across_tile_borders(tmp_path):
    reader = ArrayReader(gradient_image(200, 280), mpp=0.5)
    result = run(reader, ConstantModel(), tmp_path / "m.zarr")
    assert result.tiles_total == result.tiles_computed == 4 * 6
    fg = result.maps["fg"].levels[0].compute()
    assert fg.shape == (50, 70)
    np.testing.assert_allclose(fg, 0.7, atol=1e-6)
    cam = result.maps["cam"].levels[0].compute()
    expected = torch.softmax(torch.tensor([2.0, 0.5]), 0).numpy()
    np.testing.assert_allclose(cam, expected[:, None, None] * np.ones((1, 50, 70)), atol=1e-6)
    np.testing.assert_allclose(result.maps["bg"].levels[0].compute(), 0.3, atol=1e-6)


def test_foreground_and_cams_are_gated_by_tissue(tmp_path):
    image = np.full((128, 192, 3), 245, np.uint8)  # white glass ...
    image[:, 96:] = (200, 80, 160)  # ... beside pink tissue
    reader = ArrayReader(image, mpp=0.5)
    result = run(reader, ConstantModel(), tmp_path / "m.zarr", tissue_gate=True)
    fg = result.maps["fg"].levels[0].compute()
    bg = result.maps["bg"].levels[0].compute()
    np.testing.assert_allclose(fg[:, :22], 0.0, atol=1e-6)  # glass: never foreground
    np.testing.assert_allclose(fg[:, 26:], 0.7, atol=1e-6)  # tissue: the model's value
    np.testing.assert_allclose(fg + bg, 1.0, atol=1e-6)
    cam = result.maps["cam"].levels[0].compute()
    expected = torch.softmax(torch.tensor([2.0, 0.5]), 0).numpy()
    np.testing.assert_allclose(cam[:, :, :22], 0.0, atol=1e-6)
    np.testing.assert_allclose(cam[:, :, 26:], expected[:, None, None] * np.ones((1, 32, 22)),
                               atol=1e-6)
    ungated = run(reader, ConstantModel(), tmp_path / "u.zarr")
    np.testing.assert_allclose(ungated.maps["fg"].levels[0].compute(), 0.7, atol=1e-6)


def test_maps_align_with_the_slide(tmp_path):
    image = gradient_image(192, 256)
    reader = ArrayReader(image, mpp=0.5)
    result = run(reader, RedModel(), tmp_path / "m.zarr", maps=("cam",), cam_normalisation="none")
    handle = result.maps["cam"]
    cam = handle.levels[0].compute()[0]
    np.testing.assert_allclose(cam, block_mean(image[..., 0] / 255.0, 4), atol=1e-5)
    # Map pixel j covers slide pixels 4j..4j+3, whose centres average at 0.5 * (4j + 1.5) um.
    assert handle.scale == (2.0, 2.0) and handle.translate == (0.75, 0.75)
    assert handle.unit == "micrometer"


def test_maps_align_at_a_coarser_resolution(tmp_path):
    image = gradient_image(256, 256)
    reader = ArrayReader(image, mpp=0.5)
    result = run(reader, RedModel(), tmp_path / "m.zarr", maps=("cam",), cam_normalisation="none",
                 mpp=1.0)
    cam = result.maps["cam"].levels[0].compute()[0]
    np.testing.assert_allclose(cam, block_mean(image[..., 0] / 255.0, 8), atol=2e-3)
    assert result.maps["cam"].scale == (4.0, 4.0)
    assert result.maps["cam"].translate == (1.75, 1.75)


def test_region_fills_only_its_tiles(tmp_path):
    image = gradient_image(256, 256)
    reader = ArrayReader(image, mpp=0.5)
    result = run(reader, RedModel(), tmp_path / "m.zarr", region=(0, 0, 40, 40), maps=("cam",),
                 cam_normalisation="none")
    assert result.tiles_total == 1
    cam = result.maps["cam"].levels[0].compute()[0]
    np.testing.assert_allclose(cam[:16, :16], block_mean(image[:64, :64, 0] / 255.0, 4),
                               atol=1e-5)
    assert (cam[20:, 20:] == 0).all()


def test_uncertainty_maps_match_a_hand_computation(tmp_path):
    reader = ArrayReader(gradient_image(128, 128), mpp=0.5)
    model = ConstantModel(logits=(1.0, 0.2))
    result = run(reader, model, tmp_path / "m.zarr")
    p = np.exp([1.0, 0.2]) / np.exp([1.0, 0.2]).sum()
    entropy = -(p * np.log(p)).sum()
    ovr = -p * np.log(p) - (1 - p) * np.log(1 - p)
    maps = {name: h.levels[0].compute() for name, h in result.maps.items()}
    np.testing.assert_allclose(maps["probs"][:, 5, 5], p, atol=1e-6)
    np.testing.assert_allclose(maps["uncertainty/entropy"], entropy, atol=1e-5)
    np.testing.assert_allclose(maps["uncertainty/margin"], abs(p[0] - p[1]), atol=1e-5)
    np.testing.assert_allclose(maps["uncertainty/ovr_entropy"][:, 3, 7], ovr, atol=1e-5)
    np.testing.assert_allclose(maps["uncertainty/ovr_entropy_max"], ovr.max(), atol=1e-5)
    assert "uncertainty/mc_variance" not in maps


def test_mc_dropout_variance(tmp_path):
    reader = ArrayReader(gradient_image(64, 64), mpp=0.5)
    model = DropoutModel().eval()
    result = run(reader, model, tmp_path / "m.zarr", maps=("probs", "uncertainty"), mc_passes=4,
                 overlap=0)
    variance = result.maps["uncertainty/mc_variance"].levels[0].compute()
    assert variance.shape == (8, 8) and (variance > 0).all()
    assert not model.training and not model.drop.training  # eval mode restored
    with pytest.raises(ValueError):
        InferenceConfig(maps=("mc_variance",), mc_passes=1)


def test_cancel_then_resume_recomputes_only_missing_tiles(tmp_path):
    reader = ArrayReader(gradient_image(256, 256), mpp=0.5)
    reference = run(reader, RedModel(), tmp_path / "ref.zarr", maps=("cam",),
                    cam_normalisation="none")
    store = MapStore(tmp_path / "m.zarr")
    config = InferenceConfig(**{**FAST, "maps": ("cam",), "cam_normalisation": "none"})
    job = infer_slide(reader, RedModel(), config, store)
    next(job), next(job)
    job.close()  # what a napari worker's quit() does between batches
    done = store.done_bitmap()
    assert 0 < done.sum() < reference.tiles_total
    resumed = run(reader, RedModel(), tmp_path / "m.zarr", maps=("cam",), cam_normalisation="none")
    assert resumed.tiles_computed == reference.tiles_total - done.sum()
    np.testing.assert_allclose(resumed.maps["cam"].levels[0].compute(),
                               reference.maps["cam"].levels[0].compute(), atol=1e-6)


def test_finished_maps_reopen_without_running_the_model(tmp_path):
    reader = ArrayReader(gradient_image(128, 128), mpp=0.5)
    run(reader, ConstantModel(), tmp_path / "m.zarr")
    model = ConstantModel()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    again = run(reader, model, tmp_path / "m.zarr")
    assert again.tiles_computed == 0 and calls == []
    assert set(again.maps) >= {"cam", "fg", "bg", "probs", "uncertainty/entropy"}
    # Other settings: the maps are recomputed (with a warning), not mixed.
    with pytest.warns(UserWarning, match="other settings"):
        other = run(reader, model, tmp_path / "m.zarr", overlap=0)
    assert other.tiles_computed == other.tiles_total


def test_pyramid_levels_are_written(tmp_path):
    reader = ArrayReader(gradient_image(1200, 1200), mpp=0.5)
    result = run(reader, ConstantModel(), tmp_path / "m.zarr", maps=("fg",), tile_size=128,
                 overlap=32, batch_size=16)
    levels = result.maps["fg"].levels
    assert [lvl.shape for lvl in levels] == [(300, 300), (150, 150)]
    np.testing.assert_allclose(levels[1].compute(), 0.7, atol=1e-6)


def test_empty_tissue_raises(tmp_path):
    reader = ArrayReader(np.full((300, 300, 3), 255, np.uint8), mpp=0.5, name="glass")
    config = InferenceConfig(**{**FAST, "tissue_threshold": 0.05})
    with pytest.raises(NoTissueError, match="tissue"):
        run_to_end(infer_slide(reader, ConstantModel(), config, MapStore(tmp_path / "m.zarr")))


def test_slide_smaller_than_a_tile(tmp_path):
    image = gradient_image(40, 52)
    reader = ArrayReader(image, mpp=0.5)
    result = run(reader, RedModel(), tmp_path / "m.zarr", maps=("cam",), cam_normalisation="none")
    cam = result.maps["cam"].levels[0].compute()[0]
    assert cam.shape == (10, 13)
    np.testing.assert_allclose(cam, block_mean(image[..., 0] / 255.0, 4), atol=1e-5)


def test_full_disk_gives_a_typed_error_and_keeps_finished_maps(tmp_path, monkeypatch):
    from zarr.storage import LocalStore

    reader = ArrayReader(gradient_image(256, 256), mpp=0.5)
    first = run(reader, RedModel(), tmp_path / "a.zarr", maps=("cam",), cam_normalisation="none")
    before = first.maps["cam"].levels[0].compute()
    original = LocalStore.set
    calls = []

    async def failing_set(self, key, value, *args, **kwargs):
        calls.append(key)
        if len(calls) > 20 and "a.zarr" not in str(self.root):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original(self, key, value, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "set", failing_set)
    with pytest.raises(DiskFullError, match="disk is full") as info:
        run(reader, RedModel(), tmp_path / "b.zarr", maps=("cam",), cam_normalisation="none")
    assert "b.zarr" in str(info.value)
    monkeypatch.setattr(LocalStore, "set", original)
    after = MapStore(tmp_path / "a.zarr").handles()["cam"].levels[0].compute()
    np.testing.assert_array_equal(before, after)
    resumed = run(reader, RedModel(), tmp_path / "b.zarr", maps=("cam",), cam_normalisation="none")
    np.testing.assert_allclose(resumed.maps["cam"].levels[0].compute(), before, atol=1e-6)


def test_out_of_memory_halves_the_batch(tmp_path):
    reader = ArrayReader(gradient_image(128, 128), mpp=0.5)
    model = OomModel(limit=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(reader, model, tmp_path / "m.zarr", batch_size=4)
    assert any("batch size reduced to 2" in str(w.message) for w in caught)
    assert any("batch size reduced to 1" in str(w.message) for w in caught)
    np.testing.assert_allclose(result.maps["fg"].levels[0].compute(), 0.7, atol=1e-6)
    assert result.tiles_computed == result.tiles_total
