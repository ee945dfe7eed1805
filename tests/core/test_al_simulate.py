"""Simulated active learning on synthetic GlaS-layout patches: rounds, curves, outputs, the CLI."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_wsl_al.cli import main
from napari_wsl_al.core.al import simulate as sim
from napari_wsl_al.core.al.superpixels import SuperpixelConfig
from napari_wsl_al.core.al.train import RegionTrainConfig, load_round_model
from napari_wsl_al.core.data.synthetic import write_synthetic_patch_set
from napari_wsl_al.core.errors import DatasetError
from napari_wsl_al.core.progress import run_to_end


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as the rest of the suite runs (its float sums are the same in every
    order the tests run in; a 3-round toy simulation's Dice is that close from round to round)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    return write_synthetic_patch_set(
        tmp_path_factory.mktemp("patches"), n_per_class=4, shape=(160, 160), seed=3
    )


def small_config(**changes):
    config = sim.SimulationConfig(
        strategy="entropy",
        rounds=3,
        budget=12,
        mpp=1.24,
        val_fraction=0.25,
        superpixels=SuperpixelConfig(region_px=16),
        train=RegionTrainConfig(steps=40, batch_size=4, crop_size=64, lr=3e-3),
    )
    return replace(config, **changes)


@pytest.fixture(scope="module")
def prepared(patches):
    return sim.prepare_dataset(patches, small_config())


def test_prepare_splits_by_patient_and_numbers_regions(prepared):
    assert prepared.classes == ("background", "benign", "malignant")
    assert len(prepared.pool) + len(prepared.validation) == 8
    ids = np.concatenate([np.unique(i.superpixels[i.superpixels > 0]) for i in prepared.pool])
    # ids are unique over the pool images and numbered 1..n
    assert ids.size == np.unique(ids).size == prepared.n_regions
    assert ids.min() == 1 and ids.max() == prepared.n_regions
    for item, truth in zip(prepared.pool, prepared.pool_truth):
        assert item.image.shape[:2] == truth.shape == (80, 80)  # 160 px at half resolution
        assert set(np.unique(truth)) <= {0, 1, 2}
    assert prepared.adjacency.shape[1] == 2 and prepared.adjacency.shape[0] > 0


def test_simulation_raises_dice_over_rounds(prepared, tmp_path):
    config = small_config()
    rows = run_to_end(sim.simulate_run(prepared, config, tmp_path))
    assert [r["round"] for r in rows] == [0, 1, 2]
    fractions = [r["labelled_fraction"] for r in rows]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(
        36 / prepared.n_regions
    )
    clicks = [r["clicks"] for r in rows]
    assert clicks[0] >= 12 and clicks == sorted(clicks)
    assert rows[-1]["dice"] > rows[0]["dice"]
    for k in range(3):
        _, model_config = load_round_model(
            tmp_path / config.run_name / f"round_{k}.pt", prepared.classes
        )
        assert model_config.arch == "joint"


def test_final_labels_trained_again_from_the_initial_weights(prepared, tmp_path, monkeypatch):
    """``final_steps``: after the last round, the final labels train the initial model again
    for that many steps; its score goes on the last row, the rounds' scores are unchanged."""
    calls = []
    train_regions = sim.train_regions

    def recorded(model, items, region_classes, config, *args, **kwargs):
        weights = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        calls.append((config.steps, weights, int(np.asarray(region_classes).any(axis=1).sum())))
        return (yield from train_regions(model, items, region_classes, config, *args, **kwargs))

    monkeypatch.setattr(sim, "train_regions", recorded)
    config = small_config(rounds=2, final_steps=30)
    rows = run_to_end(sim.simulate_run(prepared, config, tmp_path))
    assert [steps for steps, _, _ in calls] == [40, 40, 30]
    # the third training starts from the weights the first one started from, on every label
    assert torch.equal(calls[2][1], calls[0][1]) and not torch.equal(calls[2][1], calls[1][1])
    assert calls[2][2] == calls[1][2] == 24
    assert [r["round"] for r in rows] == [0, 1]
    assert "final_dice" not in rows[0]
    assert 0.0 <= rows[-1]["final_dice"] <= 1.0 and 0.0 <= rows[-1]["final_miou"] <= 1.0
    assert rows[-1]["final_dice"] != rows[-1]["dice"]
    assert (tmp_path / config.run_name / "final.pt").is_file()
    with pytest.raises(ValueError, match="final_steps"):
        small_config(final_steps=-1)


