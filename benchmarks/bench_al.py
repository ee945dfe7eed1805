"""Active-learning benchmark on GlaS (split by patient): strategies, labelling modes, pseudo labels,
against full supervision of the same model.

Parts (run them in separate processes to use both cores; each appends to its own CSV):

    python benchmarks/bench_al.py bar         # full supervision: the same model on every mask
    python benchmarks/bench_al.py strategies  # random, entropy, bvsb, pixbal, oreal; multi; 3 seeds
    python benchmarks/bench_al.py modes       # seed 0, oreal: dominant vs multi, pseudo labels
    python benchmarks/bench_al.py pseudo      # oreal multi with stage-2 pseudo labels; 3 seeds
    python benchmarks/bench_al.py labelprop   # seed 0, oreal multi with Label_prop (WACV'21)
    python benchmarks/bench_al.py final       # oreal, random: final labels trained as the bar
    python benchmarks/bench_al.py ema         # oreal multi, rounds ending on averaged weights
    python benchmarks/bench_al.py labelprop --no-pseudo   # the same run without it
    python benchmarks/bench_al.py glass       # CMU-1, round 0: glass among the first 20 picks
    python benchmarks/bench_al.py report      # reads the CSVs, prints the tables, draws curves.png
    python benchmarks/bench_al.py cv --fold 0 # 5-fold CV by patient: the bar and random, oreal
                                              # on fold 0 (one process per fold, or all folds)
    python benchmarks/bench_al.py cv-report   # per fold and over the folds: % of the bar
    python benchmarks/bench_al.py cv --strategies oreal --label dominant   # one class per answer
    python benchmarks/bench_al.py cv --strategies oreal --pseudo-labels   # stage-2 pseudo labels
    python benchmarks/bench_al.py cv --strategies oreal --first-seed 1  # another seed of the runs
                                              # (the same folds and bars; files end in -seed1)
    python benchmarks/bench_al.py cv --freeze --out DIR         # rounds train the decoder only
    python benchmarks/bench_al.py cv --self-training 1 --out DIR  # rounds with self-training
    python benchmarks/bench_al.py cv --colour-jitter 0.05 --out DIR  # rounds and bar with
                                              # colour augmentation of the crops
    python benchmarks/bench_al.py coverage --fold 0 --steps 600   # region labels, exact masks
                                              # in the same superpixels, every mask
    python benchmarks/bench_al.py sparse --steps 600 [--colour-jitter X] [--whole-image-colour]
                                  [--ema D] [--init scratch]
                                              # per fold: 300 random superpixels, every mask

Outputs go to ``benchmarks/results/al/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_wsl_al.core.al import simulate as sim
from napari_wsl_al.core.al.superpixels import SuperpixelConfig
from napari_wsl_al.core.al.train import RegionTrainConfig
from napari_wsl_al.core.metrics import al_curve_auc
from napari_wsl_al.core.progress import run_to_end

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "glas_train"
OUT = ROOT / "benchmarks" / "results" / "al"
STRATEGIES = ("random", "entropy", "bvsb", "pixbal", "oreal")


def base_config(args) -> sim.SimulationConfig:
    return sim.SimulationConfig(
        rounds=args.rounds,
        budget=args.budget,
        mpp=args.mpp,
        superpixels=SuperpixelConfig(region_px=args.region_px),
        init=args.init,
        train=RegionTrainConfig(steps=args.steps, batch_size=4, crop_size=192, lr=1e-3,
                                ema=args.ema, freeze_classifier=args.freeze,
                                self_training=args.self_training,
                                self_training_threshold=args.self_threshold,
                                colour_jitter=args.colour_jitter),
    )


def bar_config(config: sim.SimulationConfig) -> sim.SimulationConfig:
    """The bar: the whole model on every mask, whatever the rounds freeze or pseudo-label."""
    return replace(config, train=replace(config.train, freeze_classifier=False,
                                         self_training=0.0))


def _append(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    columns = list(sim.CURVE_COLUMNS) + [
        "loss", "fg_dice", "argmax_dice", "pseudo_images", "pseudo_dice", "pseudo_queried",
        "final_dice", "final_miou", "final_seconds"]
    with open(path, "a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _log(record) -> None:
    if record.message and ("Dice" in record.message or "full" in record.message):
        print(time.strftime("%H:%M:%S"), record.message, flush=True)


def run_bar(args, data) -> None:
    """Full supervision for seeds 0..``--seeds``-1, as the strategies; seeds already in
    ``full_supervision.json`` (with the same steps) are kept, so the part can be resumed."""
    path = OUT / "full_supervision.json"
    runs = load_bar(path).get("runs", [])
    done = {run["seed"] for run in runs if run["steps"] == args.bar_steps}
    for seed in range(args.seeds):
        if seed in done:
            continue
        config = bar_config(replace(base_config(args), seed=seed))
        result = run_to_end(sim.full_supervision(data, config, args.bar_steps), _log)
        runs.append({**result, "seed": seed, "regions": data.n_regions})
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(bar_summary(runs), indent=2))
        print(f"full supervision, seed {seed}", result, flush=True)


def load_bar(path: Path) -> dict:
    """The bar's file; one written before seeds were recorded holds one run of seed 0."""
    if not path.exists():
        return {}
    bar = json.loads(path.read_text())
    if "runs" not in bar:
        bar = bar_summary([{**bar, "seed": 0}])
    return bar


