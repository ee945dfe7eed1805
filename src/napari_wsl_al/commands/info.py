"""``napari-wsl-al info``: what a slide file holds (format, levels, resolution, associated images)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "info"
HELP = "print a slide's format, levels, microns per pixel and associated images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the sub-command."""
    parser.add_argument("slides", nargs="+", type=Path, help="slide files or folders")
    parser.add_argument("--json", action="store_true", help="print JSON (with all properties)")


def run(args: argparse.Namespace) -> int:
    """Print a summary of each slide."""
    from ..core.io import open_slide

    summaries = []
    for path in args.slides:
        with open_slide(path) as reader:
            summary = reader.metadata()
        summaries.append(summary)
        if args.json:
            continue
        mpp = summary["mpp"]
        print(f"{path}")
        print(f"  format      {summary['format']}")
        print(f"  size        {summary['dimensions'][0]} x {summary['dimensions'][1]} px")
        print(f"  resolution  {'unknown' if mpp is None else f'{mpp[0]:.4g} x {mpp[1]:.4g} um/px'}")
        if summary["objective_power"]:
            print(f"  objective   {summary['objective_power']:g}x")
        for level, (dims, down) in enumerate(
            zip(summary["level_dimensions"], summary["level_downsamples"])
        ):
            kind = "file" if level < summary["native_levels"] else "lazy"
            print(f"  level {level:<2}    {dims[0]} x {dims[1]} px, downsample {down:g} ({kind})")
        if summary["associated_images"]:
            print(f"  associated  {', '.join(summary['associated_images'])}")
    if args.json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2))
    return 0
