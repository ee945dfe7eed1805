"""``napari-wsl-al suggest``: score a project's slides and store the superpixels worth labelling next."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "suggest"
HELP = "suggest the superpixels to label next (written to the project and printed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the sub-command."""
    parser.add_argument("project", type=Path, metavar="PROJECT", help="project folder")
    parser.add_argument(
        "--slide",
        action="append",
        dest="slides",
        help="slide name in the project (repeat; default: every slide)",
    )
    parser.add_argument("--strategy", help="acquisition function (default: the project's, oreal)")
    parser.add_argument("--n", type=int, help="suggestions per slide (default: the project's, 20)")
    parser.add_argument("--device", help="auto, cuda, mps or cpu")
    parser.add_argument("--threads", type=int, help="torch threads")


def run(args: argparse.Namespace) -> int:
    """Suggest for every chosen slide and print the suggestions."""
    from dataclasses import replace

    from ..core.al.rounds import ALSettings, current_model, suggest
    from ..core.device import resolve_device, set_threads
    from ..core.progress import run_to_end
    from ..core.project import Project

    set_threads(args.threads)
    project = Project.open(args.project)
    settings = ALSettings.of_project(project)
    if args.device:
        settings = replace(settings, device=args.device)
    slides = args.slides or project.slide_names()
    if not slides:
        print(
            f"{project.path}: no slides in the project (add one with `napari-wsl-al infer "
            f"SLIDE --project {project.path}`)"
        )
        return 1
    model, round_number = current_model(project, settings, resolve_device(settings.device))
    if not bool(getattr(model, "segmentation_trained", True)):
        source = "no segmentation trained yet: random tissue regions to start with"
    else:
        source = f"round {round_number}" if round_number else f"model {settings.model}"
    for slide in slides:
        selection = run_to_end(
            suggest(project, slide, settings, model, round_number, strategy=args.strategy, n=args.n)
        )
        print(f"{slide}: {len(selection.ids)} suggestions ({selection.strategy}, {source})")
        print("  rank  region  score")
        for rank, (region, score) in enumerate(zip(selection.ids, selection.scores), 1):
            shown = "random" if selection.strategy == "random" else f"{float(score):.4f}"
            print(f"  {rank:4d}  {int(region):6d}  {shown}")
    return 0