def bar_summary(runs: list[dict]) -> dict:
    """Mean and spread over seeds of the full-supervision runs (``dice`` is the mean)."""
    runs = sorted(runs, key=lambda run: run["seed"])
    dice = [run["dice"] for run in runs]
    return {
        "dice": float(np.mean(dice)),
        "dice_sd": float(np.std(dice)),
        "miou": float(np.mean([run["miou"] for run in runs])),
        "steps": runs[0]["steps"],
        "seconds": float(np.mean([run["seconds"] for run in runs])),
        "seeds": [run["seed"] for run in runs],
        "runs": runs,
    }


def run_runs(args, data, configs, name) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.csv"
    for config in configs:
        rows = run_to_end(sim.simulate_run(data, config, None), _log)
        _append(path, rows)


def report() -> int:
    rows = []
    for path in sorted(OUT.glob("*.csv")):
        name = path.stem.split("-")[0]
        if name in ("strategies", "modes", "labelprop"):
            with open(path) as stream:
                for row in csv.DictReader(stream):
                    for key in ("seed", "round", "clicks"):
                        row[key] = int(row[key])
                    for key in ("labelled_fraction", "dice", "miou", "gini", "seconds"):
                        row[key] = float(row[key])
                    row["part"] = name
                    rows.append(row)
    bar = load_bar(OUT / "full_supervision.json")
    if "dice" not in bar:
        print(f"no full-supervision bar in {OUT}: run the 'bar' part first", file=sys.stderr)
        return 1
    target = 0.95 * bar["dice"]
    per_seed = ", ".join(f"{run['dice']:.4f}" for run in bar["runs"])
    print(
        f"full supervision (same model, every mask): Dice {bar['dice']:.4f} +- "
        f"{bar['dice_sd']:.4f} over {len(bar['runs'])} seeds ({per_seed}), mIoU "
        f"{bar['miou']:.4f} ({bar['steps']} steps, {bar['seconds']:.0f} s a run); "
        f"95 % of it = {target:.4f}"
    )
    groups: dict[str, dict[int, list[dict]]] = {}
    for row in rows:
        # the labelprop runs are compared with each other, not pooled with older runs
        prefix = "labelprop: " if row["part"] == "labelprop" else ""
        key = f"{prefix}{row['strategy']}-{row['label']}"
        groups.setdefault(key, {}).setdefault(row["seed"], []).append(row)
    print(
        f"{'run':36s} {'seeds':>5s} {'AuALC':>14s} {'final Dice':>16s} {'final frac':>10s} "
        f"{'frac at 95%':>12s} {'Gini last':>9s} {'s/round':>8s}"
    )
    for key, seeds in sorted(groups.items()):
        aucs, finals, fracs, reach, ginis, secs = [], [], [], [], [], []
        for seed_rows in seeds.values():
            seed_rows.sort(key=lambda r: r["round"])
            aucs.append(
                al_curve_auc(
                    [r["labelled_fraction"] for r in seed_rows], [r["dice"] for r in seed_rows]
                )
            )
            finals.append(seed_rows[-1]["dice"])
            fracs.append(seed_rows[-1]["labelled_fraction"])
            hit = [r["labelled_fraction"] for r in seed_rows if r["dice"] >= target]
            reach.append(hit[0] if hit else float("nan"))
            ginis.append(seed_rows[-1]["gini"])
            secs.extend(r["seconds"] for r in seed_rows)
        reached = [r for r in reach if not np.isnan(r)]
        reach_text = (
            f"{100 * np.mean(reached):.2f}% ({len(reached)}/{len(reach)})"
            if reached
            else f"never (0/{len(reach)})"
        )
        print(
            f"{key:36s} {len(seeds):5d} {np.mean(aucs):.4f}+-{np.std(aucs):.4f} "
            f"{np.mean(finals):.4f}+-{np.std(finals):.4f} {100 * np.mean(fracs):9.2f}% "
            f"{reach_text:>12s} {np.mean(ginis):9.3f} {np.mean(secs):8.1f}"
        )
    print("Dice per round (mean over seeds), labelled fraction in %:")
    for key, seeds in sorted(groups.items()):
        rounds = sorted({r["round"] for rows_ in seeds.values() for r in rows_})
        cells = []
        for k in rounds:
            values = [r for rows_ in seeds.values() for r in rows_ if r["round"] == k]
            cells.append(
                f"{100 * np.mean([v['labelled_fraction'] for v in values]):.1f}%:"
                f"{np.mean([v['dice'] for v in values]):.3f}"
            )
        print(f"  {key:34s} " + " ".join(cells))
    final_rows = []
    for path in sorted((OUT / "final").glob("*.csv")):
        with open(path) as stream:
            final_rows += [row for row in csv.DictReader(stream) if row.get("final_dice")]
    if final_rows:
        print(f"final labels trained again from the start for {bar['steps']} steps, as the bar "
              "(bench_al.py final): Dice of the last round / retrained, per seed:")
        by_strategy: dict[str, list[dict]] = {}
        for row in final_rows:
            by_strategy.setdefault(row["strategy"], []).append(row)
        for strategy, runs in sorted(by_strategy.items()):
            runs.sort(key=lambda r: int(r["seed"]))
            last = [float(r["dice"]) for r in runs]
            again = [float(r["final_dice"]) for r in runs]
            print(f"  {strategy:10s} {len(runs)} seeds, "
                  f"{100 * float(runs[0]['labelled_fraction']):.2f}% labelled: rounds "
                  f"{np.mean(last):.4f}+-{np.std(last):.4f}, retrained {np.mean(again):.4f}+-"
                  f"{np.std(again):.4f} ({', '.join(f'{d:.3f}' for d in again)}); "
                  f"{sum(d >= target for d in again)} of {len(again)} at 95 %")
    strategy_rows = [r for r in rows if r["part"] == "strategies"]
    if strategy_rows:
        sim.plot_curves(OUT / "curves.png", strategy_rows, bar["dice"])
    mode_rows = [
        r
        for r in rows
        if r["part"] == "modes"
        or (r["part"] == "strategies" and r["strategy"] == "oreal" and r["seed"] == 0)
    ]
    if mode_rows:
        sim.plot_curves(OUT / "modes.png", mode_rows, bar["dice"])
    label_prop_rows = [r for r in rows if r["part"] == "labelprop"]
    if label_prop_rows:
        sim.plot_curves(OUT / "labelprop.png", label_prop_rows, bar["dice"])
        print("Label_prop runs per round: Dice (argmax) / Dice of 1 - P(background) > 0.5; "
              "pseudo-labelled images, their Dice, picks in P:")
        for row in label_prop_rows:
            pseudo = ""
            if row.get("pseudo_images"):
                pseudo = (f"; {row['pseudo_images']} images, Dice "
                          f"{float(row['pseudo_dice']):.3f}, picks in P {row['pseudo_queried']}")
            print(f"  {row['label']:18s} round {row['round']}: {row['dice']:.3f} / "
                  f"{float(row.get('fg_dice') or 'nan'):.3f}{pseudo}")
    return 0


