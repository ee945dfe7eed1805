"""``napari-wsl-al make-sample``: write a synthetic H&E slide or a GlaS-style patch set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "make-sample"
HELP = "write a synthetic H&E whole-slide image (pyramidal TIFF) or patch set (GlaS layout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the sub-command: ``slide OUT.tif ...`` or ``patches OUT_DIR ...``."""
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    slide = kinds.add_parser(
        "slide",
        help="a pyramidal tiled JPEG TIFF that OpenSlide opens, with ground truth beside it",
        description="Write a synthetic H&E slide: tissue blobs on glass with benign and "
        "malignant regions, and <stem>.truth.npz (tissue, malignant and gland maps) beside it.",
    )
    slide.add_argument("output", type=Path, help="the .tif file to write")
    slide.add_argument("--width", type=int, default=20000, help="level-0 width in pixels")
    slide.add_argument("--height", type=int, default=20000, help="level-0 height in pixels")
    slide.add_argument("--mpp", type=float, default=0.5, help="microns per pixel at level 0")
    slide.add_argument("--seed", type=int, default=0, help="same seed, same slide")
    slide.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    slide.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-100")
    slide.add_argument(
        "--tissue-fraction", type=float, default=0.35, help="fraction of the slide with tissue"
    )
    slide.add_argument(
        "--label",
        choices=("benign", "malignant"),
        default=None,
        help="make all the tissue one class (default: a mix)",
    )
    slide.add_argument("--no-progress", action="store_true", help="no progress bar")

    patches = kinds.add_parser(
        "patches",
        help="benign and malignant patches with gland masks, in the GlaS layout",
        description="Write images/<name>.png, masks/<name>.png (0/255 gland masks) and "
        "grade.csv (name, patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)).",
    )
    patches.add_argument("output", type=Path, help="the folder to write")
    patches.add_argument("--n-per-class", type=int, default=20, help="patches per class")
    patches.add_argument("--size", type=int, default=256, help="patch side in pixels")
    patches.add_argument("--seed", type=int, default=0, help="same seed, same patches")


def run(args: argparse.Namespace) -> int:
    """Write the requested sample and say where it went."""
    from ..core.data import synthetic

    start = time.perf_counter()
    if args.kind == "patches":
        root = synthetic.write_synthetic_patch_set(
            args.output, n_per_class=args.n_per_class, shape=(args.size, args.size), seed=args.seed
        )
        elapsed = time.perf_counter() - start
        print(f"wrote {2 * args.n_per_class} patches to {root} in {elapsed:.1f} s")
        return 0

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit="tile", desc="writing slide", dynamic_ncols=True)

    def on_progress(record) -> None:
        if bar is None:
            return
        if bar.total != record.total:
            bar.total = record.total
        bar.set_postfix_str(record.message, refresh=False)
        bar.update(record.step - bar.n)

    try:
        path = synthetic.write_synthetic_slide(
            args.output,
            args.width,
            args.height,
            mpp=args.mpp,
            tile=args.tile,
            seed=args.seed,
            label=args.label,
            quality=args.quality,
            tissue_fraction=args.tissue_fraction,
            progress=on_progress,
        )
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    size_mb = path.stat().st_size / 1e6
    print(
        f"wrote {path} ({args.width}x{args.height} px, {args.mpp:g} um/px, {size_mb:.1f} MB) "
        f"and {synthetic.truth_path_for(path).name} in {elapsed:.1f} s"
    )
    return 0
