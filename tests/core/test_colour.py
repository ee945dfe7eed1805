"""Colour normalisation (Reinhard in L*a*b*): conversions against scikit-image and by hand,
tissue statistics, the target, and models, data sets and train-wsl that carry it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from napari_wsl_al.core.models.colour import (
    colour_target,
    lab_to_rgb,
    normalise_image,
    reinhard,
    rgb_to_lab,
    tissue_stats,
)
from napari_wsl_al.core.models.factory import ModelConfig, build_model


def as_batch(image: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(dtype)


def stats_of(image: np.ndarray):
    mean, spread = tissue_stats(rgb_to_lab(as_batch(image) / 255.0))
    return mean[0].numpy(), spread[0].numpy()


def test_lab_conversions_match_scikit_image_and_known_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    lab = rgb_to_lab(as_batch(image) / 255.0)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(lab, rgb2lab(image), atol=1e-9)
    lab32 = rgb_to_lab(as_batch(image, torch.float32) / 255.0)
    assert lab32.dtype == torch.float32
    np.testing.assert_allclose(lab32[0].permute(1, 2, 0).numpy(), rgb2lab(image), atol=2e-3)
    back = lab_to_rgb(torch.from_numpy(rgb2lab(image)).permute(2, 0, 1)[None])
    np.testing.assert_allclose(back[0].permute(1, 2, 0).numpy(), lab2rgb(rgb2lab(image)),
                               atol=1e-9)
    np.testing.assert_allclose(back[0].permute(1, 2, 0).numpy() * 255, image, atol=1e-6)
    # by hand: white is L* 100, black 0, sRGB red (53.24, 80.09, 67.20) (CIE, D65)
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
                           dtype=torch.float64).T.reshape(1, 3, 1, 3)
    lab = rgb_to_lab(colours)[0, :, 0].T.numpy()
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.02)
    # out-of-gamut L*a*b* comes back clipped to [0, 1]
    wild = torch.tensor([50.0, 150.0, -150.0], dtype=torch.float64).view(1, 3, 1, 1)
    assert 0.0 <= float(lab_to_rgb(wild).min()) and float(lab_to_rgb(wild).max()) <= 1.0


def test_tissue_statistics_leave_glass_out():
    image = np.full((20, 20, 3), 250, np.uint8)  # glass: L* about 98
    image[:, :10] = (150, 80, 160)  # tissue on the left half
    mean, spread = stats_of(image)
    tissue = rgb2lab(np.full((1, 1, 3), (150, 80, 160), np.uint8))[0, 0]
    np.testing.assert_allclose(mean, tissue, atol=1e-6)
    np.testing.assert_allclose(spread, 0.0, atol=1e-4)
    # the spread is the standard deviation over the tissue pixels (numpy on scikit-image's L*a*b*)
    rng = np.random.default_rng(7)
    mixed = np.full((20, 20, 3), 250, np.uint8)
    mixed[:, :10] = np.clip(rng.normal((150, 80, 160), 20, (20, 10, 3)), 0, 255).astype(np.uint8)
    lab = rgb2lab(mixed)
    tissue_pixels = lab[lab[..., 0] < 88.0]
    mean, spread = stats_of(mixed)
    np.testing.assert_allclose(mean, tissue_pixels.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(spread, tissue_pixels.std(axis=0), atol=1e-6)
    # exactly 100 tissue pixels are enough; fewer: statistics over every pixel
    hundred = np.full((20, 20, 3), 250, np.uint8)
    hundred[:10, :10] = (150, 80, 160)
    np.testing.assert_allclose(stats_of(hundred)[0], tissue, atol=1e-6)
    small = np.full((20, 20, 3), 250, np.uint8)
    small[:5, :5] = (150, 80, 160)  # 25 pixels
    mean, _ = stats_of(small)
    every = rgb2lab(small).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(mean, every, atol=1e-6)


def tissue_like(seed: int, tint) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.asarray(tint, np.float64)
    image = base + rng.normal(0, 12, (48, 48, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_reinhard_gives_the_tissue_the_target_statistics():
    source = tissue_like(1, (170, 90, 170))
    other = tissue_like(2, (120, 70, 150))
    target = tuple(np.concatenate(stats_of(other)))
    out = reinhard(as_batch(source), target)
    assert out.shape == (1, 3, 48, 48) and out.dtype == torch.float64
    mean, spread = tissue_stats(rgb_to_lab(out / 255.0))
    np.testing.assert_allclose(mean[0].numpy(), target[:3], atol=0.05)
    np.testing.assert_allclose(spread[0].numpy(), target[3:], atol=0.05)
    # each image of a batch gets its own statistics
    both = reinhard(torch.cat([as_batch(source), as_batch(other)]), target)
    torch.testing.assert_close(both[:1], out)
    np.testing.assert_allclose(both[1].permute(1, 2, 0).numpy(), other, atol=0.05)
    image = normalise_image(source, target)
    assert image.dtype == np.uint8 and image.shape == source.shape
    np.testing.assert_allclose(image, out[0].permute(1, 2, 0).numpy(), atol=0.5 + 1e-9)


def test_colour_target_averages_the_images_statistics():
    a, b = tissue_like(3, (170, 90, 170)), tissue_like(4, (120, 70, 150))
    (mean_a, sd_a), (mean_b, sd_b) = stats_of(a), stats_of(b)
    expected = np.concatenate([(mean_a + mean_b) / 2, (sd_a + sd_b) / 2])
    np.testing.assert_allclose(colour_target([a, b]), expected, atol=1e-9)
    with pytest.raises(ValueError, match="at least one image"):
        colour_target([])


def test_models_carry_and_apply_their_colour_target(tmp_path):
    from napari_wsl_al.core.models.checkpoint import load_checkpoint, save_checkpoint

    target = (55.0, 25.0, -12.0, 14.0, 9.0, 7.0)
    config = ModelConfig(arch="cam-avg", width=0.0625, classes=("a", "b"), colour_target=target)
    assert config.to_dict()["colour_target"] == list(target)
    assert "colour_target" not in ModelConfig(arch="cam-avg").to_dict()  # older files alike
    assert ModelConfig.from_dict(config.to_dict()) == config
    for bad in ((1.0, 2.0), (55.0, 25.0, -12.0, 14.0, 0.0, 7.0), (np.nan,) * 6):
        with pytest.raises(ValueError, match="colour_target"):
            ModelConfig(colour_target=bad)
    model = build_model(config)
    assert model.colour_target == target
    images = torch.from_numpy(np.stack([tissue_like(5, (170, 90, 170))] * 2)).permute(0, 3, 1, 2)
    by_hand = reinhard(images.to(torch.float32), target) / 255.0
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(images), (by_hand - mean) / std, atol=1e-4,
                               rtol=1e-4)
    plain = build_model(ModelConfig(arch="cam-avg", width=0.0625, classes=("a", "b")))
    assert plain.colour_target is None
    assert not torch.allclose(plain.normalize(images), model.normalize(images), atol=1e-2)
    save_checkpoint(tmp_path / "m.pt", model, config)
    loaded, loaded_config, _ = load_checkpoint(tmp_path / "m.pt")
    assert loaded_config.colour_target == target and loaded.colour_target == target
    torch.testing.assert_close(loaded.normalize(images), model.normalize(images))


def test_joint_models_of_active_learning_keep_the_target():
    from napari_wsl_al.core.al.train import joint_config_from

    target = (55.0, 25.0, -12.0, 14.0, 9.0, 7.0)
    config = ModelConfig(arch="maxmin", width=0.0625, classes=("a", "b"), colour_target=target)
    joint = joint_config_from(config, ("background", "a", "b"))
    assert joint.colour_target == target and build_model(joint).colour_target == target


def test_training_images_are_normalised_whole_before_cropping(tmp_path):
    from PIL import Image

    from napari_wsl_al.core.data.glas import PatchRecord
    from napari_wsl_al.core.data.patches import PatchTorchDataset

    image = tissue_like(6, (170, 90, 170))
    Image.fromarray(image).save(tmp_path / "a.png")
    record = PatchRecord(name="a", image_path=tmp_path / "a.png", mask_path=None, label=0,
                         class_name="benign", patient_id="1")
    target = (55.0, 25.0, -12.0, 14.0, 9.0, 7.0)
    data = PatchTorchDataset([record], (0.5,) * 3, (0.25,) * 3, crop_size=None,
                             colour_target=target)
    loaded, _ = data.load(0)
    np.testing.assert_array_equal(loaded, normalise_image(image, target))
    plain, _ = PatchTorchDataset([record], (0.5,) * 3, (0.25,) * 3, crop_size=None).load(0)
    np.testing.assert_array_equal(plain, image)


def test_inference_on_patches_normalises_each_patch_as_the_model_does(tmp_path, shared_data):
    """A colour-target model's patch classes from ``infer`` equal the model on the whole,
    normalised image (one normalisation path: the model's own)."""
    import shutil

    from napari_wsl_al.core.data.patches import pad_to_multiple
    from napari_wsl_al.core.infer import InferenceConfig, MapStore, infer_slide
    from napari_wsl_al.core.io.image_backend import PatchFolderReader
    from napari_wsl_al.core.progress import run_to_end

    folder = tmp_path / "glas"
    folder.mkdir()
    for name in ("train_1", "train_12"):
        shutil.copy(shared_data / "glas_train" / "images" / f"{name}.png", folder)
    torch.manual_seed(0)
    target = (55.0, 25.0, -12.0, 14.0, 9.0, 7.0)
    model = build_model(ModelConfig(arch="cam-avg", width=0.0625, classes=("benign", "malignant"),
                                    mpp=0.62, colour_target=target)).eval()
    reader = PatchFolderReader(folder)
    result = run_to_end(infer_slide(reader, model, InferenceConfig(
        device="cpu", readers=1, maps=("probs",)), MapStore(tmp_path / "maps.zarr")))
    plain = build_model(ModelConfig(arch="cam-avg", width=0.0625, classes=("benign", "malignant"),
                                    mpp=0.62))
    plain.load_state_dict(model.state_dict())
    plain.eval()
    for index in range(len(reader.patch_names)):
        image = reader.read_patch(index)
        padded, _ = pad_to_multiple(image, np.zeros(image.shape[:2], np.uint8), 32)
        with torch.inference_mode():
            logits = model(model.normalize(torch.from_numpy(padded)[None]))["logits"][0]
            without = plain(plain.normalize(torch.from_numpy(padded)[None]))["logits"][0]
        expected = torch.softmax(logits, 0).numpy()
        np.testing.assert_allclose(result.patches[index].probabilities, expected, atol=2e-4)
        assert not np.allclose(torch.softmax(without, 0).numpy(), expected, atol=1e-4)


def test_a_slide_is_normalised_from_its_own_statistics_tile_after_tile(tmp_path, monkeypatch):
    """On a slide, every tile is moved from the slide's tissue statistics (a sample of its
    tiles, pooled), not from its own: two tiles of different colour keep their difference."""
    from napari_wsl_al.core.infer import InferenceConfig, MapStore, infer_slide
    from napari_wsl_al.core.io.memory_backend import ArrayReader
    from napari_wsl_al.core.models.base import WslModel
    from napari_wsl_al.core.models.colour import pooled_tissue_stats
    from napari_wsl_al.core.progress import run_to_end

    image = np.concatenate([tissue_like(8, (170, 90, 170)).repeat(4, 0).repeat(2, 1),
                            tissue_like(9, (110, 60, 140)).repeat(4, 0).repeat(2, 1)], axis=1)
    reader = ArrayReader(image, mpp=0.5, name="two-tints")  # 192 x 192, two halves
    target = (55.0, 25.0, -12.0, 14.0, 9.0, 7.0)
    model = build_model(ModelConfig(arch="cam-avg", width=0.0625, classes=("a", "b"),
                                    mpp=0.5, colour_target=target)).eval()
    seen = []
    normalize = WslModel.normalize

    def recorded(self, images, colour_source=None):
        seen.append(None if colour_source is None else tuple(colour_source))
        return normalize(self, images, colour_source)

    monkeypatch.setattr(WslModel, "normalize", recorded)
    config = InferenceConfig(device="cpu", readers=1, tile_size=64, overlap=0, maps=("cam",),
                             tissue_threshold=0.0)
    store = MapStore(tmp_path / "maps.zarr")
    run_to_end(infer_slide(reader, model, config, store))
    source = store.read_info()["spec"]["colour_source"]
    tiles = [image[y : y + 64, x : x + 64] for y in range(0, 192, 64) for x in range(0, 192, 64)]
    np.testing.assert_allclose(source, pooled_tissue_stats(tiles), rtol=1e-9)  # all 9 tiles
    assert seen and all(s == tuple(source) for s in seen)
    # the finished maps reused: the statistics come from the store, no tile is sampled again
    from napari_wsl_al.core.infer import engine

    sampled = []
    monkeypatch.setattr(engine, "_slide_colour_source",
                        lambda *args, **kwargs: sampled.append(1) or [0.0] * 6)
    again = run_to_end(infer_slide(reader, model, config, store))
    assert sampled == [] and again.tiles_computed == 0
    assert store.read_info()["spec"]["colour_source"] == source
    # the pooled statistics by hand: numpy over every tissue pixel of the slide (the tiles
    # are converted in float32, scikit-image works in float64)
    lab = rgb2lab(image).reshape(-1, 3)
    tissue = lab[lab[:, 0] < 88.0]
    np.testing.assert_allclose(source[:3], tissue.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(source[3:], tissue.std(axis=0), atol=1e-4)
    # the same source for a batch: one affine move in L*a*b*, the halves stay apart
    halves = torch.from_numpy(np.stack([tiles[0], tiles[2]])).permute(0, 3, 1, 2).double()
    moved = rgb_to_lab(reinhard(halves, target, source) / 255.0)
    own = rgb_to_lab(reinhard(halves, target) / 255.0)
    gap_moved = (moved[0].mean((1, 2)) - moved[1].mean((1, 2))).abs().sum()
    gap_own = (own[0].mean((1, 2)) - own[1].mean((1, 2))).abs().sum()
    assert float(gap_own) < 0.5 < float(gap_moved)


def test_pooled_statistics_leave_glass_out_and_need_tissue():
    from napari_wsl_al.core.models.colour import pooled_tissue_stats

    glass = np.full((10, 10, 3), 250, np.uint8)
    half = glass.copy()
    half[:, :5] = (150, 80, 160)
    stats = pooled_tissue_stats([half, glass])  # 50 tissue pixels of one colour, 150 of glass
    tissue = rgb2lab(np.full((1, 1, 3), (150, 80, 160), np.uint8))[0, 0]
    np.testing.assert_allclose(stats[:3], tissue, atol=1e-6)
    np.testing.assert_allclose(stats[3:], 0.0, atol=1e-4)
    assert pooled_tissue_stats([glass, glass]) is None and pooled_tissue_stats([]) is None


def test_fixed_statistics_are_applied_once_per_colour_with_the_same_result(shared_data):
    from napari_wsl_al.core.data.patches import read_rgb
    from napari_wsl_al.core.models.colour import reinhard_colours

    names = ("train_1", "train_2", "train_19")
    crops = [read_rgb(shared_data / "glas_train" / "images" / f"{n}.png")[:128, :160]
             for n in names]
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    target = (70.0, 20.0, -15.0, 10.0, 8.0, 7.0)
    source = (65.0, 25.0, -10.0, 12.0, 9.0, 8.0)
    expected = reinhard(images.float(), target, source)
    got = reinhard_colours(images, target, source)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    # whole levels, as the training images are rounded: within half a level of reinhard
    np.testing.assert_array_equal(got.numpy(), np.round(got.numpy()))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=0.5 + 1e-3)
    assert np.mean(got.numpy() == np.floor(expected.numpy() + 0.5)) > 0.999
    # every image keeps its own pixels (the gather puts each colour back where it was)
    assert not torch.equal(got[0], got[1])
    with pytest.raises(TypeError, match="uint8"):
        reinhard_colours(images.float(), target, source)
    # the model takes this path for a slide's tiles (fixed statistics), the same numbers
    model = build_model(ModelConfig(arch="cam-avg", classes=("a", "b"), width=0.0625,
                                    colour_target=target))
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    normalised = model.normalize(images.permute(0, 2, 3, 1), colour_source=source)
    np.testing.assert_allclose(normalised.numpy(), ((got / 255.0 - mean) / std).numpy(),
                               atol=1e-5)
    assert images.dtype == torch.uint8  # the input is left alone