def run_cv(args) -> None:
    """``--folds``-fold cross-validation by patient (the folds of ``bench_wsl.py --cv``): for
    each fold in ``--fold`` (all by default), the bar (seed 0) and each strategy (seed
    ``--first-seed``, 0 by default),
    with that fold as the validation images (``--final-steps N``: each run's final labels
    also trained again from the start for N steps, as the bar). Files in ``OUT/cv/``; a fold's part already
    written is kept, so the part can be resumed."""
    out = OUT / "cv"
    out.mkdir(parents=True, exist_ok=True)
    folds = args.fold if args.fold is not None else list(range(args.folds))
    for fold in folds:
        config = replace(base_config(args), folds=args.folds, fold=fold)
        data = sim.prepare_dataset(DATA, config)
        print(f"fold {fold}: {len(data.pool)} pool / {len(data.validation)} validation images, "
              f"{data.n_regions} superpixels", flush=True)
        bar_path = out / f"bar-fold{fold}.json"
        if not bar_path.exists():
            result = run_to_end(sim.full_supervision(data, bar_config(config), args.bar_steps),
                                _log)
            bar_path.write_text(json.dumps({**result, "fold": fold, "regions": data.n_regions,
                                            "validation": len(data.validation)}, indent=2))
            print(f"fold {fold}: full supervision {result}", flush=True)
        for strategy in args.strategies.split(","):
            suffix = ("" if args.label == "multi" else f"-{args.label}") + (
                "-pseudo" if args.pseudo_labels else "") + (
                f"-seed{args.first_seed}" if args.first_seed else "")
            path = out / f"fold{fold}-{strategy}{suffix}.csv"
            if path.exists():
                continue
            run = replace(config, strategy=strategy, final_steps=args.final_steps,
                          label=args.label, pseudo_labels=args.pseudo_labels,
                          seed=args.first_seed)
            rows = run_to_end(sim.simulate_run(data, run, None), _log)
            _append(path.with_suffix(".part"), rows)
            path.with_suffix(".part").rename(path)


