"""The ``pretrain-ssl`` sub-command: self-supervised (SimSiam) pre-training of the ResNet backbone."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

NAME = "pretrain-ssl"
HELP = (
    "pre-train a ResNet backbone without labels (SimSiam) on tissue crops of a folder of images "
    "and of slides; load the result with 'train-wsl --pretrained FILE'"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``napari-wsl-al pretrain-ssl``."""
    parser.add_argument("data", metavar="DATA", nargs="?", default=None,
                        help="folder of images (GlaS layout, class folders or plain images)")
    parser.add_argument("--slides", nargs="+", default=[], metavar="SLIDE",
                        help="slides to crop tissue from as well (.svs, .ndpi, .tif, ...)")
    parser.add_argument("--out", default="backbone.pt",
                        help="backbone weights written after every epoch (torchvision names)")
    model = parser.add_argument_group("backbone")
    model.add_argument("--depth", type=int, default=18, choices=(18, 34, 50), help="ResNet depth")
    model.add_argument("--width", type=float, default=0.25, help="channel multiplier of the ResNet")
    data = parser.add_argument_group("crops")
    data.add_argument("--mpp", type=float, default=None,
                      help="microns per pixel of the images (default: 0.62 for the GlaS layout)")
    data.add_argument("--target-mpp", type=float, default=None,
                      help="read images and slides at this resolution (default: as stored)")
    data.add_argument("--crop-size", type=int, default=192, help="side of the views in pixels")
    data.add_argument("--crops-per-epoch", type=int, default=512,
                      help="tissue windows per epoch (two views each)")
    data.add_argument("--min-scale", type=float, default=0.25,
                      help="smallest area fraction of the window a view covers")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=100)
    training.add_argument("--minutes", type=float, default=None, help="wall-time bound")
    training.add_argument("--batch-size", type=int, default=32)
    training.add_argument("--lr", type=float, default=0.05,
                          help="SGD learning rate for a batch of 256 (scaled by batch/256)")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    training.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    training.add_argument("--num-workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def command_line(args: argparse.Namespace) -> str:
    """The ``napari-wsl-al pretrain-ssl`` command equivalent to ``args``."""
    words = ["napari-wsl-al", NAME] + ([str(args.data)] if args.data else [])
    for name, value in vars(args).items():
        if name in ("data", "command", "verbose", "quiet") or name.startswith("_"):
            continue
        if value is None or value is False or value == []:
            continue
        option = "--" + name.replace("_", "-")
        if value is True:
            words.append(option)
        elif isinstance(value, list):
            words += [option] + [str(item) for item in value]
        else:
            words += [option, str(value)]
    return " ".join(shlex.quote(word) for word in words)


def run(args: argparse.Namespace) -> int:
    """Load the crops, pre-train, write the backbone and a JSON log beside it."""
    from tqdm import tqdm

    from ..core.atomic import atomic_write
    from ..core.progress import run_to_end
    from ..core.wsl.ssl import (
        SslConfig,
        load_crop_sources,
        new_backbone,
        save_ssl_backbone,
        train_ssl,
    )

    if args.data is None and not args.slides:
        raise SystemExit(f"{NAME}: give a folder of images (DATA) and/or --slides")
    config = SslConfig(
        epochs=args.epochs, crops_per_epoch=args.crops_per_epoch, batch_size=args.batch_size,
        crop_size=args.crop_size, min_scale=args.min_scale, lr=args.lr,
        max_minutes=args.minutes, seed=args.seed, device=args.device,
        num_threads=args.threads, num_workers=args.num_workers,
    )
    sources = load_crop_sources(args.data, args.slides, target_mpp=args.target_mpp,
                                image_mpp=args.mpp)
    images = sum(1 for s in sources if not hasattr(s, "reader"))
    print(f"{NAME}: {images} images and {len(sources) - images} slides with tissue; "
          f"ResNet-{args.depth} width {args.width}; crops {args.crop_size} px at "
          f"{args.target_mpp or 'stored'} um/px", file=sys.stderr)
    out = Path(args.out)
    backbone = new_backbone(args.depth, args.width, seed=args.seed)
    bar = tqdm(total=config.epochs * config.batches_per_epoch, desc="simsiam", unit="batch",
               disable=args.quiet, file=sys.stderr)

    def on_progress(record):
        if "batch" in record.metrics:
            bar.set_postfix({"loss": f"{record.metrics['mean_loss']:.4f}",
                             "spread": f"{record.metrics['spread']:.3f}"})
            bar.update(1)
        else:
            bar.write(record.message, file=sys.stderr)

    started = time.perf_counter()
    try:
        result = run_to_end(train_ssl(backbone, sources, config, checkpoint_path=out),
                            on_progress)
    finally:
        bar.close()
        for source in sources:
            if hasattr(source, "reader"):
                source.reader.close()
    extra = {"command": command_line(args), "sources": [s.name for s in sources],
             "stopped": result.stopped, "steps": result.steps,
             "seconds": round(result.seconds, 1)}
    save_ssl_backbone(out, backbone, config, result.history, extra=extra)
    log = out.with_suffix(".json")
    atomic_write(log, lambda stream: stream.write(json.dumps(
        {**extra, "config": config.to_dict(), "history": result.history,
         "wall_seconds": round(time.perf_counter() - started, 1)}, indent=2)))
    first = result.history[0]["loss"] if result.history else float("nan")
    last = result.history[-1]["loss"] if result.history else float("nan")
    print(f"{len(result.history)} epochs, {result.steps} steps ({result.stopped}), "
          f"{result.seconds / 60:.1f} min; loss {first:.4f} -> {last:.4f}; backbone {out}; "
          f"log {log}")
    return 0
