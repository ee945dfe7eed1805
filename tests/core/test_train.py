"""Tests of the WSL training loop, evaluation and the train-wsl command on tiny synthetic data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from napari_wsl_al.core.data.glas import load_glas, split_by_patient
from napari_wsl_al.core.data.patches import NO_AUGMENTATION
from napari_wsl_al.core.models.base import WslModel
from napari_wsl_al.core.progress import Progress, run_to_end
from napari_wsl_al.core.wsl.train import TrainConfig, evaluate, seed_everything, train_wsl

HEADER = "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\n"


class TinyCamModel(WslModel):
    """Three convolutions and average pooling of the class maps (CAM-Avg), output stride 4."""

    output_stride = 4
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, classes=("plain", "blob")):
        super().__init__()
        self.classes = tuple(classes)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.classifier = nn.Conv2d(8, len(self.classes), 1)
        self.epochs_ended = []

    def forward(self, x):
        cams = self.classifier(self.features(x))
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams}

    def end_epoch(self, epoch):
        self.epochs_ended.append(epoch)


def write_blob_glas(root: Path, count: int = 24, size: int = 48, seed: int = 0) -> Path:
    """GlaS-layout folder: class 'blob' images hold a bright disc (the mask), 'plain' do not."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = [HEADER]
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        has_blob = i % 2 == 1
        image = rng.normal(90, 12, (size, size, 3)).clip(0, 255)
        image[..., 2] += 40  # a pinkish-purple background
        mask = np.zeros((size, size), np.uint8)
        if has_blob:
            cy, cx = rng.integers(12, size - 12, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(6, 10) ** 2
            image[disc] = rng.normal(235, 8, (int(disc.sum()), 3))
            mask[disc] = 255
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"img_{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img_{i}.png")
        lines.append(f"img_{i},{i // 2}, {'blob' if has_blob else 'plain'}, x\n")
    (root / "grade.csv").write_text("".join(lines))
    return root


@pytest.fixture(scope="module")
def blob_split(tmp_path_factory):
    root = write_blob_glas(tmp_path_factory.mktemp("blobs") / "data")
    dataset = load_glas(root, classes=("plain", "blob"), mpp=None)
    return split_by_patient(dataset, val_fraction=0.25, seed=0)


def quick_config(**changes) -> TrainConfig:
    values = dict(
        epochs=8, batch_size=6, crop_size=32, lr=0.05, lr_schedule="constant", patience=None,
        seed=0, device="cpu", augment=NO_AUGMENTATION, num_threads=1,
    )
    values.update(changes)
    return TrainConfig(**values)


def train(split, config, model=None, **kwargs):
    seed_everything(config.seed)
    model = model or TinyCamModel()
    records = []
    result = run_to_end(train_wsl(model, split.train, split.val, config, **kwargs), records.append)
    return model, result, records


def test_tiny_model_learns_the_blob_class_and_beats_all_ones(blob_split):
    model, result, records = train(blob_split, quick_config(epochs=10))
    assert all(isinstance(r, Progress) for r in records) and len(records) == len(result.history)
    assert records[-1].step == len(records) and records[0].total == 10
    assert model.epochs_ended == list(range(len(result.history)))
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < losses[0]
    scores = evaluate(model, blob_split.val, "cpu")
    assert scores["error"] <= 1 / 6 + 1e-9
    assert scores["n_images"] == len(blob_split.val) and scores["n_masks"] == len(blob_split.val)
    assert scores["all_ones_f1_neg"] == 0.0
    assert scores["f1_neg"] > scores["all_ones_f1_neg"] + 0.3
    assert result.best_metrics["val_error"] == min(r["val_error"] for r in result.history)
    for key in ("train_ce", "val_f1_pos", "val_f1_neg", "seconds", "lr"):
        assert key in result.history[0]


def test_training_is_reproducible_on_cpu(blob_split):
    config = quick_config(epochs=3, augment=TrainConfig().augment)
    _, first, _ = train(blob_split, config)
    _, second, _ = train(blob_split, config)
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    assert [r["val_loss"] for r in first.history] == [r["val_loss"] for r in second.history]
    _, other, _ = train(blob_split, quick_config(epochs=3, seed=1, augment=config.augment))
    assert [r["train_loss"] for r in other.history] != [r["train_loss"] for r in first.history]