def cv_report() -> int:
    """Each fold's bar and each strategy's last round as a part of it; mean +- sd over folds."""
    out = OUT / "cv"
    bars = {json.loads(p.read_text())["fold"]: json.loads(p.read_text())
            for p in sorted(out.glob("bar-fold*.json"))}
    if not bars:
        print(f"no cross-validation in {out}: run the 'cv' part first", file=sys.stderr)
        return 1
    runs: dict[str, dict[int, list[dict]]] = {}
    for path in sorted(out.glob("fold*-*.csv")):
        fold, strategy = path.stem.split("-", 1)
        with open(path) as stream:
            rows = list(csv.DictReader(stream))
        runs.setdefault(strategy, {})[int(fold[4:])] = rows
    print(f"{len(bars)} folds by patient; full supervision per fold (Dice, validation images): "
          + ", ".join(f"{f}: {b['dice']:.3f} ({b['validation']})" for f, b in sorted(bars.items())))
    dice = [b["dice"] for b in bars.values()]
    print(f"full supervision: {np.mean(dice):.4f} +- {np.std(dice):.4f}")
    curves: dict[str, list] = {}
    for strategy, folds in sorted(runs.items()):
        parts, finals, reached, aucs, fractions, at_five = [], [], [], [], [], []
        retrained: dict[int, float] = {}
        for fold, rows in sorted(folds.items()):
            if fold not in bars:
                continue
            rows.sort(key=lambda r: int(r["round"]))
            curve = [float(r["dice"]) for r in rows]
            fraction = [float(r["labelled_fraction"]) for r in rows]
            finals.append(curve[-1])
            if rows[-1].get("final_dice"):
                retrained[fold] = float(rows[-1]["final_dice"]) / bars[fold]["dice"]
            parts.append(curve[-1] / bars[fold]["dice"])
            curves.setdefault(strategy, []).append(
                (fraction, [d / bars[fold]["dice"] for d in curve]))
            fractions.append(fraction[-1])
            aucs.append(al_curve_auc(fraction, curve))
            hits = [f for f, d in zip(fraction, curve) if d >= 0.95 * bars[fold]["dice"]]
            if hits:
                reached.append(hits[0])
            within = [d for f, d in zip(fraction, curve) if f <= 0.05]  # the target's budget
            at_five.append(within[-1] / bars[fold]["dice"] if within else float("nan"))
        if not parts:
            continue
        each = ", ".join(f"{100 * p:.0f}" for p in parts)
        print(f"{strategy:8s} {len(parts)} folds at {100 * np.mean(fractions):.2f} % labelled: "
              f"Dice {np.mean(finals):.4f} +- {np.std(finals):.4f}, {100 * np.mean(parts):.1f} "
              f"+- {100 * np.std(parts):.1f} % of the bar (per fold: {each}); AuALC "
              f"{np.mean(aucs):.4f}; 95 % reached in {len(reached)} of {len(parts)} folds"
              + (f" (first at {100 * np.mean(reached):.2f} % labelled, mean; within 5 %: "
                 f"{sum(r <= 0.05 for r in reached)})" if reached else "")
              + f"; last round within 5 % labelled: {100 * np.nanmean(at_five):.1f} % of the bar")
        if retrained:
            shares = list(retrained.values())
            print(f"{strategy:8s} final labels trained again as the bar, {len(shares)} folds: "
                  f"{100 * np.mean(shares):.1f} +- {100 * np.std(shares):.1f} % of the bar (per "
                  f"fold: {', '.join(f'{100 * p:.0f}' for p in shares)}); 95 % reached in "
                  f"{sum(p >= 0.95 for p in shares)} of {len(shares)} folds")
    if curves:
        plot_cv_curves(out / "cv_curves.png", curves, len(bars))
    return 0


