"""``napari-wsl-al round``: train the next active-learning round from the labels stored in a project."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "round"
HELP = "train the next active-learning round from the project's labels, then suggest again"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the sub-command."""
    parser.add_argument("project", type=Path, metavar="PROJECT", help="project folder")
    parser.add_argument("--steps", type=int, help="training steps (default: the project's, 300)")
    parser.add_argument(
        "--colour-jitter", type=float, metavar="X",
        help="colour augmentation of the training crops: stain optical densities changed by up "
        "to X (default: the project's; 0: off)")
    parser.add_argument(
        "--reinit",
        action="store_true",
        help="start from the weakly-supervised model instead of the last round",
    )
    parser.add_argument(
        "--label-prop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Label_prop pseudo labels on patch-folder slides (WACV'21): the nearest unlabelled "
        "patches of each labelled one's class, segmented by the newest model (default: the "
        "project's setting)",
    )
    parser.add_argument("--label-prop-k", type=int, metavar="K",
                        help="neighbours per labelled patch (default: the project's, 40)")
    parser.add_argument("--label-prop-lambda", type=float, metavar="LAMBDA",
                        help="weight of the pseudo labels in the loss (default: the project's, 0.1)")
    parser.add_argument("--no-suggest", action="store_true", help="do not suggest afterwards")
    parser.add_argument("--device", help="auto, cuda, mps or cpu")
    parser.add_argument("--threads", type=int, help="torch threads")


def round_settings(settings, args: argparse.Namespace):
    """The project's active-learning settings with this command's options applied (for this
    round only: ``project.json`` is not changed)."""
    from dataclasses import replace

    changes = {}
    train = {}
    if args.steps:
        train["steps"] = args.steps
    if args.colour_jitter is not None:
        train["colour_jitter"] = args.colour_jitter
    if train:
        changes["train"] = replace(settings.train, **train)
    if args.reinit:
        changes["init"] = "wsl"
    if args.device:
        changes["device"] = args.device
    if args.label_prop is not None:
        changes["label_prop"] = args.label_prop
    if args.label_prop_k is not None:
        changes["label_prop_k"] = args.label_prop_k
    if args.label_prop_lambda is not None:
        changes["label_prop_lambda"] = args.label_prop_lambda
    return replace(settings, **changes)


def run(args: argparse.Namespace) -> int:
    """Run one round and print its metrics."""
    from ..core.al.rounds import ALSettings, run_round
    from ..core.device import set_threads
    from ..core.errors import ActiveLearningError
    from ..core.progress import run_to_end
    from ..core.project import Project

    set_threads(args.threads)
    project = Project.open(args.project)
    try:
        settings = round_settings(ALSettings.of_project(project), args)
    except (ValueError, ActiveLearningError) as error:
        raise SystemExit(f"napari-wsl-al round: error: {error}") from error

    def report(record):
        if record.message and (
            record.total is None
            or record.step in (0, record.total)
            or "stage" in record.message
            or "round" in record.message
        ):
            print(record.message, flush=True)

    result = run_to_end(run_round(project, settings, suggest_after=not args.no_suggest), report)
    metrics = result["metrics"]
    print(
        f"round {result['round']}: {metrics['labels']} labelled regions, loss "
        f"{metrics['loss']:.4f}, {metrics['seconds']:.1f} s; checkpoint {result['checkpoint']}"
    )
    return 0