def test_dominant_answers_cost_one_click_each(prepared):
    config = small_config(
        label="dominant",
        rounds=1,
        strategy="random",
        train=RegionTrainConfig(steps=2, batch_size=2, crop_size=32),
    )
    rows = run_to_end(sim.simulate_run(prepared, config))
    assert rows[0]["clicks"] == 12


def test_summary_and_outputs(tmp_path):
    rows = [
        {
            "strategy": "oreal",
            "label": "multi",
            "seed": s,
            "round": r,
            "clicks": 10 * (r + 1),
            "labelled_fraction": 0.01 * (r + 1),
            "dice": d,
            "miou": d,
            "gini": 0.1,
            "seconds": 1.0,
        }
        for s, dices in enumerate(([0.5, 0.6, 0.7], [0.6, 0.7, 0.8]))
        for r, d in enumerate(dices)
    ]
    summary = sim.summarize(rows[::-1])  # rows in any order: each seed's are sorted by round
    entry = summary["oreal-multi"]
    # AuALC of each seed: trapezoids over the labelled fractions, over their range:
    # seed 0: 0.01 * (0.55 + 0.65) / 0.02 = 0.6; seed 1: 0.7
    assert entry["auALC"] == pytest.approx(0.65)
    assert entry["auALC_std"] == pytest.approx(0.05)
    assert entry["final_dice"] == pytest.approx(0.75)  # the last rounds: 0.7 and 0.8
    assert entry["final_dice_std"] == pytest.approx(0.05)
    assert entry["final_labelled_fraction"] == pytest.approx(0.03)
    assert entry["seeds"] == 2
    assert "retrained_dice" not in entry
    rows[2]["final_dice"], rows[5]["final_dice"] = 0.8, 0.9  # last rows of seeds 0 and 1
    rows[1]["final_dice"] = 0.1  # not a last row: not counted
    entry = sim.summarize(rows)["oreal-multi"]
    assert entry["retrained_dice"] == pytest.approx(0.85)
    assert entry["retrained_dice_std"] == pytest.approx(0.05)
    assert entry["final_dice"] == pytest.approx(0.75)  # the rounds' own score is kept
    rows[5]["final_dice"] = ""  # as read back from a CSV without it
    assert sim.summarize(rows)["oreal-multi"]["retrained_dice"] == pytest.approx(0.8)
    sim.write_outputs(tmp_path, rows, {"full_supervision": {"dice": 0.9}})
    with open(tmp_path / "curves.csv") as stream:
        table = list(csv.DictReader(stream))
    assert list(table[0]) == list(sim.CURVE_COLUMNS) and len(table) == 6
    assert json.loads((tmp_path / "summary.json").read_text())["full_supervision"]["dice"] == 0.9
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_config_checks_and_json_round_trip():
    with pytest.raises(ValueError, match="strategy"):
        sim.SimulationConfig(strategy="best")
    with pytest.raises(ValueError, match="label"):
        sim.SimulationConfig(label="all")
    with pytest.raises(ValueError):
        sim.SimulationConfig(rounds=0)
    config = small_config(pseudo_labels=True, seed=2)
    assert sim.config_from_json(config.to_json()) == config
    assert config.run_name == "entropy-multi-pseudo-seed2"
    assert config.stage2 and not config.label_prop and config.label_name == "multi+pseudo"
    label_prop = small_config(pseudo_labels=True, pseudo_method="label_prop", seed=1)
    assert sim.config_from_json(label_prop.to_json()) == label_prop
    assert label_prop.run_name == "entropy-multi-labelprop-seed1"
    assert label_prop.label_name == "multi+label_prop"
    assert (label_prop.label_prop_k, label_prop.label_prop_lambda) == (40, 0.1)
    # the method alone does nothing without pseudo_labels
    assert small_config(pseudo_method="label_prop").run_name == "entropy-multi-seed0"
    with pytest.raises(ValueError, match="pseudo-label method"):
        small_config(pseudo_labels=True, pseudo_method="knn")
    with pytest.raises(ValueError, match="label_prop_k"):
        small_config(label_prop_k=0)
    with pytest.raises(ValueError, match="label_prop_lambda"):
        small_config(label_prop_lambda=-1.0)


