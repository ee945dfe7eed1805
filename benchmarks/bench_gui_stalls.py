"""UI stalls of napari with the plugin: longest gap of a 10 ms heartbeat while slides and patch
folders open, a synthetic sample is written, and the Inference dock runs its default maps.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_gui_stalls.py

Scenarios, one after the other in one viewer:

- the synthetic sample slide, written the first time (into an empty cache folder);
- opening CMU-1-Small-Region.svs (``../shared/data/wsi`` or ``sample_data/``);
- opening a folder of 80 GlaS training patches (symbolic links to ``../shared/data/glas_train``);
- the Inference dock with its default maps on CMU-1, then on the patch folder (default model,
  CPU, a temporary project), and once more on CMU-1 (the finished maps are reused);
- showing another map of the last run, the uncertainty, as a user asks for it (the legend's
  box; with an older dock that made every layer, its hidden layer turned visible).

A QTimer fires every 10 ms on the UI thread and records the time between its calls: a gap of
g ms means the event loop could not run for about g - 10 ms. For each scenario the benchmark
prints the load average, the longest gap, the three longest with the seconds since the scenario
started, the time spent inside napari's own ``add_image``/``add_shapes``/``add_layer`` calls
(layer controls, vispy visuals, first slice), which the plugin does not control, and the time
inside the Inference dock's UI-thread slots (``time.perf_counter`` around each call; less noisy
than the heartbeat on a loaded machine): their total, the longest call and how much of that
call was napari's add_*. ``--profile`` adds a cProfile of those slots per scenario.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NAPARI_WSL_AL_PROJECT", str(Path(tempfile.mkdtemp()) / "study.wslal"))
os.environ["NAPARI_WSL_AL_CACHE_DIR"] = tempfile.mkdtemp(prefix="wslal-cache-")

import napari
from heartbeat import Heartbeat, for_seconds
from napari.components.viewer_model import ViewerModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

#: Heartbeat period, ms.
HEARTBEAT_MS = 10


class NapariTimer:
    """Time spent inside napari's own layer creation calls (wraps ViewerModel.add_*)."""

    NAMES = ("add_image", "add_shapes", "add_labels", "add_layer")

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self.longest = 0.0
        self._depth = 0
        for name in self.NAMES:
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        original = getattr(ViewerModel, name)
        timer = self

        def wrapped(viewer, *args, **kwargs):
            timer._depth += 1
            started = time.perf_counter()
            try:
                return original(viewer, *args, **kwargs)
            finally:
                timer._depth -= 1
                if timer._depth == 0:
                    spent = time.perf_counter() - started
                    timer.seconds += spent
                    timer.calls += 1
                    timer.longest = max(timer.longest, spent)

        setattr(ViewerModel, name, wrapped)

    def reset(self) -> None:
        self.seconds, self.calls, self.longest = 0.0, 0, 0.0