def plot_cv_curves(path: Path, curves: dict[str, list], folds: int) -> None:
    """Dice as a part of each fold's full-supervision Dice against the labelled fraction:
    mean over the folds (line) and spread (band), one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for strategy, runs in sorted(curves.items()):
        length = min(len(x) for x, _ in runs)
        x = 100 * np.mean([xs[:length] for xs, _ in runs], axis=0)
        y = 100 * np.array([ys[:length] for _, ys in runs])
        axes.plot(x, y.mean(axis=0), marker="o", label=f"{strategy} ({len(runs)} folds)")
        axes.fill_between(x, y.mean(axis=0) - y.std(axis=0), y.mean(axis=0) + y.std(axis=0),
                          alpha=0.2)
    axes.axhline(95, color="grey", linestyle=":", label="95 % of full supervision")
    axes.set_xlabel("superpixels labelled (%)")
    axes.set_ylabel("validation Dice, % of the fold's full supervision")
    seeds = "seed 0" if not any("-seed" in name for name in curves) else "seed 0 unless named"
    axes.set_title(f"Active learning on {folds} folds by patient (GlaS train), {seeds}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def run_glass(args) -> None:
    """Round-0 OREAL suggestions on CMU-1 with the shipped model: how many picks are glass.

    The same scores are ranked without the glass test and with exact ties only ("before") and
    as :func:`select_regions` does by default ("after"), for ``--seeds`` initial decoders (the
    segmentation head of round 0 is untrained, so its random start decides the scores).
    """
    import tempfile

    from napari_wsl_al.core.al import rounds
    from napari_wsl_al.core.al.acquisition import select_regions
    from napari_wsl_al.core.project import Project

    slide = ROOT.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
    settings = rounds.ALSettings(device="cpu")
    variants = {"before": {"max_glass_fraction": None, "tie_tolerance": 0.0}, "after": {}}
    totals = {tag: [0, 0, 0] for tag in variants}
    with tempfile.TemporaryDirectory() as folder:
        project = Project.create(Path(folder) / "study.wslal", classes=["benign", "malignant"])
        name = project.add_slide(slide)
        reader = rounds.open_project_slide(project, name)
        try:
            superpixels = run_to_end(rounds.ensure_superpixels(project, name, settings, reader))
            adjacency = superpixels.adjacency()
            print(f"CMU-1: {superpixels.n_regions} superpixels", flush=True)
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model, _ = rounds.current_model(project, settings, "cpu")
                stats = run_to_end(rounds.score_slide(model, reader, superpixels, settings))
                glass = stats.glass_fraction
                for tag, options in variants.items():
                    picks = select_regions(stats, "oreal", 20, adjacency=adjacency, **options)
                    mostly = int((glass[picks.ids] > 0.5).sum())
                    some = int((glass[picks.ids] > 0.2).sum())
                    distinct = len(np.unique(picks.scores))
                    for k, value in enumerate((mostly, some, distinct)):
                        totals[tag][k] += value
                    print(f"seed {seed} {tag}: {mostly} of 20 picks mostly glass (> 50 %), "
                          f"{some} with > 20 % glass; scores {picks.scores.min():.4f}.."
                          f"{picks.scores.max():.4f} ({distinct} distinct)", flush=True)
        finally:
            reader.close()
    for tag, (mostly, some, _) in totals.items():
        print(f"{tag}: {mostly} of {20 * args.seeds} picks mostly glass, {some} with > 20 % "
              "glass")


def _random_region_labels(data, count: int = 300, seed: int = 0):
    """``count`` random superpixels of the pool (``seed``) and their multi-hot answers as a
    ``(R+1, K)`` table."""
    rng = np.random.default_rng(seed)
    candidates = np.unique(np.concatenate(
        [np.unique(item.superpixels[item.superpixels > 0]) for item in data.pool]))
    picks = rng.choice(candidates, count, replace=False)
    answers = data.oracle.answer(picks, "multi")
    table = np.zeros((data.n_regions + 1, len(data.classes)), bool)
    table[answers.region_ids[answers.answered]] = answers.classes[answers.answered]
    return picks, table


def _dense_model(data, config, items, maps, around_labels: bool, steps: int,
                 normalised: bool = False):
    """The simulation's initial joint model trained ``steps`` steps on dense label ``maps`` (one
    per pool image, ``IGNORE_INDEX`` where unknown), crops centred on labelled pixels or
    anywhere; ``items`` are the pool images as trained on (``normalised``: already
    colour-normalised, so the model does not normalise them again). Returns the model and
    seconds."""
    from napari_wsl_al.core.al.losses import pseudo_label_ce
    from napari_wsl_al.core.al.train import (
        _augment,
        _crop_around,
        _Optimiser,
        _to_tensor,
        colour_jitter_config,
    )
    from napari_wsl_al.core.models.joint import IGNORE_INDEX

    torch.manual_seed(0)
    model, _ = sim._initial_model(config, data.classes)
    if normalised:
        model.colour_target = None
    optimiser = _Optimiser(model, replace(config.train, steps=steps), steps)
    colour = colour_jitter_config(config.train.colour_jitter)
    draw = np.random.default_rng(0)
    labelled = [np.flatnonzero(m.ravel() != IGNORE_INDEX) for m in maps]
    used = [i for i, index in enumerate(labelled) if index.size]
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        images, targets = [], []
        for _ in range(config.train.batch_size):
            i = used[int(draw.integers(len(used)))]
            height, width = maps[i].shape
            if around_labels:
                centre = divmod(int(labelled[i][int(draw.integers(labelled[i].size))]), width)
            else:
                centre = (int(draw.integers(height)), int(draw.integers(width)))
            crops = _augment(_crop_around([items[i].image, maps[i]], centre,
                                          config.train.crop_size, [0, IGNORE_INDEX]), draw, colour)
            images.append(crops[0])
            targets.append(crops[1].astype(np.int64))
        logits = model(_to_tensor(model, images, "cpu"))["seg_logits"]
        optimiser.step(pseudo_label_ce(logits, torch.from_numpy(np.stack(targets))))
    optimiser.finish()
    model.eval()
    return model, time.perf_counter() - start


def run_coverage(args) -> None:
    """Where the gap to full supervision comes from, on fold ``--fold`` (first given; 0 by
    default): the same 300 random superpixels (seed 0) as multi-hot region labels, as exact
    masks inside them, and every mask of the pool, each trained ``--steps`` steps from the
    shipped default and scored on the fold's validation images."""
    from napari_wsl_al.core.al.train import segmentation_scores, train_regions
    from napari_wsl_al.core.models.joint import IGNORE_INDEX

    fold = (args.fold or [0])[0]
    config = replace(base_config(args), folds=args.folds, fold=fold)
    data = sim.prepare_dataset(DATA, config)
    picks, table = _random_region_labels(data)
    print(f"fold {fold}: 300 random superpixels, {int((table.sum(1) > 1).sum())} with several "
          "classes", flush=True)

    def score(model, what, seconds):
        dice = segmentation_scores(model, data.validation, data.validation_truth)["dice"]
        print(f"{what} ({args.steps} steps, {seconds:.0f} s): Dice {dice:.4f}", flush=True)

    torch.manual_seed(0)
    model, _ = sim._initial_model(config, data.classes)
    result = run_to_end(train_regions(model, data.pool, table,
                                      replace(config.train, steps=args.steps, seed=0)))
    score(model, "multi-hot labels of the 300 superpixels", result["seconds"])
    inside = [np.where(np.isin(item.superpixels, picks), truth, IGNORE_INDEX).astype(np.uint8)
              for item, truth in zip(data.pool, data.pool_truth)]
    model, seconds = _dense_model(data, config, data.pool, inside, True, args.steps)
    score(model, "exact masks inside the same superpixels", seconds)
    model, seconds = _dense_model(data, config, data.pool, list(data.pool_truth), False,
                                  args.steps)
    score(model, "every mask of the pool", seconds)