def test_data_without_masks_is_refused(patches, tmp_path):
    import shutil

    copy = tmp_path / "nomasks"
    shutil.copytree(patches, copy)
    shutil.rmtree(copy / "masks")
    with pytest.raises(DatasetError, match="mask") as error:
        sim.prepare_dataset(copy, small_config())
    assert str(error.value) == (f"{copy}: the simulation needs a ground-truth mask for every "
                                "image (add masks/<name>.png files)")
    assert error.value.path == copy and error.value.hint == "add masks/<name>.png files"


def test_a_loaded_data_set_is_used_as_is_and_without_a_resolution_taken_as_glas(patches,
                                                                               prepared):
    from dataclasses import replace as replaced

    from napari_wsl_al.core.data.glas import load_glas

    dataset = load_glas(patches)
    assert dataset.mpp == 0.62
    again = sim.prepare_dataset(dataset, small_config())
    assert [item.name for item in again.pool] == [item.name for item in prepared.pool]
    unknown = sim.prepare_dataset(replaced(dataset, mpp=None), small_config())
    assert unknown.pool[0].image.shape == prepared.pool[0].image.shape == (80, 80, 3)
    # the data set given is used, not its folder read again: two patients' images of eight
    two = sim.prepare_dataset(replaced(dataset, records=dataset.records[:4]), small_config())
    assert len(two.pool) + len(two.validation) == 4


def test_cli_writes_curves_summary_picture_and_checkpoints(patches, tmp_path, capsys):
    out = tmp_path / "sim"
    code = main(
        [
            "simulate",
            str(patches),
            "--strategy",
            "random,oreal",
            "--label",
            "multi",
            "--rounds",
            "2",
            "--budget",
            "6",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--val-fraction",
            "0.25",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--crop-size",
            "32",
            "--region-px",
            "16",
            "--final-steps",
            "2",
        ]
    )
    assert code == 0
    for name in ("curves.csv", "summary.json", "curves.png"):
        assert (out / name).exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"random-multi", "oreal-multi"}
    assert 0.0 <= summary["strategies"]["oreal-multi"]["retrained_dice"] <= 1.0
    assert (out / "oreal-multi-seed0" / "round_1.pt").exists()
    assert (out / "oreal-multi-seed0" / "final.pt").exists()
    # the checkpoints read images at the resolution the simulation trained them at
    from napari_wsl_al.core.models.checkpoint import load_checkpoint

    for name in ("round_1.pt", "final.pt"):
        _, config, _ = load_checkpoint(out / "oreal-multi-seed0" / name)
        assert config.mpp == pytest.approx(1.24)
    printed = capsys.readouterr().out
    assert "AuALC" in printed and "trained again from the start: Dice" in printed


def test_same_seed_same_first_round_whatever_ran_before(prepared):
    import torch

    config = small_config(rounds=1, train=RegionTrainConfig(steps=2, batch_size=2, crop_size=32))
    first = run_to_end(sim.simulate_run(prepared, config))
    torch.rand(1000)  # move the global generator on
    again = run_to_end(sim.simulate_run(prepared, replace(config, strategy="oreal")))
    assert again[0]["dice"] == first[0]["dice"] and again[0]["clicks"] == first[0]["clicks"]


