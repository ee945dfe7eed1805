"""The ``train-wsl`` sub-command: train a weakly-supervised model from image-level labels."""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

NAME = "train-wsl"
HELP = (
    "train a weakly-supervised localisation model (CAM, WILDCAT, Max-Min, ...) on a folder of "
    "image-level labelled patches (GlaS layout or one folder per class)"
)

#: Warm-up epochs by default (fewer in runs of under four epochs).
DEFAULT_WARMUP = 3

ARCHITECTURE_CHOICES = (
    "cam-avg", "cam-max", "cam-lse", "wildcat", "deepmil", "maxmin", "minmax-entropy", "joint",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``napari-wsl-al train-wsl``."""
    parser.add_argument("data", metavar="DATA", help="data set folder (GlaS layout or class folders)")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="wildcat", choices=ARCHITECTURE_CHOICES)
    model.add_argument("--depth", type=int, default=18, choices=(18, 34, 50), help="ResNet depth")
    model.add_argument("--width", type=float, default=0.25, help="channel multiplier of the ResNet")
    model.add_argument("--dropout", type=float, default=0.0, help="backbone feature dropout")
    model.add_argument("--output-stride", type=int, choices=(32, 16, 8), default=16,
                       help="input pixels per CAM pixel (16, as the shipped model, and 8: dilated "
                            "last stages, finer maps; 32: a plain ResNet)")
    model.add_argument(
        "--fg-class", default=None, metavar="CLASS",
        help="CAM architectures: the class whose activation map is the foreground map on every "
             "image (e.g. the disease class, as the shipped model); default: the predicted "
             "class's map")
    model.add_argument(
        "--head", action="append", default=[], metavar="NAME=VALUE",
        help="head hyper-parameter override (JSON value), e.g. --head sigma=0.15; repeatable",
    )
    model.add_argument(
        "--pretrained", metavar="PATH|imagenet",
        help="backbone weights: a torchvision ResNet state dict, or 'imagenet' (downloads)",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="fraction held out for validation, split by patient when known; "
                           "0 trains on every image (with --select last)")
    data.add_argument("--mpp", type=float, default=None,
                      help="microns per pixel of the images (default: 0.62 for the GlaS layout)")
    data.add_argument("--target-mpp", type=float, default=None,
                      help="rescale images to this resolution (default: keep)")
    data.add_argument("--data-note", default="",
                      help="provenance of the data (name, licence, citation), stored in the checkpoint")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=60)
    training.add_argument("--batch-size", type=int, default=8)
    training.add_argument("--crop-size", type=int, default=224)
    training.add_argument("--lr", type=float, default=0.01)
    training.add_argument("--weight-decay", type=float, default=1e-4)
    training.add_argument("--lr-schedule", default="cosine", choices=("cosine", "step", "constant"))
    training.add_argument("--patience", type=int, default=10,
                          help="with --select error|loss: stop after this many epochs without "
                               "improvement (0: off)")
    training.add_argument("--eval-every", type=int, default=1,
                          help="validate every N epochs (and after the last)")
    training.add_argument("--warmup", type=int, default=None,
                          help=f"linear warm-up epochs (default: {DEFAULT_WARMUP}, fewer in "
                               "shorter runs)")
    training.add_argument("--ema", type=float, default=0.99,
                          help="keep an exponential moving average of the weights (0: off)")
    training.add_argument("--select", default="last", choices=("error", "loss", "last"),
                          help="the epoch kept: the last (default), or that of the lowest "
                               "validation error or loss (with --patience: early stopping)")
    training.add_argument("--cutmix", type=float, default=0.5,
                          help="probability of pasting a box from an image of the same class")
    training.add_argument("--tta", action="store_true",
                          help="validate on the four flips of each image")
    training.add_argument("--stain", type=float, default=None,
                          help="H&E stain augmentation strength (default 0.03)")
    training.add_argument("--scale-jitter", type=float, default=0.0, metavar="X",
                          help="multi-scale crops: each crop's side is the crop size times a "
                               "factor in [1/(1+X), 1+X], resized to the crop size (default 0)")
    training.add_argument("--reinhard", action=argparse.BooleanOptionalAction, default=True,
                          help="colour-normalise every image (Reinhard, in L*a*b*) to the "
                               "training images' average tissue colour; the model keeps the "
                               "target and normalises every image or tile it is given alike "
                               "(default; --no-reinhard: off)")
    training.add_argument("--no-calibrate-fg", action="store_true",
                          help="Max-Min: keep the per-image foreground normalisation instead of "
                               "calibrating it on the training images")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    training.add_argument("--num-workers", type=int, default=0)
    training.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    training.add_argument("--max-minutes", type=float, default=None, help="wall-time bound")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="model.pt", help="checkpoint of the best epoch")
    output.add_argument("--log", default=None,
                        help="per-epoch CSV log (default: OUT with .csv); a .json log goes beside it")
    output.add_argument("--card", default=None,
                        help="also write a human-readable model card (JSON: provenance, metrics)")
    output.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_head(items: list[str]) -> dict:
    head = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name:
            raise SystemExit(f"--head expects NAME=VALUE, got {item!r}")
        try:
            head[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            head[name.strip()] = value
    return head


def command_line(args: argparse.Namespace) -> str:
    """The full ``napari-wsl-al train-wsl`` command equivalent to ``args`` (every option spelt out)."""
    words = ["napari-wsl-al", NAME, str(args.data)]
    for name, value in vars(args).items():
        if name in ("data", "command", "verbose", "quiet") or name.startswith("_"):
            continue
        option = "--" + name.replace("_", "-")
        if value is None or value is False or value == "" or value == []:
            continue
        if value is True:
            words.append(option)
        elif isinstance(value, list):
            for item in value:
                words += [option, str(item)]
        else:
            words += [option, str(value)]
    return " ".join(shlex.quote(word) for word in words)


def model_card(model_config: dict, extra: dict) -> dict:
    """Human-readable summary of a checkpoint: model, command, data, split, validation figures.

    Parameters
    ----------
    model_config : dict
        ``ModelConfig.to_dict()`` of the checkpoint.
    extra : dict
        The checkpoint's ``extra`` as written by this command.
    """
    metrics = extra.get("val_metrics", {})
    split = extra.get("split", {})

    def percent(key):
        value = metrics.get(key)
        return None if value is None else round(100.0 * float(value), 2)

    return {
        "model": {
            "architecture": model_config.get("arch"),
            "backbone": f"ResNet-{model_config.get('depth')} width {model_config.get('width')}",
            "classes": model_config.get("classes"),
            "mpp": model_config.get("mpp"),
            "head": model_config.get("head"),
            # the class whose map is the foreground; None: each image's predicted class
            "fg_class": model_config.get("fg_class"),
            "pretrained": extra.get("pretrained"),
        },
        "command": extra.get("command"),
        "data": extra.get("data"),
        "split": {
            "grouped_by": split.get("grouped_by"),
            "seed": split.get("seed"),
            "val_groups": split.get("val_groups"),
            "train_class_counts": split.get("train_class_counts"),
            "val_class_counts": split.get("val_class_counts"),
            "val_images": split.get("val_images"),
        },
        "validation_percent": {
            "classification_error": percent("error"),
            "f1_pos": percent("f1_pos"),
            "f1_neg": percent("f1_neg"),
            "all_ones_f1_pos": percent("all_ones_f1_pos"),
            "all_ones_f1_neg": percent("all_ones_f1_neg"),
            "n_images": metrics.get("n_images"),
            "confusion_rows_true_cols_pred": metrics.get("confusion"),
        },
        "training": {
            "best_epoch": extra.get("best_epoch"),
            "epochs_run": extra.get("epochs_run"),
            "stopped": extra.get("stopped"),
            "minutes": round(float(extra.get("train_seconds", 0.0)) / 60.0, 1),
            "environment": extra.get("environment"),
        },
    }


def _write_csv(path: Path, history: list[dict]) -> None:
    columns: list[str] = []
    for record in history:
        columns += [key for key in record if key not in columns]
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    os.replace(temporary, path)


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)


def configs_from_args(args: argparse.Namespace, classes, data_mpp: float | None,
                      train_records=()):
    """The ``(TrainConfig, ModelConfig)`` of a ``train-wsl`` command line; with
    ``--reinhard``, the colour target is that of ``train_records``' images."""
    from ..core.data.patches import AugmentConfig
    from ..core.models.factory import ModelConfig
    from ..core.wsl.train import TrainConfig

    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, crop_size=args.crop_size, lr=args.lr,
        weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        patience=args.patience or None, eval_every=args.eval_every, seed=args.seed,
        device=args.device, num_workers=args.num_workers, max_minutes=args.max_minutes,
        num_threads=args.threads, target_mpp=args.target_mpp,
        warmup_epochs=(min(DEFAULT_WARMUP, max(0, args.epochs - 1)) if args.warmup is None
                       else args.warmup),
        ema_decay=args.ema or None, select_on=args.select, cutmix=args.cutmix, tta_flips=args.tta,
        augment=AugmentConfig(**({} if args.stain is None else {"hed": args.stain}),
                              scale=args.scale_jitter),
    )
    colour = None
    if getattr(args, "reinhard", False):
        from ..core.data.patches import read_rgb
        from ..core.models.colour import colour_target

        colour = colour_target(read_rgb(record.image_path) for record in train_records)
    fg_class = getattr(args, "fg_class", None)
    if fg_class is not None:
        from ..core.models.factory import CAM_ARCHITECTURES

        if args.arch not in CAM_ARCHITECTURES:
            raise SystemExit(f"{NAME}: --fg-class applies to the CAM architectures "
                             f"({', '.join(CAM_ARCHITECTURES)}); a {args.arch} model has its "
                             "own foreground map: leave --fg-class out")
        if fg_class not in classes:
            raise SystemExit(f"{NAME}: --fg-class {fg_class!r} is not one of the data set's "
                             f"classes ({', '.join(classes)})")
    model_config = ModelConfig(
        arch=args.arch, classes=classes, depth=args.depth, width=args.width,
        dropout=args.dropout, output_stride=args.output_stride,
        mpp=args.target_mpp or data_mpp, head=_parse_head(args.head), colour_target=colour,
        fg_class=fg_class,
    )
    return train_config, model_config