def test_early_stopping_and_best_state_restored(blob_split):
    # lr 0 and frozen batch-norm statistics: nothing changes, so the first epoch stays best
    # and training stops after `patience` epochs without improvement
    seed_everything(0)
    frozen = TinyCamModel()
    for module in frozen.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0
    model, result, _ = train(blob_split, quick_config(epochs=10, lr=0.0, patience=2), frozen)
    assert result.stopped == "early-stopping"
    assert len(result.history) == 3 and result.best_epoch == 0


def test_validation_every_n_epochs(blob_split):
    _, result, _ = train(blob_split, quick_config(epochs=5, eval_every=2))
    validated = [r["epoch"] for r in result.history if "val_error" in r]
    assert validated == [1, 3, 4] and result.best_epoch in validated


def test_best_epoch_weights_are_restored(blob_split):
    model, result, _ = train(blob_split, quick_config(epochs=4))
    again = evaluate(model, blob_split.val, "cpu")
    assert again["loss"] == pytest.approx(result.best_metrics["val_loss"], rel=1e-5)


def test_time_limit_and_no_validation(blob_split):
    _, result, _ = train(blob_split, quick_config(epochs=5, max_minutes=1e-6))
    assert result.stopped == "time-limit" and len(result.history) == 1
    seed_everything(0)
    model = TinyCamModel()
    result = run_to_end(train_wsl(model, blob_split.train, None, quick_config(epochs=2)))
    assert result.best_epoch == 1 and "val_error" not in result.history[-1]


