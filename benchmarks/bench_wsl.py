"""Benchmark of the WSL methods on GlaS train (80/20 split by patient): error, F1+, F1-, seconds/epoch.

Run from the repository root::

    .venv/bin/python benchmarks/bench_wsl.py --epochs 10 --minutes 6

Cross-validation grouped by patient (the way recipes are chosen)::

    .venv/bin/python benchmarks/bench_wsl.py --cv 5 --methods "Max-Min (SEM+ASC)" \
        --recipe baseline --epochs 40
    .venv/bin/python benchmarks/bench_wsl.py --table   # every recipe measured so far

With ``--cv K`` the data set is cut into K folds by patient (:func:`patient_folds`); each fold
is predicted by a model trained on the other folds, whose epoch is chosen on an inner
validation part of its training patients (``--select error|loss``) or is the last one
(``--select last``, no inner part). One line per recipe and method (mean and spread over the
folds, and each fold) is appended to ``benchmarks/results/wsl_cv.jsonl``. Each fold also
records the pixel average precision of the foreground maps (``pxap``, threshold-free; a map
that knows nothing scores ``prevalence``), F1+ / F1- at other thresholds
(``f1_by_threshold``) and the misclassified images (one view each), which
``--breakdown RECIPE`` counts by patient and by the finer grade of ``grade.csv``.
``--members N`` trains N models per fold (other seeds) and scores their average.

For CAM-Avg, WILDCAT, Max-Min (SEM + ASC) and min-max entropy, each model is trained from
scratch with the same seed, split, crops and schedule, bounded by ``--epochs`` and
``--minutes``; the epoch with the lowest validation classification error is kept and evaluated
on the full validation images. The table is printed and written to a JSON file.

Reference (Belharbi et al., Max-Min uncertainty, GlaS Table 1, ImageNet-pretrained ResNet-18,
hundreds of epochs, GPU, official test split): WILDCAT F1+ 67.21 / F1- 22.96, Max-Min (EEM)
72.11 / 69.07, all-ones 66.01 / 0.00. The setting here differs: no ImageNet weights (offline),
a narrow ResNet, a few epochs, a CPU, and the held-out part of the training split.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "src"))

from napari_wsl_al.core.data.glas import (
    load_glas,
    patient_folds,
    split_by_patient,
)
from napari_wsl_al.core.data.patches import AugmentConfig, read_rgb
from napari_wsl_al.core.models.backbones import load_backbone_weights
from napari_wsl_al.core.models.colour import colour_target
from napari_wsl_al.core.models.factory import CAM_ARCHITECTURES, ModelConfig, build_model
from napari_wsl_al.core.models.maxmin import calibrate_foreground
from napari_wsl_al.core.progress import run_to_end
from napari_wsl_al.core.wsl.train import (
    TrainConfig,
    evaluate,
    make_torch_dataset,
    seed_everything,
    train_wsl,
)

#: Benchmarked methods: label -> (architecture, head overrides).
METHODS = {
    "CAM-Avg": ("cam-avg", {}),
    "WILDCAT": ("wildcat", {}),
    "Max-Min (SEM+ASC)": ("maxmin", {"regularizer": "sem", "use_size_constraint": True}),
    "Min-max entropy": ("minmax-entropy", {}),
}

#: GlaS Table 1 of the Max-Min paper (test split): classification error, F1+, F1- in %.
PAPER_TABLE_1 = {
    "All-ones": (None, 66.01, 0.00),
    "CAM-Avg": (0.00, 66.90, 17.88),
    "WILDCAT": (1.25, 67.21, 22.96),
    "Max-Min (SEM+ASC)": (0.00, 71.94, 69.23),  # EEM: 0.00 / 72.11 / 69.07
}

SETTING_NOTE = (
    "Setting differs from the paper: no ImageNet weights (offline; trained from scratch), "
    "ResNet-{depth} width {width}, at most {epochs} epochs / {minutes} min per method, CPU "
    "({threads} threads, shared machine), validation = held-out patients of GlaS train "
    "(not the GlaS test set)."
)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data" / "glas_train"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=10, help="epochs per method (upper bound)")
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-time bound per method")
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--output-stride", type=int, choices=(32, 16, 8), default=32,
                        help="input pixels per CAM pixel (16, 8: the last stages dilated)")
    parser.add_argument("--crop-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPOSITORY / "benchmarks" / "results" / "bench_wsl.json"))
    recipe = parser.add_argument_group("recipe (cross-validation)")
    recipe.add_argument("--cv", type=int, default=0, help="K-fold cross-validation by patient")
    recipe.add_argument("--folds", type=int, nargs="+", default=None,
                        help="only these folds (0-based), e.g. to spread a run over machines")
    recipe.add_argument("--recipe", default="baseline", help="name of the recipe in the table")
    recipe.add_argument("--target-mpp", type=float, default=None,
                        help="read the images at this resolution (GlaS is 0.62 um/px)")
    recipe.add_argument("--warmup", type=int, default=0, help="warm-up epochs")
    recipe.add_argument("--weight-decay", type=float, default=1e-4)
    recipe.add_argument("--ema", type=float, default=None, help="weight EMA decay, e.g. 0.99")
    recipe.add_argument("--select", choices=("error", "loss", "last"), default="loss")
    recipe.add_argument("--patience", type=int, default=None)
    recipe.add_argument("--cutmix", type=float, default=0.0, help="same-class CutMix probability")
    recipe.add_argument("--tta", action="store_true", help="test-time flips")
    recipe.add_argument("--hed", type=float, default=0.03, help="stain augmentation strength")
    recipe.add_argument("--scale", type=float, default=0.0,
                        help="multi-scale crops: side x a factor in [1/(1+X), 1+X]")
    recipe.add_argument("--colour", type=float, default=0.1,
                        help="brightness / contrast / saturation jitter")
    recipe.add_argument("--pretrained", default=None, metavar="PATH",
                        help="backbone weights loaded into each fold's model before training "
                             "(e.g. from 'napari-wsl-al pretrain-ssl'); name their source in "
                             "--recipe, since label-free pre-training may have seen the "
                             "validation folds' images")
    recipe.add_argument("--fg-class", default=None, metavar="CLASS",
                        help="CAM-family models: the class whose map is the foreground (e.g. "
                             "malignant); default: the predicted class's")
    recipe.add_argument("--members", type=int, default=1,
                        help="cv: train this many models per fold (seeds --seed, 1000 + --seed, "
                             "2000 + --seed, ...) and score their average (class probabilities "
                             "and foreground maps); the first member is the single-model run")
    recipe.add_argument("--cv-out", default=str(REPOSITORY / "benchmarks" / "results" / "wsl_cv.jsonl"))
    recipe.add_argument("--reinhard", action="store_true",
                        help="colour-normalised models, as train-wsl --reinhard: every image's "
                             "tissue given the mean and spread of L*, a*, b* of the fold's "
                             "training images")
    recipe.add_argument("--table", action="store_true", help="print the recipes measured so far")
    recipe.add_argument("--breakdown", metavar="RECIPE", default=None,
                        help="the misclassified images of a recipe's cross-validation rows "
                             "(--methods, every partition) counted by patient and by the "
                             "finer grade of grade.csv's fourth column")
    recipe.add_argument("--colour-baseline", action="store_true",
                        help="the same folds classified by colour alone (mean and spread of "
                             "R, G, B per image, nearest class centroid): no CNN")
    return parser.parse_args(argv)


def _percent(value) -> str:
    return "    -" if value is None else f"{100 * value:6.2f}"


def recipe_config(args) -> TrainConfig:
    """The training parameters of a recipe given on the command line."""
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, crop_size=args.crop_size, lr=args.lr,
        lr_schedule="cosine", patience=args.patience, seed=args.seed, device="cpu",
        max_minutes=args.minutes, eval_every=args.eval_every, weight_decay=args.weight_decay,
        target_mpp=args.target_mpp, warmup_epochs=args.warmup, ema_decay=args.ema,
        select_on=args.select, cutmix=args.cutmix, tta_flips=args.tta,
        augment=AugmentConfig(brightness=args.colour, contrast=args.colour,
                              saturation=args.colour, hed=args.hed, scale=args.scale),
    )


def _mean_spread(values) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
    return mean, spread


#: Foreground thresholds of the F1 trade-off recorded per fold (one view per image).
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class Ensemble(torch.nn.Module):
    """Models of one fold averaged: class probabilities, and foreground maps as each member
    localises its own output (members share the fold's colour target and input settings)."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        first = members[0]
        for name in ("mean", "std", "output_stride", "colour_target", "classes"):
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))

    def forward(self, images):
        outputs = [member(images) for member in self.members]
        probabilities = torch.stack(
            [torch.softmax(o["logits"].float(), dim=1) for o in outputs]).mean(dim=0)
        return {"logits": probabilities.clamp_min(1e-12).log(), "members": outputs}

    def localize(self, output, size):
        return torch.stack([member.localize(o, size) for member, o
                            in zip(self.members, output["members"])]).mean(dim=0)