def model_and_data(args: argparse.Namespace, model_config, split, data_mpp: float | None):
    """The seeded new model (with ``--pretrained`` weights) and the two parts of the split
    carrying the images' resolution, so that ``--target-mpp`` rescales them.

    Returns
    -------
    model, pretrained, train_part, val_part
        ``pretrained`` describes the weights loaded (None without ``--pretrained``).
    """
    from ..core.models.factory import build_model
    from ..core.wsl.train import seed_everything

    seed_everything(args.seed)
    model = build_model(model_config)
    pretrained = None
    if args.pretrained:
        from ..core.models.backbones import load_backbone_weights

        report = load_backbone_weights(model.backbone, args.pretrained)
        pretrained = {"source": str(args.pretrained), "report": str(report)}
    train_part = split.train if data_mpp is None else _with_mpp(split.train, data_mpp)
    val_part = split.val if data_mpp is None else _with_mpp(split.val, data_mpp)
    return model, pretrained, train_part, val_part


def calibrate_if_maxmin(args, model, model_config, train_set, train_config):
    """Calibrate a trained Max-Min model's foreground on its whole training images (unless
    ``--no-calibrate-fg``); the range is also written into ``model_config.head``.

    Returns
    -------
    (float, float) or None
        ``fg_range``, or None when nothing was calibrated.
    """
    if args.arch != "maxmin" or args.no_calibrate_fg:
        return None
    from ..core.models.maxmin import calibrate_foreground
    from ..core.wsl.train import make_torch_dataset

    whole = make_torch_dataset(train_set, model, train_config, train=False)  # whole images
    fg_range = calibrate_foreground(model, (image for image, *_ in whole))
    model_config.head["fg_range"] = list(fg_range)
    return fg_range