def test_prepare_keeps_image_classes_histograms_and_the_image_of_every_region(prepared, patches):
    from napari_wsl_al.core.data.glas import load_glas, split_by_patient

    split = split_by_patient(load_glas(patches), val_fraction=0.25, seed=0)
    assert prepared.image_classes.tolist() == [r.label for r in split.train.records]
    assert prepared.histograms.shape == (len(prepared.pool), 3, 32)
    np.testing.assert_allclose(prepared.histograms.sum(axis=2), 1.0)
    assert prepared.region_image[0] == -1
    for index, item in enumerate(prepared.pool):
        assert (prepared.region_image[np.unique(item.superpixels[item.superpixels > 0])]
                == index).all()


def test_random_picks_take_protected_regions_last():
    rng = np.random.default_rng(0)
    picks = sim._random_picks(rng, np.array([1, 2, 3]), np.array([7, 8, 9]), 5)
    assert sorted(picks[:3].tolist()) == [1, 2, 3] and set(picks[3:].tolist()) < {7, 8, 9}
    assert len(picks) == 5
    assert set(sim._random_picks(rng, np.arange(1, 11), np.array([20]), 4).tolist()) < set(
        range(1, 11))
    assert sorted(sim._random_picks(rng, np.array([1]), np.array([2]), 5).tolist()) == [1, 2]


def test_label_prop_simulation_protects_pseudo_labelled_images_and_writes_curves(
    patches, prepared, tmp_path
):
    config = small_config(
        strategy="oreal", pseudo_labels=True, pseudo_method="label_prop", budget=2, rounds=3,
        train=RegionTrainConfig(steps=6, batch_size=2, crop_size=32),
    )
    rows = run_to_end(sim.simulate_run(prepared, config, tmp_path))
    assert [r["label"] for r in rows] == ["multi+label_prop"] * 3
    # round 0: P is empty (the segmentation head had not been trained)
    assert rows[0]["pseudo_images"] == 0 and np.isnan(rows[0]["pseudo_dice"])
    # 2 picks label at most 2 of the pool images: the other images of their classes are in P
    assert 1 <= rows[1]["pseudo_images"] <= len(prepared.pool) - 1
    assert rows[2]["pseudo_images"] >= 1
    assert 0.0 <= rows[1]["pseudo_dice"] <= 1.0
    # the labelled images still have unlabelled regions: no pick falls in a P image
    assert [r["pseudo_queried"] for r in rows] == [0, 0, 0]
    assert rows[-1]["labelled_fraction"] == pytest.approx(6 / prepared.n_regions)
    assert (tmp_path / config.run_name / "round_2.pt").exists()
    # the command writes the curves with the label_prop rows
    out = tmp_path / "cli"
    code = main(["simulate", str(patches), "--strategy", "random", "--pseudo-labels",
                 "label_prop", "--label-prop-k", "2", "--label-prop-lambda", "0.5",
                 "--rounds", "2", "--budget", "2", "--out", str(out), "--val-fraction", "0.25",
                 "--steps", "3", "--batch-size", "2", "--crop-size", "32", "--region-px", "16"])
    assert code == 0
    with open(out / "curves.csv") as stream:
        table = list(csv.DictReader(stream))
    assert [r["label"] for r in table] == ["multi+label_prop"] * 2
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"random-multi+label_prop"}
    assert (out / "curves.png").stat().st_size > 1000
    saved = torch.load(out / "random-multi-labelprop-seed0" / "round_1.pt", weights_only=True)
    settings = saved["extra"]["simulation"]
    assert settings["pseudo_method"] == "label_prop" and settings["pseudo_labels"] is True
    assert (settings["label_prop_k"], settings["label_prop_lambda"]) == (2, 0.5)