def test_lr_schedules():
    cosine = TrainConfig(epochs=11, lr=0.1, lr_schedule="cosine", lr_min_factor=0.0)
    assert cosine.learning_rate(0) == pytest.approx(0.1)
    assert cosine.learning_rate(5) == pytest.approx(0.05)
    assert cosine.learning_rate(10) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(lr=0.1, lr_schedule="step", lr_step_epochs=3, lr_step_gamma=0.5)
    assert [step.learning_rate(e) for e in (0, 2, 3, 6)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    with pytest.raises(ValueError):
        TrainConfig(lr_schedule="exp")
    assert TrainConfig.from_dict(step.to_dict()) == step


def test_checkpoints_with_the_real_factory(blob_split, tmp_path):
    from napari_wsl_al.core.models.checkpoint import load_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    model_config = ModelConfig(arch="cam-avg", classes=("plain", "blob"), width=0.0625)
    seed_everything(0)
    model = build_model(model_config)
    result = run_to_end(
        train_wsl(model, blob_split.train, blob_split.val, quick_config(epochs=2),
                  checkpoint_dir=tmp_path, extra={"note": "test"})
    )
    assert result.checkpoint_path == tmp_path / "best.pt"
    loaded, config, extra = load_checkpoint(result.checkpoint_path)
    assert config == model_config and extra["note"] == "test"
    assert extra["best_epoch"] == result.best_epoch


def test_cli_trains_end_to_end_on_a_tiny_glas_folder(tmp_path, capsys):
    from napari_wsl_al.cli import main
    from napari_wsl_al.core.models.checkpoint import load_checkpoint

    data = write_blob_glas(tmp_path / "glas", count=16, size=64)
    out = tmp_path / "run" / "model.pt"
    log = tmp_path / "run" / "train.csv"
    code = main([
        "train-wsl", str(data), "--arch", "maxmin", "--depth", "18", "--width", "0.0625",
        "--epochs", "3", "--batch-size", "4", "--crop-size", "64", "--device", "cpu",
        "--val-fraction", "0.25", "--out", str(out), "--log", str(log), "--threads", "1",
        "--quiet", "--head", "t_init=5.0", "--card", str(tmp_path / "run" / "card.json"),
        "--no-reinhard", "--select", "error",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation" in printed and "F1+" in printed and "F1-" in printed
    with open(log, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and "train_loss" in rows[0] and "val_error" in rows[0]
    payload = json.loads(log.with_suffix(".json").read_text())
    assert payload["split"]["grouped_by"] == "patient" and len(payload["history"]) == 3
    model, config, extra = load_checkpoint(out)
    assert config.arch == "maxmin" and config.classes == ("blob", "plain")
    assert config.mpp == pytest.approx(0.62)
    assert extra["command"].startswith("napari-wsl-al train-wsl ")
    assert "--arch maxmin" in extra["command"] and "--epochs 3" in extra["command"]
    assert set(extra["val_metrics"]) >= {"error", "f1_pos", "f1_neg"}
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["model"]["architecture"] == "maxmin" and card["command"] == extra["command"]
    assert card["validation_percent"]["f1_neg"] == pytest.approx(100 * extra["val_metrics"]["f1_neg"],
                                                                 abs=0.01)
    with torch.inference_mode():
        output = model(torch.zeros(1, 3, 64, 64))
    assert output["logits"].shape == (1, 2)
    # Max-Min's foreground is calibrated on the training images and kept in the checkpoint
    low, high = config.head["fg_range"]
    assert high > low and model.fg_range == (low, high) and extra["fg_range"] == [low, high]
    assert config.colour_target is None and model.colour_target is None


def test_cli_reinhard_trains_a_model_that_keeps_its_colour_target(tmp_path, capsys):
    from napari_wsl_al.cli import main
    from napari_wsl_al.core.data.glas import load_glas, split_by_patient
    from napari_wsl_al.core.data.patches import read_rgb
    from napari_wsl_al.core.models.checkpoint import load_checkpoint
    from napari_wsl_al.core.models.colour import colour_target

    data = write_blob_glas(tmp_path / "glas", count=16, size=64)
    out = tmp_path / "model.pt"
    code = main([
        "train-wsl", str(data), "--arch", "cam-avg", "--depth", "18", "--width", "0.0625",
        "--epochs", "1", "--batch-size", "4", "--crop-size", "64", "--device", "cpu",
        "--val-fraction", "0.25", "--out", str(out), "--threads", "1", "--quiet", "--reinhard",
    ])
    assert code == 0
    model, config, extra = load_checkpoint(out)
    # the target of the training part of the split (the validation images left out)
    split = split_by_patient(load_glas(data), val_fraction=0.25, seed=0)
    expected = colour_target(read_rgb(record.image_path) for record in split.train)
    assert config.colour_target == pytest.approx(expected)
    assert model.colour_target == config.colour_target and "--reinhard" in extra["command"]


def test_cli_val_fraction_zero_trains_on_every_image_to_the_last_epoch(tmp_path, capsys):
    from napari_wsl_al.cli import main
    from napari_wsl_al.core.data.glas import load_glas
    from napari_wsl_al.core.data.patches import read_rgb
    from napari_wsl_al.core.models.checkpoint import load_checkpoint
    from napari_wsl_al.core.models.colour import colour_target

    data = write_blob_glas(tmp_path / "glas", count=12, size=64)
    out = tmp_path / "model.pt"
    arguments = [
        "train-wsl", str(data), "--arch", "wildcat", "--depth", "18", "--width", "0.0625",
        "--epochs", "2", "--batch-size", "4", "--crop-size", "64", "--device", "cpu",
        "--val-fraction", "0", "--out", str(out), "--threads", "1", "--quiet", "--reinhard",
    ]
    with pytest.raises(SystemExit, match="--select last"):
        main([*arguments, "--select", "error"])
    assert not out.exists()
    assert main(arguments) == 0  # the last epoch is kept by default
    assert "every image trains the model" in capsys.readouterr().err
    _, config, extra = load_checkpoint(out)
    assert extra["split"]["grouped_by"] == "none" and extra["split"]["val_images"] == []
    assert len(extra["split"]["train_images"]) == 12 and extra["val_metrics"] == {}
    assert extra["best_epoch"] == 1 and extra["epochs_run"] == 2
    assert not any(key.startswith("val_") for row in extra["history"] for key in row)
    # the colour target of all twelve images
    expected = colour_target(read_rgb(record.image_path) for record in load_glas(data))
    assert config.colour_target == pytest.approx(expected)


def test_split_by_patient_with_no_validation_fraction_keeps_every_image(tmp_path):
    from napari_wsl_al.core.data.glas import load_glas, split_by_patient

    dataset = load_glas(write_blob_glas(tmp_path / "glas", count=6, size=32))
    split = split_by_patient(dataset, val_fraction=0.0, seed=3)
    assert split.train == dataset and len(split.val) == 0 and split.val.classes == dataset.classes
    assert split.grouped_by == "none" and split.val_groups == () and split.seed == 3
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            split_by_patient(dataset, val_fraction=bad)


def test_cli_reports_a_broken_data_folder(tmp_path, capsys):
    from napari_wsl_al.cli import main

    assert main(["train-wsl", str(tmp_path / "absent"), "--epochs", "1"]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_architecture_choices_match_the_factory():
    from napari_wsl_al.commands.train_wsl import ARCHITECTURE_CHOICES
    from napari_wsl_al.core.models.factory import ARCHITECTURES

    assert tuple(ARCHITECTURE_CHOICES) == tuple(ARCHITECTURES)


def test_warmup_then_cosine_by_hand():
    config = TrainConfig(epochs=7, lr=0.3, lr_schedule="cosine", lr_min_factor=0.0,
                         warmup_epochs=2)
    # warm-up 0.3 * 1/3, 0.3 * 2/3; then cosine over the 5 remaining epochs (progress e/4)
    expected = [0.1, 0.2, 0.3, 0.3 * (1 + np.cos(np.pi / 4)) / 2, 0.15,
                0.3 * (1 + np.cos(3 * np.pi / 4)) / 2, 0.0]
    assert [config.learning_rate(e) for e in range(7)] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=3, warmup_epochs=3)
    for bad in ({"select_on": "accuracy"}, {"ema_decay": 1.0}, {"cutmix": 1.5}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_update_ema_by_hand():
    from napari_wsl_al.core.wsl.train import update_ema

    average, model = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        average.weight.copy_(torch.tensor([1.0, 2.0]))
        model.weight.copy_(torch.tensor([3.0, -2.0]))
        model.running_mean.copy_(torch.tensor([5.0, 6.0]))
    update_ema(average, model, 0.75)
    # 0.75 * 1 + 0.25 * 3 = 1.5 ; 0.75 * 2 + 0.25 * (-2) = 1.0 ; buffers copied
    assert average.weight.tolist() == pytest.approx([1.5, 1.0])
    assert average.running_mean.tolist() == [5.0, 6.0]
    assert model.weight.tolist() == [3.0, -2.0]


def test_same_class_cutmix_pastes_only_from_the_same_class():
    from napari_wsl_al.core.wsl.train import same_class_cutmix

    images = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 0, 2])
    generator = torch.Generator().manual_seed(0)
    mixed = same_class_cutmix(images, labels, 1.0, generator)
    assert torch.equal(images[:, 0, 0, 0], torch.arange(4.0))  # input untouched
    # 0 and 2 swap boxes; 1 and 3 have no partner of their class and stay as they were
    assert set(mixed[0].unique().tolist()) == {0.0, 2.0}
    assert set(mixed[2].unique().tolist()) == {0.0, 2.0}
    assert torch.equal(mixed[1], images[1]) and torch.equal(mixed[3], images[3])
    pasted = (mixed[0] == 2.0).float().mean().item()
    assert 0.25 - 1e-6 <= pasted <= 0.5 + 1e-6  # a quarter to a half of the area
    assert torch.equal(same_class_cutmix(images, labels, 0.0, generator), images)


def test_ema_select_on_last_and_flips_end_to_end(blob_split):
    model, result, _ = train(
        blob_split, quick_config(epochs=4, ema_decay=0.5, select_on="last", patience=1,
                                 warmup_epochs=1, cutmix=0.5, tta_flips=True)
    )
    # "last": no early stopping, the last epoch is kept, and it is the averaged weights
    assert len(result.history) == 4 and result.best_epoch == 3
    again = evaluate(model, blob_split.val, "cpu", flips=True)
    assert again["loss"] == pytest.approx(result.best_metrics["val_loss"], rel=1e-5)
    plain = evaluate(model, blob_split.val, "cpu")
    assert plain["loss"] != pytest.approx(again["loss"], rel=1e-6)


def test_select_on_loss_keeps_the_lowest_validation_loss(blob_split):
    _, result, _ = train(blob_split, quick_config(epochs=6, select_on="loss"))
    losses = [r["val_loss"] for r in result.history]
    assert result.best_epoch == int(np.argmin(losses))


def test_predict_with_flips_averages_flipped_back_maps(blob_split):
    from napari_wsl_al.core.wsl.train import make_torch_dataset, predict

    seed_everything(0)
    model = TinyCamModel()
    data = make_torch_dataset(blob_split.val, model, quick_config(), train=False)
    image, label, mask = data[0]
    flipped = [(image.flip(d) if d else image, label, mask) for d in ((), (-1,), (-2,), (-2, -1))]
    singles = [next(predict(model, [item], "cpu")) for item in flipped]
    back = [singles[0][2], singles[1][2][:, ::-1], singles[2][2][::-1], singles[3][2][::-1, ::-1]]
    _, probabilities, foreground, _ = next(predict(model, [data[0]], "cpu", flips=True))
    assert probabilities == pytest.approx(np.mean([s[1] for s in singles], axis=0), abs=1e-6)
    assert foreground == pytest.approx(np.mean(back, axis=0), abs=1e-6)


def test_train_wsl_defaults_are_the_cross_validated_recipe():
    import argparse

    from napari_wsl_al.commands.train_wsl import add_arguments, configs_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["data"])
    assert (args.arch, args.epochs, args.select, args.cutmix, args.ema, args.reinhard) == (
        "wildcat", 60, "last", 0.5, 0.99, True)
    args.reinhard = False  # the colour target needs images
    train, model = configs_from_args(args, ("a", "b"), 0.62)
    assert train.warmup_epochs == 3 and train.ema_decay == 0.99 and train.select_on == "last"
    assert model.arch == "wildcat" and model.mpp == 0.62
    for epochs, warmup in ((1, 0), (2, 1), (3, 2), (4, 3)):
        train, _ = configs_from_args(
            parser.parse_args(["data", "--epochs", str(epochs), "--no-reinhard"]), ("a", "b"), None)
        assert train.warmup_epochs == warmup
    train, _ = configs_from_args(
        parser.parse_args(["data", "--ema", "0", "--warmup", "0", "--no-reinhard"]), ("a", "b"), None)
    assert train.ema_decay is None and train.warmup_epochs == 0
    assert parser.parse_args(["data", "--no-reinhard"]).reinhard is False


def test_evaluate_reports_pxap_and_f1_at_other_thresholds(blob_split):
    from napari_wsl_al.core.metrics import foreground_background_f1, pixel_average_precision
    from napari_wsl_al.core.wsl.train import make_torch_dataset, predict

    torch.manual_seed(0)
    model = TinyCamModel()  # untrained: its maps are whatever they are, the sums must agree
    config = TrainConfig(eval_crop_size=None)
    items = list(predict(model, make_torch_dataset(blob_split.val, model, config, False), "cpu"))
    masks = [mask for *_, mask in items]
    maps = [foreground for _, _, foreground, _ in items]
    scores = evaluate(model, blob_split.val, "cpu", thresholds=(0.0, 0.5, 0.75))
    expected = pixel_average_precision(masks, maps)
    assert scores["pxap"] == pytest.approx(expected["pxap"])
    assert scores["prevalence"] == pytest.approx(expected["prevalence"])
    assert 0 < scores["prevalence"] < 0.5
    by_threshold = scores["f1_by_threshold"]
    assert list(by_threshold) == ["0.0", "0.5", "0.75"]
    assert by_threshold["0.5"] == [scores["f1_pos"], scores["f1_neg"]]
    at_75 = foreground_background_f1(masks, [m > 0.75 for m in maps])
    assert by_threshold["0.75"] == [at_75["f1_pos"], at_75["f1_neg"]]
    assert by_threshold["0.75"] != by_threshold["0.5"]
    # above 0 is every pixel but each image's minimum: close to all-ones
    assert by_threshold["0.0"][0] == pytest.approx(scores["all_ones_f1_pos"], abs=0.05)
    assert "f1_by_threshold" not in evaluate(model, blob_split.val, "cpu")


def test_evaluate_loss_and_confusion_without_class_names(blob_split):
    from napari_wsl_al.core.wsl.train import make_torch_dataset, predict

    torch.manual_seed(1)
    model = TinyCamModel()
    config = TrainConfig(eval_crop_size=None)
    items = list(predict(model, make_torch_dataset(blob_split.val, model, config, False), "cpu"))
    scores = evaluate(model, blob_split.val, "cpu")
    expected = np.mean([-np.log(probs[int(label)]) for label, probs, _, _ in items])
    assert scores["loss"] == pytest.approx(expected, rel=1e-6) and scores["loss"] > 0
    labels = [int(label) for label, *_ in items]
    predicted = [int(np.argmax(probs)) for _, probs, _, _ in items]
    assert max(labels + predicted) == 1
    assert scores["predicted"] == predicted
    model.classes = ()  # no class names: as many classes as the largest index seen + 1
    confusion = np.array(evaluate(model, blob_split.val, "cpu")["confusion"])
    assert confusion.shape == (2, 2) and confusion.sum() == len(items)
    assert confusion.tolist() == [[sum(1 for t, p in zip(labels, predicted) if (t, p) == (a, b))
                                   for b in range(2)] for a in range(2)]


def test_evaluate_an_empty_data_set(blob_split):
    scores = evaluate(TinyCamModel(), blob_split.val.subset([]), "cpu")
    assert np.isnan(scores["error"]) and np.isnan(scores["loss"])
    assert scores["n_images"] == 0 and scores["predicted"] == []
    assert scores["confusion"] == [[0, 0], [0, 0]] and "pxap" not in scores