def run(args: argparse.Namespace) -> int:
    """Train, save the best checkpoint and the logs, print the validation figures."""
    import torch
    from tqdm import tqdm

    from ..core.data.glas import GLAS_MPP, load_dataset, split_by_patient
    from ..core.models.checkpoint import save_checkpoint
    from ..core.progress import run_to_end
    from ..core.wsl.train import evaluate, train_wsl

    command = command_line(args)
    dataset = load_dataset(args.data)
    layout = "glas" if (Path(args.data) / "grade.csv").exists() else "class-folders"
    data_mpp = args.mpp if args.mpp is not None else (GLAS_MPP if layout == "glas" else None)
    if args.target_mpp and not data_mpp:
        raise SystemExit(f"{NAME}: --target-mpp needs the resolution of the images (--mpp)")
    if args.val_fraction == 0 and args.select != "last":
        raise SystemExit(f"{NAME}: --val-fraction 0 leaves no images to choose an epoch on: "
                         "add --select last")
    split = split_by_patient(dataset, val_fraction=args.val_fraction, seed=args.seed)
    train_config, model_config = configs_from_args(args, dataset.classes, data_mpp,
                                                   split.train)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, pretrained, split_train, split_val = model_and_data(args, model_config, split,
                                                                data_mpp)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_csv = Path(args.log) if args.log else out.with_suffix(".csv")
    log_json = log_csv.with_suffix(".json")
    if split.grouped_by == "none":
        held_out = "none: every image trains the model"
    else:
        held_out = (f"{len(split.val)} images ({split.grouped_by} split, "
                    f"{', '.join(split.val_groups) if split.grouped_by == 'patient' else 'by image'})")
    print(f"{NAME}: {len(dataset)} images {dataset.class_counts()} from {args.data}; "
          f"validation: {held_out}", file=sys.stderr)
    history_so_far: list[dict] = []
    bar = tqdm(total=args.epochs, desc=args.arch, unit="epoch", disable=args.quiet, file=sys.stderr)

    def on_progress(record):
        history_so_far.append(record.metrics)
        shown = {"loss": record.metrics.get("train_loss")}
        for key, short in (("val_error", "err"), ("val_f1_pos", "F1+"), ("val_f1_neg", "F1-")):
            if key in record.metrics:
                shown[short] = record.metrics[key]
        bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})
        bar.update(1)
        _write_csv(log_csv, history_so_far)

    started = time.perf_counter()
    try:
        result = run_to_end(
            train_wsl(model, split_train, split_val, train_config, model_config=model_config),
            on_progress,
        )
    finally:
        bar.close()
    fg_range = calibrate_if_maxmin(args, model, model_config, split_train, train_config)
    final = (evaluate(model, split_val, train_config.device, config=train_config,
                      flips=train_config.tta_flips) if len(split_val) else {})
    extra = {
        "command": command,
        "data": {
            "path": str(Path(args.data).resolve()),
            "layout": layout,
            "note": args.data_note,
            "n_images": len(dataset),
            "class_counts": dataset.class_counts(),
            "mpp": data_mpp,
        },
        "split": split.to_dict(),
        "val_metrics": {k: v for k, v in final.items()},
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped": result.stopped,
        "train_seconds": round(result.seconds, 1),
        "train_config": train_config.to_dict(),
        "pretrained": pretrained,
        "fg_range": None if fg_range is None else list(fg_range),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
        "history": result.history,
    }
    save_checkpoint(out, model, model_config, extra=extra)
    _write_csv(log_csv, result.history)
    _write_json(
        log_json,
        {**extra, "model_config": model_config.to_dict(), "checkpoint": str(out),
         "wall_seconds": round(time.perf_counter() - started, 1)},
    )
    if args.card:
        _write_json(Path(args.card), model_card(model_config.to_dict(), extra))
    print(f"best epoch {result.best_epoch + 1} of {len(result.history)} ({result.stopped}); "
          f"{result.seconds / 60:.1f} min; checkpoint {out}; logs {log_csv}, {log_json}")
    if final:
        line = f"validation ({final['n_images']} images): error {100 * final['error']:.2f}%"
        if "f1_pos" in final:
            line += (
                f"  F1+ {100 * final['f1_pos']:.2f}%  F1- {100 * final['f1_neg']:.2f}%"
                f"  (all-ones F1+ {100 * final['all_ones_f1_pos']:.2f}%"
                f" F1- {100 * final['all_ones_f1_neg']:.2f}%)"
            )
        print(line)
    return 0


def _with_mpp(dataset, mpp):
    from dataclasses import replace

    return replace(dataset, mpp=mpp)
