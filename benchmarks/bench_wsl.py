"""Benchmark of the WSL methods on GlaS train (80/20 split by patient): error, F1+, F1-, seconds/epoch.

Run from the repository root::

    .venv/bin/python benchmarks/bench_wsl.py --epochs 10 --minutes 6

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
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "src"))

from napari_wsl_al.core.data.glas import load_glas, split_by_patient  # noqa: E402
from napari_wsl_al.core.models.factory import ModelConfig, build_model  # noqa: E402
from napari_wsl_al.core.progress import run_to_end  # noqa: E402
from napari_wsl_al.core.wsl.train import (  # noqa: E402
    TrainConfig,
    evaluate,
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
    parser.add_argument("--crop-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPOSITORY / "benchmarks" / "results" / "bench_wsl.json"))
    return parser.parse_args(argv)


def _percent(value) -> str:
    return "    -" if value is None else f"{100 * value:6.2f}"


def main(argv=None) -> int:
    args = parse_arguments(argv)
    torch.set_num_threads(args.threads)
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
            mpp=dataset.mpp, head=head,
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