class SlotTimer:
    """Time inside the Inference dock's UI-thread slots (wraps the class's methods).

    Each call is timed with ``time.perf_counter``; for the longest call, the part spent inside
    napari's add_* calls (:class:`NapariTimer`) is kept too. With ``profile``, the slots run
    under one cProfile.
    """

    NAMES = ("_on_yielded", "_add_next", "_on_returned", "_outline_traced", "_on_finished",
             "_legend_toggled", "show_map")

    def __init__(self, widget_class, napari_time: NapariTimer, profile: bool = False):
        self.napari_time = napari_time
        self.profile = profile
        self._depth = 0
        self.reset()
        for name in self.NAMES:
            if hasattr(widget_class, name):  # an older dock may lack some
                self._wrap(widget_class, name)

    def _wrap(self, widget_class, name: str) -> None:
        original = getattr(widget_class, name)
        timer = self

        def wrapped(widget, *args, **kwargs):
            if timer._depth:
                return original(widget, *args, **kwargs)
            timer._depth += 1
            napari_before = timer.napari_time.seconds
            if timer.profiler is not None:
                timer.profiler.enable()
            started = time.perf_counter()
            try:
                return original(widget, *args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                if timer.profiler is not None:
                    timer.profiler.disable()
                timer._depth -= 1
                timer.seconds += spent
                timer.calls += 1
                timer.per_slot[name] = timer.per_slot.get(name, 0.0) + spent
                timer.slot_longest[name] = max(timer.slot_longest.get(name, 0.0), spent)
                if spent > timer.longest:
                    timer.longest = spent
                    timer.longest_name = name
                    timer.longest_napari = timer.napari_time.seconds - napari_before

        wrapped.__name__ = name
        setattr(widget_class, name, wrapped)

    def reset(self) -> None:
        self.seconds, self.calls, self.longest = 0.0, 0, 0.0
        self.longest_name, self.longest_napari = "", 0.0
        self.per_slot: dict[str, float] = {}
        self.slot_longest: dict[str, float] = {}
        self.profiler = cProfile.Profile() if self.profile else None

    def summary(self) -> str:
        if not self.calls:
            return ""
        slots = ", ".join(f"{name} {1000 * seconds:.0f} (longest "
                          f"{1000 * self.slot_longest[name]:.0f})" for name, seconds in
                          sorted(self.per_slot.items(), key=lambda item: -item[1]))
        return (f"dock slots (perf_counter): {1000 * self.seconds:.0f} ms in {self.calls} calls "
                f"({slots} ms); longest {1000 * self.longest:.0f} ms ({self.longest_name}), "
                f"{1000 * self.longest_napari:.0f} ms of it in napari's add_*")

    def profile_text(self, lines: int = 60) -> str:
        if self.profiler is None or not self.calls:
            return ""
        out = io.StringIO()
        pstats.Stats(self.profiler, stream=out).sort_stats("cumulative").print_stats(lines)
        return out.getvalue()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def report(name: str, gaps: list[tuple[float, float]], napari_time: NapariTimer, extra: str = "",
           slots: SlotTimer | None = None):
    """Print the longest gap, the three longest, napari's layer-creation time, the dock's slots."""
    ordered = sorted(gaps, key=lambda item: item[1], reverse=True)
    top = ", ".join(f"{1000 * gap:.0f} ms at {at:.1f} s" for at, gap in ordered[:3])
    longest = 1000 * ordered[0][1] if ordered else 0.0
    print(f"{name} (load average {load_average()})\n"
          f"  longest gap {longest:.0f} ms; 3 longest: {top}")
    LONGEST[name] = longest
    if napari_time.calls:
        print(f"  inside napari's add_* calls: {1000 * napari_time.seconds:.0f} ms in "
              f"{napari_time.calls} calls (longest {1000 * napari_time.longest:.0f} ms)")
    if slots is not None and slots.calls:
        print(f"  {slots.summary()}")
    if extra:
        print(f"  {extra}")
    if slots is not None and slots.profile_text():
        print(slots.profile_text())
    sys.stdout.flush()


#: Longest gap of each scenario, ms (for the closing comparison).
LONGEST: dict[str, float] = {}


def napari_alone(viewer, beat: Heartbeat, napari_time: NapariTimer, shape: tuple[int, int],
                 what: str) -> None:
    """The reference: napari adding a float32 map layer of ``shape`` (two levels, numpy, no
    plugin code), shown over the open slides, then its first paint; the layer is removed."""
    import numpy as np

    levels = [np.random.default_rng(0).random(shape, dtype=np.float32)]
    levels.append(levels[0][::2, ::2].copy())
    name = "napari alone"
    napari_time.reset()
    gaps = beat.run(for_seconds(1.5), lambda: viewer.add_image(
        levels, multiscale=True, name=name, colormap="magma", contrast_limits=(0, 1),
        opacity=0.6, blending="translucent"))
    report(f"napari alone: add_image of a {shape[0]} x {shape[1]} float map ({what})", gaps,
           napari_time)
    viewer.layers.remove(name)
    beat.run(for_seconds(0.5))


def find_cmu1() -> Path:
    for candidate in (SHARED / "wsi" / "CMU-1-Small-Region.svs",
                      ROOT / "sample_data" / "CMU-1-Small-Region.svs"):
        if candidate.is_file():
            return candidate
    raise SystemExit("CMU-1-Small-Region.svs not found in ../shared/data/wsi or sample_data/")


def patch_folder(count: int) -> Path:
    """A folder of ``count`` GlaS training images (symbolic links), in a temporary folder."""
    images = SHARED / "glas_train" / "images"
    files = sorted(images.glob("*.png"), key=lambda p: int("".join(filter(str.isdigit, p.stem)) or 0))
    if len(files) < count:
        raise SystemExit(f"{images} holds {len(files)} images, {count} wanted")
    folder = Path(tempfile.mkdtemp(prefix="wslal-patches-")) / f"glas_{count}"
    folder.mkdir()
    for file in files[:count]:
        (folder / file.name).symlink_to(file)
    return folder


def run_inference(widget, slide_name: str, beat: Heartbeat, napari_time: NapariTimer, title: str,
                  slots: SlotTimer):
    widget.slide_combo.setCurrentText(slide_name)
    napari_time.reset()
    slots.reset()
    started = {}

    def start():
        started["t"] = time.perf_counter()
        widget.run()

    gaps = beat.run(lambda: "t" in started and widget.worker is None, start)
    seconds = time.perf_counter() - started["t"]
    after = beat.run(for_seconds(2.0))
    offset = gaps[-1][0] if gaps else 0.0
    report(title, gaps + [(offset + at, gap) for at, gap in after], napari_time,
           f"{seconds:.1f} s to the end of the run; status: {widget.status.text()}; "
           f"{len(widget.map_layers())} map layers", slots)


def show_uncertainty(widget, beat: Heartbeat, napari_time: NapariTimer, slots: SlotTimer):
    """Show the last run's uncertainty map as a user asks for it."""
    napari_time.reset()
    slots.reset()

    def show():
        if hasattr(widget, "show_map"):
            widget.show_map(widget.run_map_key("uncertainty/ovr_entropy_max"))
        else:  # an older dock: the hidden layer it made turns visible
            for layer in widget.map_layers():
                if layer.metadata["wslal_map"] == "uncertainty/ovr_entropy_max":
                    layer.visible = True

    gaps = beat.run(for_seconds(3.0), show)
    shown = [layer.name for layer in widget.map_layers() if layer.visible]
    report("show the uncertainty map of the last run", gaps, napari_time,
           f"shown: {', '.join(shown)}", slots)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=int, default=80, help="patches in the folder")
    parser.add_argument("--no-infer", action="store_true", help="only the opening scenarios")
    parser.add_argument("--no-sample", action="store_true", help="skip the synthetic sample")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile of the Inference dock's slots per scenario")
    args = parser.parse_args()
    print(f"load average at the start: {load_average()}")

    napari_time = NapariTimer()
    beat = Heartbeat()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    beat.run(for_seconds(1.0))
    # Plugin modules imported once, as after napari's first use of the plugin.
    import napari_wsl_al._reader  # noqa: F401
    from napari_wsl_al._qt.infer_widget import InferenceWidget

    print(f"heartbeat {HEARTBEAT_MS} ms; idle gaps: longest "
          f"{1000 * max(g for _, g in beat.run(for_seconds(1.0))):.0f} ms")

    if not args.no_sample:
        napari_time.reset()
        gaps = beat.run(for_seconds(1.5), lambda: viewer.open_sample("napari-wsl-al", "synthetic_slide"))
        while any(layer.name.startswith("synthetic") for layer in viewer.layers) is False:
            gaps += beat.run(for_seconds(0.5))
        report("synthetic sample slide, first write", gaps, napari_time)
        viewer.layers.clear()
        beat.run(for_seconds(0.5))

    cmu1 = find_cmu1()
    napari_time.reset()
    gaps = beat.run(for_seconds(2.0), lambda: viewer.open(str(cmu1), plugin="napari-wsl-al"))
    report(f"open {cmu1.name}", gaps, napari_time)

    folder = patch_folder(args.patches)
    napari_time.reset()
    gaps = beat.run(for_seconds(3.0), lambda: viewer.open(str(folder), plugin="napari-wsl-al"))
    report(f"open a folder of {args.patches} GlaS patches", gaps, napari_time)

    for shape, what in (((150, 112), "CMU-1's map size"), ((441, 441), "the patch grid's")):
        napari_alone(viewer, beat, napari_time, shape, what)

    if not args.no_infer:
        slots = SlotTimer(InferenceWidget, napari_time, profile=args.profile)
        widget = InferenceWidget(viewer)
        viewer.window.add_dock_widget(widget, area="right", name="Inference")
        widget.device_combo.setCurrentText("cpu")
        beat.run(for_seconds(0.5))
        run_inference(widget, cmu1.stem, beat, napari_time, "inference, default maps, CMU-1",
                      slots)
        run_inference(widget, folder.name, beat, napari_time,
                      f"inference, default maps, {args.patches} patches", slots)
        run_inference(widget, cmu1.stem, beat, napari_time,
                      "inference again on CMU-1 (maps reused)", slots)
        show_uncertainty(widget, beat, napari_time, slots)
    reference = max((gap for name, gap in LONGEST.items() if name.startswith("napari alone")),
                    default=0.0)
    if reference:
        print(f"longest gap of each scenario / napari alone adding one map layer "
              f"({reference:.0f} ms, the longer of the two):")
        for name, gap in LONGEST.items():
            if not name.startswith("napari alone"):
                print(f"  {name}: {gap:.0f} ms, {gap / reference:.2f}x")
    print(f"load average at the end: {load_average()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