def run_sparse(args) -> None:
    """How the rounds' training uses few labels, per fold (``--fold``; all by default): the
    same 300 random superpixels (seed 0) as multi-hot region labels, and every mask of the
    pool, each trained ``--steps`` steps from the shipped default (``--init scratch``: from
    random weights; ``--ema``: averaged weights), with the crops' colour
    augmentation of ``--colour-jitter`` and, with ``--whole-image-colour``, every image
    colour-normalised from its whole image's statistics instead of each crop from its own.
    One JSON line per fold, appended to ``OUT/sparse.jsonl``."""
    from napari_wsl_al.core.al.train import RegionItem, segmentation_scores, train_regions
    from napari_wsl_al.core.models.colour import normalise_image

    out = OUT / "sparse.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    for fold in (args.fold if args.fold is not None else range(args.folds)):
        config = replace(base_config(args), folds=args.folds, fold=fold)
        data = sim.prepare_dataset(DATA, config)
        _, table = _random_region_labels(data)
        pool, validation = data.pool, data.validation
        torch.manual_seed(0)
        model, _ = sim._initial_model(config, data.classes)
        if args.whole_image_colour:
            target = model.colour_target
            pool, validation = ([RegionItem(i.name, normalise_image(i.image, target),
                                            i.superpixels) for i in items]
                                for items in (data.pool, data.validation))
            model.colour_target = None
        result = run_to_end(train_regions(model, pool, table,
                                          replace(config.train, steps=args.steps, seed=0)))
        sparse = segmentation_scores(model, validation, data.validation_truth)["dice"]
        model, seconds = _dense_model(data, config, pool, list(data.pool_truth), False,
                                      args.steps, normalised=args.whole_image_colour)
        dense = segmentation_scores(model, validation, data.validation_truth)["dice"]
        row = {"fold": fold, "steps": args.steps, "init": config.init, "ema": config.train.ema,
               "colour_jitter": config.train.colour_jitter,
               "whole_image_colour": bool(args.whole_image_colour),
               "regions_dice": round(sparse, 4), "masks_dice": round(dense, 4),
               "part": round(sparse / dense, 4),
               "seconds": [round(result["seconds"]), round(seconds)]}
        print(json.dumps(row), flush=True)
        with open(out, "a") as stream:
            stream.write(json.dumps(row) + "\n")


