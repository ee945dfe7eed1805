"""Runs tiled inference into a map store in its own process, for the crash and lock tests.

The test starts this script with ``subprocess`` and kills it (SIGKILL) at a chosen point:
after a number of batches, when the final pyramid update starts, or in the middle of it.
The kill points are hooks of this script only (wrapped store methods), not of the library.

Usage::

    python store_safety_driver.py STORE [--kill-after-batches N] [--kill-in-final-pyramid K]
                                  [--pyramid-interval S] [--ready FILE] [--go FILE]
                                  [--batch-seconds S] [--lock-timeout S] [--colour]
                                  [--cam]

Prints one JSON line ``{"computed": ..., "total": ...}`` when the run ends, or the error
message on stderr and exit status 1 when the library raises one of its typed errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer_models import gradient_image

from napari_wsl_al.core.infer import store as store_module
from napari_wsl_al.core.infer.engine import InferenceConfig, infer_slide
from napari_wsl_al.core.infer.store import MapStore
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.models.base import WslModel

#: The synthetic slide: 1100 x 2100 pixels, maps of 275 x 525 with three pyramid levels.
SLIDE_SHAPE = (1100, 2100)

#: Tiles of 128 pixels overlapping by 32, 8 per batch: 12 x 22 tiles in 33 batches.
CONFIG = InferenceConfig(tile_size=128, overlap=32, batch_size=8, device="cpu",
                         tissue_threshold=0, readers=1, tissue_gate=False)


class PatternModel(WslModel):
    """CAMs from the red and green channels, foreground from their difference, per-tile logits."""

    classes = ("red", "green")
    output_stride = 4
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, x):
        pooled = F.avg_pool2d(x[:, :2], self.output_stride)
        cams = self.gain * pooled
        fg = torch.sigmoid(self.gain * (pooled[:, :1] - pooled[:, 1:2]))
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams, "fg": fg}


#: The colour target of the ``--colour`` runs (L*, a*, b* means, then spreads).
COLOUR_TARGET = (55.0, 25.0, -12.0, 14.0, 9.0, 7.0)


def colour_model() -> PatternModel:
    """The pattern model, colour-normalising every tile from the slide's statistics."""
    model = PatternModel()
    model.colour_target = COLOUR_TARGET
    return model


#: The tissue-gated configuration of the ``--cam`` runs (uncertainty maps gated too).
GATED_CONFIG = replace(CONFIG, tissue_gate=True)


def cam_model():
    """A small seeded WILDCAT with a colour target and one class's map as its foreground, as
    the shipped model is: its slide needs colour statistics and a foreground range (of that
    class's map), both kept in the store's spec."""
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(arch="wildcat", classes=("red", "green"), width=0.0625,
                         colour_target=COLOUR_TARGET, fg_class="green")
    return build_model(config).eval()


def slide_reader() -> ArrayReader:
    """The synthetic slide, the same in every process."""
    return ArrayReader(gradient_image(*SLIDE_SHAPE, seed=3), mpp=0.5, name="synthetic")


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_final_pyramid_kill(nth_downsample: int) -> None:
    """SIGKILL once every tile is done and the pyramid is being brought up to date.

    ``nth_downsample == 0`` kills when the update starts, ``k > 0`` at the k-th 2 x 2
    downsampling of that update (part of the lower levels written).
    """
    update = store_module.MapStore._update_pyramid
    downsample = store_module._downsample_2x
    state = {"final": False, "calls": 0}

    def watched_update(self, *args, **kwargs):
        if self.done is not None and self.done.all() and self._dirty is not None:
            state["final"] = True
            if nth_downsample == 0:
                _kill_self()
        return update(self, *args, **kwargs)

    def watched_downsample(block):
        if state["final"]:
            state["calls"] += 1
            if state["calls"] == nth_downsample:
                _kill_self()
        return downsample(block)

    store_module.MapStore._update_pyramid = watched_update
    store_module._downsample_2x = watched_downsample


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--kill-after-batches", type=int)
    parser.add_argument("--kill-in-final-pyramid", type=int)
    parser.add_argument("--pyramid-interval", type=float, default=1e9,
                        help="seconds between pyramid updates during the run (default: none)")
    parser.add_argument("--ready", type=Path, help="file written once imports are done")
    parser.add_argument("--go", type=Path, help="wait for this file before starting")
    parser.add_argument("--batch-seconds", type=float, default=0.0,
                        help="sleep after every batch (a slower run)")
    parser.add_argument("--lock-timeout", type=float)
    parser.add_argument("--colour", action="store_true", help="the colour-normalising model")
    parser.add_argument("--cam", action="store_true",
                        help="the colour-normalising WILDCAT, tissue gate on")
    args = parser.parse_args(argv)

    from napari_wsl_al.core.errors import WslAlError

    store_module.BLEND_INTERVAL_S = 0.0  # every batch is blended and marked done at once
    store_module.PYRAMID_INTERVAL_S = args.pyramid_interval
    if args.kill_in_final_pyramid is not None:
        _install_final_pyramid_kill(args.kill_in_final_pyramid)
    reader = slide_reader()
    model = cam_model() if args.cam else colour_model() if args.colour else PatternModel()
    store = MapStore(args.store)
    if args.lock_timeout is not None:
        store.lock_timeout = args.lock_timeout
    if args.ready is not None:
        args.ready.write_text("ready")
    if args.go is not None:
        while not args.go.exists():
            time.sleep(0.01)
    job = infer_slide(reader, model, GATED_CONFIG if args.cam else CONFIG, store)
    batches = 0
    try:
        while True:
            try:
                progress = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            if progress.metrics.get("batch", 0) > 0:
                batches += 1
                if batches == args.kill_after_batches:
                    _kill_self()
                time.sleep(args.batch_seconds)
    except WslAlError as error:
        print(f"store_safety_driver: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"computed": result.tiles_computed, "total": result.tiles_total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