def member_seed(seed: int, member: int) -> int:
    """Training seed of a fold's ``member``-th model (the first keeps the run's seed)."""
    return seed + 1000 * member


def cross_validate(args) -> int:
    """K-fold cross-validation by patient of one recipe, for each method; appends to --cv-out."""
    if args.members < 1:
        raise SystemExit(f"--members must be at least 1, not {args.members}")
    if args.members > 1 and any(METHODS[label][0] == "maxmin" for label in args.methods):
        raise SystemExit("--members averages CAM-family models only: leave Max-Min out "
                         "(--methods CAM-Avg WILDCAT)")
    dataset = load_glas(args.data)
    folds = patient_folds(dataset, k=args.cv, seed=args.seed)
    chosen = args.folds if args.folds is not None else list(range(args.cv))
    config = recipe_config(args)
    out = Path(args.cv_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for label in args.methods:
        arch, head = METHODS[label]
        per_fold = []
        started = time.perf_counter()
        for index in chosen:
            fold = folds[index]
            inner = None
            train_part = fold.train
            if config.select_on != "last":
                inner = split_by_patient(fold.train, val_fraction=0.2, seed=args.seed)
                train_part = inner.train
            colour = None
            if args.reinhard:  # the target of this fold's training images, as train-wsl
                colour = colour_target(read_rgb(record.image_path) for record in train_part)
            members, member_errors, results = [], [], []
            for member in range(args.members):
                seed = member_seed(args.seed, member)
                seed_everything(seed)
                model = build_model(ModelConfig(
                    arch=arch, classes=dataset.classes, depth=args.depth, width=args.width,
                    output_stride=args.output_stride,
                    mpp=args.target_mpp or dataset.mpp, head=head, colour_target=colour,
                    fg_class=args.fg_class if arch in CAM_ARCHITECTURES else None,
                ))
                if args.pretrained:
                    load_backbone_weights(model.backbone, args.pretrained)
                results.append(run_to_end(
                    train_wsl(model, train_part, inner.val if inner else None,
                              replace(config, seed=seed)),
                    lambda record, label=label, index=index: print(
                        f"  [{args.recipe} | {label} | fold {index}] {record.message}",
                        flush=True),
                ))
                members.append(model)
                if args.members > 1:
                    member_errors.append(
                        evaluate(model, fold.val, "cpu", config=config)["error"])
            result = results[0]
            if args.members > 1:
                model = Ensemble(members)
            # F1 by threshold from the one-view evaluation only
            main_thresholds = () if config.tta_flips else THRESHOLDS
            scores = evaluate(model, fold.val, "cpu", config=config, flips=config.tta_flips,
                              thresholds=main_thresholds)
            per_image = {}
            if member_errors:
                per_image["member_errors"] = member_errors
            if arch == "maxmin":  # as train-wsl ships it: the foreground calibrated
                per_image = {"f1_pos_per_image": scores["f1_pos"],
                             "f1_neg_per_image": scores["f1_neg"]}
                whole = make_torch_dataset(train_part, model, config, train=False)
                calibrate_foreground(model, (image for image, *_ in whole))
                scores = evaluate(model, fold.val, "cpu", config=config, flips=config.tta_flips,
                                  thresholds=main_thresholds)
            if config.tta_flips:  # as the plug-in infers: one view of each image
                plain = evaluate(model, fold.val, "cpu", config=config, flips=False,
                                 thresholds=THRESHOLDS)
                per_image.update({f"{key}_no_flips": plain[key]
                                  for key in ("error", "f1_pos", "f1_neg", "pxap")})
            else:
                plain = scores
            per_image["f1_by_threshold"] = plain["f1_by_threshold"]
            per_image["misclassified"] = [  # one view per image, as the plug-in infers
                record.name for record, predicted in zip(fold.val.records, plain["predicted"])
                if predicted != record.label]
            per_fold.append({
                "fold": index, "patients": list(fold.val_groups), "n_images": len(fold.val),
                "error": scores["error"], "f1_pos": scores["f1_pos"], "f1_neg": scores["f1_neg"],
                **per_image,
                "all_ones_f1_pos": scores["all_ones_f1_pos"], "pxap": scores["pxap"],
                "prevalence": scores["prevalence"], "best_epoch": result.best_epoch,
                "epochs_run": len(result.history), "seconds": result.seconds,
            })
            print(f"  [{args.recipe} | {label} | fold {index}] error {_percent(scores['error'])}% "
                  f"F1+ {_percent(scores['f1_pos'])}% F1- {_percent(scores['f1_neg'])}% "
                  f"PxAP {_percent(scores['pxap'])}% (foreground {_percent(scores['prevalence'])}%) "
                  f"(epoch {result.best_epoch + 1} of {len(result.history)})", flush=True)
        row = {"recipe": args.recipe, "method": label, "folds": per_fold,
               "arguments": {k: v for k, v in vars(args).items() if k not in ("table",)},
               "wall_seconds": time.perf_counter() - started,
               "torch": torch.__version__, "threads": torch.get_num_threads()}
        for key in ("error", "f1_pos", "f1_neg", "all_ones_f1_pos", "f1_pos_per_image",
                    "f1_neg_per_image", "error_no_flips", "f1_pos_no_flips", "f1_neg_no_flips",
                    "pxap", "pxap_no_flips", "prevalence"):
            if all(key in f for f in per_fold):
                row[key] = _mean_spread([f[key] for f in per_fold])
        with out.open("a") as stream:
            stream.write(json.dumps(row) + "\n")
        print(f"[{args.recipe} | {label}] {len(per_fold)} folds: error "
              f"{_percent(row['error'][0])} +- {_percent(row['error'][1])}%, F1+ "
              f"{_percent(row['f1_pos'][0])} +- {_percent(row['f1_pos'][1])}%, F1- "
              f"{_percent(row['f1_neg'][0])} +- {_percent(row['f1_neg'][1])}%", flush=True)
    print_cv_table(out)
    return 0


def colour_features(dataset) -> np.ndarray:
    """``(N, 6)``: mean and standard deviation of R, G and B over each image, in [0, 1]."""
    from napari_wsl_al.core.io.image_backend import read_image_file

    rows = []
    for record in dataset:
        pixels = read_image_file(record.image_path).reshape(-1, 3).astype(np.float64) / 255.0
        rows.append(np.concatenate([pixels.mean(axis=0), pixels.std(axis=0)]))
    return np.array(rows)


def nearest_centroid(train_x, train_y, test_x) -> np.ndarray:
    """Class of the nearest class centroid, features standardised on the training part."""
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-9
    train_x, test_x = (train_x - mean) / scale, (test_x - mean) / scale
    classes = np.unique(train_y)
    centroids = np.stack([train_x[train_y == c].mean(axis=0) for c in classes])
    distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return classes[np.argmin(distances, axis=1)]


def colour_baseline(args) -> int:
    """How far colour alone goes on the same patient folds (appends to --cv-out)."""
    dataset = load_glas(args.data)
    folds = patient_folds(dataset, k=args.cv or 5, seed=args.seed)
    features = colour_features(dataset)
    labels = dataset.labels
    index = {record.name: i for i, record in enumerate(dataset)}
    per_fold = []
    for number, fold in enumerate(folds):
        val = np.array([index[r.name] for r in fold.val])
        train = np.array([index[r.name] for r in fold.train])
        predicted = nearest_centroid(features[train], labels[train], features[val])
        error = float((predicted != labels[val]).mean())
        per_fold.append({"fold": number, "patients": list(fold.val_groups),
                         "n_images": len(val), "error": error})
        print(f"  [colour baseline | fold {number}] error {_percent(error)}%", flush=True)
    row = {"recipe": "colour mean+sd per image (no CNN)", "method": "nearest centroid",
           "folds": per_fold, "arguments": {"seed": args.seed, "cv": len(folds)},
           "wall_seconds": 0.0, "error": _mean_spread([f["error"] for f in per_fold])}
    out = Path(args.cv_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as stream:
        stream.write(json.dumps(row) + "\n")
    print_cv_table(out)
    return 0


def load_rows(path: Path) -> list[dict]:
    """The cross-validation rows of a ``--cv-out`` file, one JSON object a line."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_cv_table(path: Path) -> None:
    """Every recipe measured so far (mean +- standard deviation over the folds)."""
    if not path.exists():
        print(f"{path}: no cross-validation yet")
        return
    rows = load_rows(path)
    header = (f"{'recipe':<46} {'method':<18} {'folds':>5} {'cl.err %':>14} {'F1+ %':>14} "
              f"{'F1- %':>14} {'min/fold':>8} {'PxAP %':>14}")
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [f"{_percent(row[k][0]).strip():>6} +- {_percent(row[k][1]).strip():>5}"
                 if k in row else "-" for k in ("error", "f1_pos", "f1_neg", "pxap")]
        minutes = row["wall_seconds"] / 60 / max(1, len(row["folds"]))
        seed = row.get("arguments", {}).get("seed", 0)
        name = row["recipe"] + (f" [folds seed {seed}]" if seed else "")
        print(f"{name:<46} {row['method']:<18} {len(row['folds']):>5} "
              f"{cells[0]:>14} {cells[1]:>14} {cells[2]:>14} {minutes:>8.1f} {cells[3]:>14}")
        if "f1_pos_per_image" in row:  # Max-Min: F1 above with the calibrated foreground
            plain = [f"{_percent(row[k][0]).strip():>6} +- {_percent(row[k][1]).strip():>5}"
                     for k in ("f1_pos_per_image", "f1_neg_per_image")]
            print(f"{'':<46} {'(fg per image)':<18} {'':>5} {'':>14} {plain[0]:>14} "
                  f"{plain[1]:>14}")
        if "error_no_flips" in row:  # the same models, one view per image (as the plug-in)
            one = [f"{_percent(row[k][0]).strip():>6} +- {_percent(row[k][1]).strip():>5}"
                   for k in ("error_no_flips", "f1_pos_no_flips", "f1_neg_no_flips")]
            print(f"{'':<46} {'(no test flips)':<18} {'':>5} {one[0]:>14} {one[1]:>14} "
                  f"{one[2]:>14}")
    if rows and "all_ones_f1_pos" in rows[0]["folds"][0]:
        base = _mean_spread([f["all_ones_f1_pos"] for f in rows[0]["folds"]])
        print(f"All-ones F1+ over the folds: {_percent(base[0]).strip()} %")
    print_repeated(rows)


def print_repeated(rows: list[dict]) -> None:
    """Recipes measured on several fold partitions (``--seed`` draws the partition): error
    pooled over every fold of every partition, and each partition's mean."""
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for row in rows:
        seed = row.get("arguments", {}).get("seed", 0)
        groups.setdefault((row["recipe"], row["method"]), {})[seed] = row
    repeated = {key: runs for key, runs in groups.items() if len(runs) > 1}
    if not repeated:
        return
    print("\nRepeated on several fold partitions (--seed): classification error over every "
          "fold of every partition, then each partition's mean")
    for (recipe, method), runs in repeated.items():
        errors = [fold["error"] for run in runs.values() for fold in run["folds"]]
        mean, spread = _mean_spread(errors)
        each = ", ".join(f"seed {seed}: {_percent(run['error'][0]).strip()}"
                         for seed, run in sorted(runs.items()))
        folds = [fold for run in runs.values() for fold in run["folds"]]
        f1 = ""
        if all("f1_pos" in fold for fold in folds):
            f1 = "; F1+ {}, F1- {}".format(*(
                _percent(_mean_spread([fold[key] for fold in folds])[0]).strip()
                for key in ("f1_pos", "f1_neg")))
        print(f"  {recipe} | {method}: {len(runs)} partitions, {len(errors)} folds, error "
              f"{_percent(mean).strip()} +- {_percent(spread).strip()} % ({each}){f1}")
        if all("error_no_flips" in fold for run in runs.values() for fold in run["folds"]):
            one = {key: _mean_spread([fold[f"{key}_no_flips"] for run in runs.values()
                                      for fold in run["folds"]])
                   for key in ("error", "f1_pos", "f1_neg")}
            print(f"    no test flips (as the plug-in): error {_percent(one['error'][0]).strip()}"
                  f" +- {_percent(one['error'][1]).strip()} %, F1+ "
                  f"{_percent(one['f1_pos'][0]).strip()}, F1- {_percent(one['f1_neg'][0]).strip()}")


def error_breakdown(rows: list[dict], dataset, finer: dict[str, str]) -> list[tuple]:
    """``(group, name, wrong, views)`` per patient and per finer grade over the fold rows:
    every image of a fold's validation part is one view, wrong when it is misclassified."""
    counts: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        folds = patient_folds(dataset, k=row["arguments"]["cv"], seed=row["arguments"]["seed"])
        for fold in row["folds"]:
            validation = folds[fold["fold"]].val
            wrong = set(fold["misclassified"])
            for record in validation.records:
                for key in (("patient", f"{record.patient_id} ({record.class_name})"),
                            ("grade", finer.get(record.name, record.class_name))):
                    tally = counts.setdefault(key, [0, 0])
                    tally[0] += record.name in wrong
                    tally[1] += 1
    return sorted(((group, name, w, n) for (group, name), (w, n) in counts.items()),
                  key=lambda item: (item[0], -item[2] / item[3], item[1]))


def finer_grades(data: str) -> dict[str, str]:
    """Image name -> the fourth column of ``grade.csv`` (GlaS: the finer grade), if any."""
    path = Path(data) / "grade.csv"
    with path.open(newline="") as stream:
        rows = list(csv.reader(stream))
    return {row[0].strip(): row[3].strip() for row in rows[1:] if len(row) > 3}


def print_breakdown(args) -> int:
    rows = [row for row in load_rows(Path(args.cv_out)) if row["recipe"] == args.breakdown
            and row["method"] in args.methods and all("misclassified" in f for f in row["folds"])]
    if not rows:
        print(f"{args.cv_out}: no row of recipe {args.breakdown!r} ({', '.join(args.methods)}) "
              "lists its misclassified images")
        return 1
    dataset = load_glas(args.data)
    print(f"{args.breakdown} ({len(rows)} rows, "
          f"{sum(len(row['folds']) for row in rows)} folds): misclassified views")
    for group, name, wrong, views in error_breakdown(rows, dataset, finer_grades(args.data)):
        print(f"  {group:<8} {name:<40} {wrong:>3} / {views:<3} {100 * wrong / views:5.1f} %")
    return 0


def main(argv=None) -> int:
    args = parse_arguments(argv)
    torch.set_num_threads(args.threads)
    if args.table:
        print_cv_table(Path(args.cv_out))
        return 0
    if args.breakdown:
        return print_breakdown(args)
    if args.colour_baseline:
        return colour_baseline(args)
    if args.cv:
        return cross_validate(args)
    dataset = load_glas(args.data)
    split = split_by_patient(dataset, val_fraction=args.val_fraction, seed=args.seed)
    note = SETTING_NOTE.format(**vars(args))
    print(note)
    print(
        f"GlaS train: {len(dataset)} images; validation {len(split.val)} images of patients "
        f"{', '.join(split.val_groups)} ({split.grouped_by} split, seed {args.seed})"
    )
    rows = []
    baseline = None
    for label in args.methods:
        arch, head = METHODS[label]
        seed_everything(args.seed)
        model_config = ModelConfig(
            arch=arch, classes=dataset.classes, depth=args.depth, width=args.width,
            output_stride=args.output_stride, mpp=dataset.mpp, head=head,
        )
        model = build_model(model_config)
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, crop_size=args.crop_size, lr=args.lr,
            lr_schedule="cosine", patience=None, seed=args.seed, device="cpu",
            max_minutes=args.minutes, eval_every=args.eval_every,
        )
        started = time.perf_counter()
        result = run_to_end(
            train_wsl(model, split.train, split.val, config),
            lambda record, label=label: print(f"  [{label}] {record.message}", flush=True),
        )
        scores = evaluate(model, split.val, "cpu")
        baseline = baseline or {k: scores[k] for k in ("all_ones_f1_pos", "all_ones_f1_neg")}
        train_seconds = [record["train_seconds"] for record in result.history]
        row = {
            "method": label,
            "arch": arch,
            "head": head,
            "val_error": scores["error"],
            "val_f1_pos": scores["f1_pos"],
            "val_f1_neg": scores["f1_neg"],
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "stopped": result.stopped,
            "train_seconds_per_epoch": sum(train_seconds) / len(train_seconds),
            "seconds_per_epoch_with_validation": result.seconds / len(result.history),
            "wall_seconds": time.perf_counter() - started,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        rows.append(row)
        print(
            f"  [{label}] error {_percent(row['val_error'])}%  F1+ {_percent(row['val_f1_pos'])}%"
            f"  F1- {_percent(row['val_f1_neg'])}%  {row['epochs_run']} epochs, "
            f"{row['train_seconds_per_epoch']:.1f} s/epoch",
            flush=True,
        )

    header = (
        f"{'method':<20} {'cl.err%':>8} {'F1+%':>7} {'F1-%':>7} {'epochs':>6} {'best':>5} "
        f"{'s/epoch':>8} {'s/ep+val':>8} | paper err/F1+/F1-"
    )
    lines = [header, "-" * len(header)]
    if baseline:
        paper = PAPER_TABLE_1["All-ones"]
        lines.append(
            f"{'All-ones':<20} {'-':>8} {_percent(baseline['all_ones_f1_pos']):>7} "
            f"{_percent(baseline['all_ones_f1_neg']):>7} {'':>6} {'':>5} {'':>8} {'':>8} | "
            f"- / {paper[1]:.2f} / {paper[2]:.2f}"
        )
    for row in rows:
        paper = PAPER_TABLE_1.get(row["method"])
        reference = "-" if paper is None else f"{paper[0]:.2f} / {paper[1]:.2f} / {paper[2]:.2f}"
        lines.append(
            f"{row['method']:<20} {_percent(row['val_error']):>8} {_percent(row['val_f1_pos']):>7} "
            f"{_percent(row['val_f1_neg']):>7} {row['epochs_run']:>6} {row['best_epoch'] + 1:>5} "
            f"{row['train_seconds_per_epoch']:>8.1f} {row['seconds_per_epoch_with_validation']:>8.1f}"
            f" | {reference}"
        )
    table = "\n".join(lines)
    print()
    print(table)
    print(note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "note": note,
                "arguments": vars(args),
                "split": split.to_dict(),
                "all_ones": baseline,
                "rows": rows,
                "table": table,
                "paper_table_1": PAPER_TABLE_1,
                "environment": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "platform": platform.platform(),
                    "threads": torch.get_num_threads(),
                },
            },
            indent=2,
        )
    )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
