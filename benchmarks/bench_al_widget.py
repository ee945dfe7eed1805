"""UI stalls of the Active learning dock: longest gap of a 50 ms heartbeat during Suggest, key
presses and a training round, and the key press to next suggestion time.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_al_widget.py

``--profile`` prints where the UI thread spends the slots that end Suggest and the round.

A synthetic 2048 x 1536 slide at 0.5 µm/px in a temporary project; 20 suggestions; a round of
40 training steps; Suggest and Train next round are started from the event loop, as a click
starts them. Stalls are measured on the UI thread with a QTimer firing every 50 ms: a gap
of g ms means the event loop could not run for about g - 50 ms.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NAPARI_WSL_AL_PROJECT", str(Path(tempfile.mkdtemp()) / "study.wslal"))

import napari
from napari.utils.key_bindings import KeymapHandler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heartbeat import Heartbeat, for_seconds

from napari_wsl_al._qt.al_widget import ActiveLearningWidget
from napari_wsl_al.core.al.rounds import ALSettings
from napari_wsl_al.core.al.superpixels import SuperpixelConfig
from napari_wsl_al.core.al.train import RegionTrainConfig
from napari_wsl_al.core.data.synthetic import write_synthetic_slide
from napari_wsl_al.core.project import Project

HEARTBEAT_MS = 50


def pump_events(until, interval_ms: int = HEARTBEAT_MS, log: list | None = None,
                action=None) -> float:
    """Run the Qt event loop until ``until()``; longest heartbeat gap in seconds. With ``log``,
    every gap over twice the interval is appended as (seconds since start, gap). ``action``
    is started from the event loop, as a button's click is."""
    gaps = Heartbeat(interval_ms).run(until, action)
    if log is not None:
        log.extend((at, gap) for at, gap in gaps if gap > 2 * interval_ms / 1000)
    return max((gap for _, gap in gaps), default=0.0)


def press(viewer, key) -> float:
    """Dispatch a key as napari does; seconds until the handler returned."""
    handler = KeymapHandler()
    active = viewer.layers.selection.active
    handler.keymap_providers = [viewer] if active is None else [active, viewer]
    start = time.perf_counter()
    handler.press_key(key)
    handler.release_key(key)
    return time.perf_counter() - start


class StackSampler:
    """Every 10 ms, the innermost frames of the other threads (with ``--profile``): the frames
    seen right after a long heartbeat gap show which call held the interpreter."""

    def __init__(self):
        import threading

        self.samples: list = []
        self.main = threading.main_thread().ident
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.running = True
        self.thread.start()

    def _run(self):
        import threading
        import traceback

        me = threading.get_ident()
        while self.running:
            time.sleep(0.01)
            now = time.perf_counter()
            for ident, frame in sys._current_frames().items():
                if ident not in (me, self.main):
                    stack = traceback.extract_stack(frame)[-5:]
                    self.samples.append(
                        (now, " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                         for f in reversed(stack))))

    def report(self, gaps, start):
        self.running = False
        for at, gap in gaps:
            if gap < 0.2:
                continue
            end = start + at
            seen = [stack for t, stack in self.samples if end - 0.01 <= t <= end + 0.05]
            print(f"gap of {1000 * gap:.0f} ms at {at:.1f} s; worker right after:")
            for stack in dict.fromkeys(seen):
                print("   ", stack)


def main() -> int:
    folder = Path(tempfile.mkdtemp())
    slide = write_synthetic_slide(folder / "synth.tif", 2048, 1536, mpp=0.5, seed=7,
                                  tissue_fraction=0.5, smallest_level=512)
    project = Project.create(os.environ["NAPARI_WSL_AL_PROJECT"], classes=["benign", "malignant"])
    project.add_slide(slide)
    ALSettings(n_suggestions=20, superpixels=SuperpixelConfig(region_px=32),
               train=RegionTrainConfig(steps=40, batch_size=4, crop_size=128), tile_px=512,
               device="cpu").save_to(project)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(str(slide), plugin="napari-wsl-al")
    widget = ActiveLearningWidget(viewer)
    if "--profile" in sys.argv:
        # where the UI-thread time of the slots that end Suggest and the round goes
        import cProfile
        import pstats

        def profiled(name):
            slot = getattr(widget, name)

            def run(result):
                profile = cProfile.Profile()
                profile.runcall(slot, result)
                print(f"--- {name} on the UI thread")
                pstats.Stats(profile).sort_stats("cumulative").print_stats(18)
            return run

        for name in ("_suggested", "_trained"):
            setattr(widget, name, profiled(name))
    viewer.window.add_dock_widget(widget, name="Active learning", area="right")
    pump_events(for_seconds(1))
    idle = pump_events(for_seconds(3))
    suggest_gaps: list = []
    asked = []
    suggest_stall = pump_events(lambda: bool(asked) and widget.worker is None,
                                log=suggest_gaps,
                                action=lambda: (widget.suggest(), asked.append(True)))
    # the slots run when the worker ends are measured by the heartbeat that follows them
    suggest_stall = max(suggest_stall, pump_events(for_seconds(1), log=suggest_gaps))
    key_times = []
    for index in range(10):
        key_times.append(press(viewer, "2" if index % 2 else "1") + press(viewer, "Enter"))
    labels_stall = pump_events(for_seconds(1))
    sampler = StackSampler() if "--profile" in sys.argv else None
    modules_before = set(sys.modules)
    gaps: list = []
    round_start = time.perf_counter()
    started = []
    round_stall = pump_events(lambda: bool(started) and widget.worker is None, log=gaps,
                              action=lambda: (widget.train(), started.append(True)))
    round_stall = max(round_stall, pump_events(for_seconds(1), log=gaps))
    after_round = pump_events(for_seconds(2), log=gaps)
    if sampler is not None:
        sampler.report(gaps, round_start)
        new = sorted({m.split(".")[0] + "." + (m.split(".") + [""])[1]
                      for m in set(sys.modules) - modules_before})
        print(f"packages first imported during the round: {', '.join(new)}")
    key_times.sort()
    print(f"heartbeat {HEARTBEAT_MS} ms; longest gap (ms):")
    print(f"  idle event loop, 3 s:            {1000 * idle:7.0f}")
    print(f"  Suggest (20 of the slide) + 1 s: {1000 * suggest_stall:7.0f}")
    print("  gaps over 100 ms during Suggest (s from its start, ms): "
          + ", ".join(f"{t:.1f}: {1000 * g:.0f}" for t, g in suggest_gaps))
    print(f"  after 10 labels (1 s):           {1000 * labels_stall:7.0f}")
    print(f"  Train next round (40 steps) + 1 s:{1000 * round_stall:6.0f}")
    print(f"  2 s after that:                  {1000 * after_round:7.0f}")
    print("  gaps over 100 ms during the round (s from its start, ms): "
          + ", ".join(f"{t:.1f}: {1000 * g:.0f}" for t, g in gaps))
    print(f"key press + Enter to the next suggestion centred and outlined (Python, no paint): "
          f"median {1000 * key_times[len(key_times) // 2]:.0f} ms, max {1000 * key_times[-1]:.0f} ms")
    print(f"status after the round: {widget.status.text()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