def main(argv=None) -> int:
    global OUT
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part",
                        choices=("bar", "strategies", "modes", "pseudo", "labelprop", "glass",
                                 "final", "ema", "report", "cv", "cv-report", "coverage",
                                 "sparse"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="final, ema: start at this seed (parallel processes)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--bar-steps", type=int, default=1800)
    parser.add_argument("--mpp", type=float, default=1.24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ema", type=float, default=0.0,
                        help="weight averaging in each round's training (the ema part: 0.99)")
    parser.add_argument("--freeze", action="store_true",
                        help="rounds train the decoder only: backbone and classifier frozen "
                             "(WACV'21, Sec. 3); the bar trains everything")
    parser.add_argument("--self-training", type=float, default=0.0,
                        help="weight of the self-training loss in the rounds (0: off)")
    parser.add_argument("--self-threshold", type=float, default=0.9,
                        help="confidence of a self-training pseudo label")
    parser.add_argument("--colour-jitter", type=float,
                        default=RegionTrainConfig().colour_jitter,
                        help="colour augmentation of the crops, rounds and bar alike "
                             "(default: the rounds' default; 0: off)")
    parser.add_argument("--init", choices=("wsl", "scratch"), default="wsl",
                        help="the joint model's backbone and classifier: the shipped default's "
                             "(wsl) or random (scratch)")
    parser.add_argument("--region-px", type=int, default=32,
                        help="superpixel side at the working resolution (default 32)")
    parser.add_argument("--whole-image-colour", action="store_true",
                        help="sparse: colour-normalise whole images, not each crop")
    parser.add_argument("--tag", default="", help="suffix of the CSV (parallel processes)")
    parser.add_argument("--out", default=str(OUT),
                        help="results folder (default benchmarks/results/al)")
    parser.add_argument("--k", type=int, default=40, help="labelprop: neighbours (paper: 40)")
    parser.add_argument("--lam", type=float, default=0.1, help="labelprop: lambda (paper: 0.1)")
    parser.add_argument("--no-pseudo", action="store_true",
                        help="labelprop: the same run without Label_prop")
    parser.add_argument("--folds", type=int, default=5, help="cv: folds by patient")
    parser.add_argument("--final-steps", type=int, default=0,
                        help="cv: also train each run's final labels again from the start for "
                             "this many steps, as the bar (1800)")
    parser.add_argument("--label", choices=("multi", "dominant"), default="multi",
                        help="cv: the oracle's answers (dominant runs go to "
                             "fold<F>-<strategy>-dominant.csv)")
    parser.add_argument("--pseudo-labels", action="store_true",
                        help="cv: stage-2 pseudo labels in every round (runs go to "
                             "fold<F>-<strategy>-pseudo.csv)")
    parser.add_argument("--fold", type=int, nargs="+", default=None,
                        help="cv: only these folds (0-based; default all)")
    args = parser.parse_args(argv)
    OUT = Path(args.out)
    torch.set_num_threads(args.threads)
    if args.part == "report":
        return report()
    if args.part == "cv-report":
        return cv_report()
    if args.part == "glass":
        run_glass(args)
        return 0
    if args.part == "coverage":
        run_coverage(args)
        return 0
    if args.part == "sparse":
        run_sparse(args)
        return 0
    if not DATA.is_dir():
        print(f"{DATA} is missing", file=sys.stderr)
        return 1
    if args.part == "cv":
        if args.strategies == ",".join(STRATEGIES):
            args.strategies = "random,oreal"
        run_cv(args)
        return 0
    config = base_config(args)
    started = time.perf_counter()
    data = sim.prepare_dataset(DATA, config)
    print(
        f"prepared {len(data.pool)} pool / {len(data.validation)} validation images, "
        f"{data.n_regions} superpixels in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    if args.part == "bar":
        run_bar(args, data)
    elif args.part == "strategies":
        configs = [
            replace(config, strategy=s, seed=seed)
            for seed in range(args.seeds)
            for s in args.strategies.split(",")
        ]
        run_runs(args, data, configs, "strategies" + (f"-{args.tag}" if args.tag else ""))
    elif args.part == "pseudo":
        # one CSV per seed in results/al/pseudo/ (not pooled by the report)
        out = OUT / "pseudo"
        out.mkdir(parents=True, exist_ok=True)
        for seed in range(args.seeds):
            run = replace(config, strategy="oreal", label="multi", pseudo_labels=True, seed=seed)
            _append(out / f"oreal-pseudo-seed{seed}.csv",
                    run_to_end(sim.simulate_run(data, run, None), _log))
    elif args.part == "ema":
        # OREAL whose rounds end on an exponential moving average of the weights: one CSV per
        # seed in results/al/ema/ (not pooled by the report)
        out = OUT / "ema"
        out.mkdir(parents=True, exist_ok=True)
        decay = args.ema or 0.99
        run_config = replace(config, train=replace(config.train, ema=decay))
        for seed in range(args.first_seed, args.seeds):
            run = replace(run_config, strategy="oreal", label="multi", seed=seed)
            _append(out / f"oreal-ema{decay:g}-seed{seed}.csv",
                    run_to_end(sim.simulate_run(data, run, None), _log))
    elif args.part == "final":
        # the final labels of each run trained again from the start for --bar-steps steps, as
        # the bar is: one CSV per strategy and seed in results/al/final/ (not pooled)
        out = OUT / "final"
        out.mkdir(parents=True, exist_ok=True)
        for seed in range(args.first_seed, args.seeds):
            for strategy in args.strategies.split(","):
                run = replace(config, strategy=strategy, seed=seed, final_steps=args.bar_steps)
                _append(out / f"{strategy}-seed{seed}.csv",
                        run_to_end(sim.simulate_run(data, run, None), _log))
    elif args.part == "labelprop":
        configs = [replace(config, strategy="oreal", label="multi",
                           pseudo_labels=not args.no_pseudo, pseudo_method="label_prop",
                           label_prop_k=args.k, label_prop_lambda=args.lam)]
        run_runs(args, data, configs, "labelprop" + (f"-{args.tag}" if args.tag else ""))
    else:
        configs = [
            replace(config, strategy="oreal", label="dominant"),
            replace(config, strategy="oreal", label="multi", pseudo_labels=True),
        ]
        run_runs(args, data, configs, "modes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
