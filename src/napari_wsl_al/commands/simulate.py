"""``napari-wsl-al simulate``: active-learning rounds answered by ground-truth masks (curves, AuALC, checkpoints)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "simulate"
HELP = (
    "simulate active learning on a GlaS-layout data set with masks: the oracle answers "
    "suggested superpixels from the masks"
)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the sub-command."""
    parser.add_argument(
        "data", type=Path, metavar="DATA", help="GlaS-layout folder (images/, masks/, grade.csv)"
    )
    parser.add_argument(
        "--strategy",
        type=_names,
        default=("oreal",),
        help="acquisition function, or several separated by commas: random, "
        "entropy, mc_dropout, bvsb, classbal, pixbal, oreal (default: oreal)",
    )
    parser.add_argument(
        "--label",
        type=_names,
        default=("multi",),
        help="oracle answers: multi (every class in the region) or dominant; "
        "both: dominant,multi (default: multi)",
    )
    parser.add_argument(
        "--pseudo-labels",
        nargs="?",
        const="stage2",
        default=None,
        choices=("stage2", "label_prop"),
        metavar="METHOD",
        help="train with pseudo labels too: stage2 (the default when no METHOD is given: "
        "MulActSeg's stage 2, inside and next to labelled regions) or label_prop (WACV'21: "
        "the k nearest unlabelled images of the same class to every labelled image, "
        "pseudo-segmented by the model, weighted by lambda)",
    )
    parser.add_argument(
        "--label-prop-k",
        type=int,
        default=40,
        help="label_prop: nearest unlabelled images per labelled image (default 40, the paper's)",
    )
    parser.add_argument(
        "--label-prop-lambda",
        type=float,
        default=0.1,
        help="label_prop: weight of the pseudo-labelled images in the loss (default 0.1, the "
        "paper's for GlaS)",
    )
    parser.add_argument("--rounds", type=int, default=8, help="rounds (default 8)")
    parser.add_argument("--budget", type=int, default=40, help="regions labelled per round")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="part of the patients held out for validation (default 0.2)",
    )
    parser.add_argument(
        "--cv", type=int, default=0, metavar="K",
        help="validate on one fold of a K-fold split grouped by patient (bench_wsl.py --cv's "
        "folds) instead of --val-fraction; run each --fold for the whole cross-validation",
    )
    parser.add_argument("--fold", type=int, default=0, help="with --cv: the validation fold, "
                        "0 .. K-1 (default 0)")
    parser.add_argument(
        "--scheduler",
        help="dask.distributed scheduler address: each run "
        "(strategy x label x seed) is a task on that cluster",
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per round")
    parser.add_argument("--batch-size", type=int, default=4, help="crops per step")
    parser.add_argument("--crop-size", type=int, default=192, help="training crop side")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument(
        "--colour-jitter",
        type=float,
        default=None,
        metavar="X",
        help="colour augmentation of the training crops: stain optical densities changed by "
        "up to X (default: the rounds' default; 0: off)",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        default=1.24,
        help="working resolution in microns per pixel (default 1.24: GlaS at half size)",
    )
    parser.add_argument(
        "--region-px",
        type=int,
        default=32,
        help="superpixel side at the working resolution (default 32)",
    )
    parser.add_argument(
        "--checkpoint",
        help="weakly-supervised checkpoint to start from (default: the shipped model)",
    )
    parser.add_argument("--scratch", action="store_true", help="start from random weights")
    parser.add_argument(
        "--reinit",
        action="store_true",
        help="every round starts from the initial weights (default: fine-tune "
        "the previous round's)",
    )
    parser.add_argument(
        "--full-supervision-steps",
        type=int,
        default=0,
        help="also train the same model on every mask for this many steps: "
        "the bar in curves.png and summary.json (0: skip)",
    )
    parser.add_argument(
        "--final-steps",
        type=int,
        default=0,
        help="after the last round, also train from the initial weights on the final labels "
        "for this many steps (as the full supervision) and report that Dice too "
        "(summary.json: retrained_dice; 0: skip)",
    )
    parser.add_argument("--device", default="cpu", help="auto, cuda, mps or cpu (default cpu)")
    parser.add_argument("--threads", type=int, help="torch threads")


def _configs(args: argparse.Namespace):
    from ..core.al.simulate import SimulationConfig
    from ..core.al.superpixels import SuperpixelConfig
    from ..core.al.train import RegionTrainConfig

    jitter = {} if args.colour_jitter is None else {"colour_jitter": args.colour_jitter}
    train = RegionTrainConfig(
        steps=args.steps, batch_size=args.batch_size, crop_size=args.crop_size, lr=args.lr,
        **jitter,
    )
    for label in args.label:
        for strategy in args.strategy:
            for seed in range(args.seeds):
                yield SimulationConfig(
                    strategy=strategy,
                    label=label,
                    pseudo_labels=args.pseudo_labels is not None,
                    pseudo_method=args.pseudo_labels or "stage2",
                    label_prop_k=args.label_prop_k,
                    label_prop_lambda=args.label_prop_lambda,
                    rounds=args.rounds,
                    budget=args.budget,
                    seed=seed,
                    val_fraction=args.val_fraction,
                    folds=args.cv,
                    fold=args.fold,
                    mpp=args.mpp,
                    superpixels=SuperpixelConfig(region_px=args.region_px),
                    train=train,
                    init="scratch" if args.scratch else "wsl",
                    fine_tune=not args.reinit,
                    checkpoint=args.checkpoint,
                    final_steps=args.final_steps,
                    device=args.device,
                )


def run(args: argparse.Namespace) -> int:
    """Run every (label, strategy, seed) and write curves.csv, summary.json and curves.png."""
    from ..core.al import simulate as sim
    from ..core.device import set_threads
    from ..core.progress import run_to_end

    set_threads(args.threads)
    try:
        configs = list(_configs(args))
    except ValueError as error:
        print(f"napari-wsl-al simulate: error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    def report(record):
        # Rounds and their scores; training steps only when a training ends.
        steps = record.message.startswith(("training:", "full supervision:"))
        if record.message and (not steps or record.step == record.total):
            print(record.message, flush=True)

    rows: list[dict] = []
    extra: dict = {"data": str(args.data), "command": " ".join(sys.argv)}
    if args.scheduler:
        from distributed import Client

        with Client(args.scheduler) as client:
            futures = [
                client.submit(
                    sim.run_task, str(args.data), config.to_json(), str(args.out), pure=False
                )
                for config in configs
            ]
            for future in futures:
                rows.extend(future.result())
    else:
        data = sim.prepare_dataset(args.data, configs[0])
        print(
            f"{len(data.pool)} pool images ({data.n_regions} superpixels), "
            f"{len(data.validation)} validation images (split by patient)",
            flush=True,
        )
        if args.full_supervision_steps > 0:
            bar = run_to_end(
                sim.full_supervision(data, configs[0], args.full_supervision_steps), report
            )
            extra["full_supervision"] = bar
            print(f"full supervision: Dice {bar['dice']:.3f}, mIoU {bar['miou']:.3f}", flush=True)
        for config in configs:
            rows.extend(run_to_end(sim.simulate_run(data, config, args.out), report))
            sim.write_outputs(args.out, rows, extra)
    summary = sim.write_outputs(args.out, rows, extra)
    for key, value in summary["strategies"].items():
        print(
            f"{key}: AuALC {value['auALC']:.3f} +- {value['auALC_std']:.3f}, final Dice "
            f"{value['final_dice']:.3f} +- {value['final_dice_std']:.3f} at "
            f"{100 * value['final_labelled_fraction']:.1f} % of the superpixels"
            + (f"; its labels trained again from the start: Dice {value['retrained_dice']:.3f}"
               f" +- {value['retrained_dice_std']:.3f}" if "retrained_dice" in value else "")
        )
    print(
        f"wrote {args.out / 'curves.csv'}, {args.out / 'summary.json'}, {args.out / 'curves.png'}"
    )
    return 0