def test_bare_pseudo_labels_flag_still_means_stage_2(patches, tmp_path):
    from napari_wsl_al.cli import build_parser

    args = build_parser().parse_args(
        ["simulate", str(patches), "--pseudo-labels", "--rounds", "1", "--out", str(tmp_path)])
    assert args.pseudo_labels == "stage2"
    args = build_parser().parse_args(["simulate", str(patches), "--out", str(tmp_path)])
    assert args.pseudo_labels is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["simulate", str(patches), "--pseudo-labels", "knn", "--out", str(tmp_path)])


def test_cross_validation_folds_hold_out_each_patient_once(patches):
    from napari_wsl_al.core.data.glas import load_glas, patient_folds

    expected = patient_folds(load_glas(patches), k=4, seed=0)
    held_out = []
    for fold in range(4):
        config = small_config(folds=4, fold=fold)
        assert config.run_name == f"entropy-multi-seed0-fold{fold}"
        data = sim.prepare_dataset(patches, config)
        names = [item.name for item in data.validation]
        assert names == [record.name for record in expected[fold].val.records]
        assert len(names) == 2 and len(data.pool) == 6  # one patient of four, both images
        assert not set(names) & {item.name for item in data.pool}
        held_out.extend(names)
    assert sorted(held_out) == sorted(record.name for record in load_glas(patches).records)
    assert small_config().run_name == "entropy-multi-seed0"  # one split: no fold in the name


@pytest.mark.parametrize("folds, fold", [(1, 0), (-2, 0), (4, 4), (4, -1), (0, 1)])
def test_a_fold_outside_the_folds_is_refused(folds, fold):
    with pytest.raises(ValueError, match=f"fold {fold} of {folds}"):
        small_config(folds=folds, fold=fold)


def test_cli_simulate_on_one_fold_of_a_cross_validation(patches, tmp_path, capsys):
    out = tmp_path / "cv"
    code = main(["simulate", str(patches), "--strategy", "random", "--rounds", "1",
                 "--budget", "2", "--out", str(out), "--cv", "4", "--fold", "1",
                 "--steps", "2", "--batch-size", "2", "--crop-size", "32", "--region-px", "16"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "6 pool images" in printed and "2 validation images" in printed
    saved = torch.load(out / "random-multi-seed0-fold1" / "round_0.pt", weights_only=True)
    assert saved["extra"]["simulation"]["folds"] == 4 and saved["extra"]["simulation"]["fold"] == 1
    assert main(["simulate", str(patches), "--cv", "4", "--fold", "4", "--out", str(out)]) == 2
    assert "fold 4 of 4" in capsys.readouterr().err


def test_the_smallest_rounds_budget_and_neighbours_are_one():
    small_config(rounds=1, budget=1, label_prop_k=1, label_prop_lambda=0.0)  # the least
    for changes in ({"rounds": 0}, {"budget": 0}):
        with pytest.raises(ValueError, match="^rounds and budget must be at least 1$"):
            small_config(**changes)
    with pytest.raises(ValueError, match="label_prop_k must be at least 1, not 0"):
        small_config(label_prop_k=0)


def test_cli_colour_jitter_reaches_every_run(tmp_path):
    import argparse

    from napari_wsl_al.commands import simulate as simulate_command
    from napari_wsl_al.core.al.train import RegionTrainConfig

    parser = argparse.ArgumentParser()
    simulate_command.add_arguments(parser)
    base = ["data", "--strategy", "random,oreal", "--rounds", "1", "--budget", "2", "--seeds",
            "2", "--out", str(tmp_path)]
    configs = list(simulate_command._configs(parser.parse_args(base + ["--colour-jitter", "0.2"])))
    assert len(configs) == 4 and {c.train.colour_jitter for c in configs} == {0.2}
    configs = list(simulate_command._configs(parser.parse_args(base)))
    assert {c.train.colour_jitter for c in configs} == {RegionTrainConfig().colour_jitter}
