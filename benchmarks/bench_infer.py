"""Benchmark of tiled slide inference: model utilisation, thread-worker overhead, UI stalls, memory.

Figures are ratios measured in one run on the same tiles (see DESIGN.md, Budgets):

(a) end-to-end ``infer_slide`` tiles/s over the bare model's tiles/s (pre-loaded, normalised
    tensors, the same batches); target >= 0.85. Measured for a small ResNet-18 and for the
    shipped default model at its default settings, in interleaved rounds (bare, end to end,
    bare, end to end, ... on the same tiles: the load of a shared machine drifts), reported
    as the median and range (min-max) of the per-round ratios;
(b) the same run inside a napari thread worker (``create_worker``, Qt event loop) over the
    synchronous run; target >= 0.90; a 10 ms QTimer heartbeat measures the longest event-loop
    stall (target < 100 ms);
(c) peak RSS of whole-slide runs over a 10k and a 40k procedural slide (subprocesses);
(d) tiles/s on CUDA when available.

``--profile`` instead says where the end-to-end time goes beyond the model, stage by stage
and thread by thread (wall and CPU seconds per tile, from timers wrapped around the pipeline's
functions by this script; the library carries no instrumentation), at 16- and 32-pixel map
pixels.

Run under Xvfb::

    xvfb-run -a .venv/bin/python benchmarks/bench_infer.py [--quick] [--rounds N] [--profile]
        [--ratios-only]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_wsl_al.core.infer import InferenceConfig, MapStore, infer_slide
from napari_wsl_al.core.io.base import SlideReader
from napari_wsl_al.core.models.base import WslModel
from napari_wsl_al.core.progress import run_to_end


class ProceduralSlide(SlideReader):
    """A slide whose pixels are computed from their coordinates: any size, no file, no RAM."""

    def __init__(self, size: int, mpp: float = 0.5, levels: int = 4):
        super().__init__()
        self.name = f"procedural-{size}"
        self.format = "procedural"
        self.set_mpp(mpp)
        self.native_dimensions = [(size >> k, size >> k) for k in range(levels)]
        self.native_downsamples = [float(2**k) for k in range(levels)]
        self.native_tile_sizes = [(256, 256)] * levels
        self._finish_init()

    def _read_native(self, level, x, y, width, height):
        d = 2**level
        yy, xx = np.mgrid[y : y + height, x : x + width].astype(np.float32) * d
        wave = 0.5 + 0.5 * np.sin(xx / 91.0) * np.cos(yy / 57.0)
        out = np.empty((height, width, 3), np.uint8)
        out[..., 0] = 120 + 100 * wave
        out[..., 1] = 60 + 80 * (1 - wave)
        out[..., 2] = 150 + 60 * wave
        return out


class OneConvModel(WslModel):
    """A very small model (one convolution) for the memory runs."""

    classes = ("tumour", "normal")
    output_stride = 32

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        cams = nn.functional.avg_pool2d(self.conv(x), self.output_stride)
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams}


def small_resnet(width: float) -> WslModel:
    """A CAM-Avg ResNet-18 at a channel width multiplier, from the factory."""
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    return build_model(ModelConfig(arch="cam-avg", classes=("tumour", "normal"), width=width)).eval()


class BareModel:
    """The model alone: forward passes on pre-loaded normalised tensors, in the engine's batches.

    The tiles are read and normalised once (not timed); every :meth:`run` times the forward
    passes over all of them.
    """

    def __init__(self, model, reader, config, device):
        from napari_wsl_al.core.infer.tiling import tile_grid

        self.model, self.device = model, device
        grid = tile_grid(reader, config.tile_size, config.overlap, level=config.level,
                         tissue_threshold=0)
        self.tiles = len(grid.tiles)
        self.batches = []
        for start in range(0, len(grid.tiles), config.batch_size):
            tiles = grid.tiles[start : start + config.batch_size]
            pixels = np.stack([reader.read_level(0, *grid.position(r, c), config.tile_size,
                                                 config.tile_size) for r, c in tiles])
            self.batches.append(model.normalize(torch.from_numpy(pixels)).to(device))
        model.to(device)
        with torch.inference_mode():
            for images in {tuple(b.shape): b for b in self.batches}.values():
                model(images)  # warm-up, every batch shape

    def run(self) -> float:
        """Tiles/s of one pass over every batch."""
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            for images in self.batches:
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    self.model(images)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        return self.tiles / seconds


def bare_model_tiles_per_s(model, reader, config, device) -> float:
    """Forward passes only, on pre-loaded normalised tensors in the same batches."""
    return BareModel(model, reader, config, device).run()


def current_rss_mib() -> float:
    """Resident set size now (Linux /proc), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def end_to_end_tiles_per_s(model, reader, config, folder) -> tuple[float, float]:
    """``infer_slide`` tiles/s over its batch loop, and over the whole call."""
    store = MapStore(Path(folder) / f"e2e-{time.monotonic_ns()}.zarr")
    last = None
    started = time.perf_counter()
    job = infer_slide(reader, model, config, store)
    while True:
        try:
            last = next(job)
        except StopIteration as stop:
            result = stop.value
            break
    total = time.perf_counter() - started
    shutil.rmtree(store.path, ignore_errors=True)
    return last.metrics["tiles_per_s"], result.tiles_computed / total


def spread(values, digits: int = 2) -> str:
    """``median [min-max]`` of some numbers."""
    values = np.asarray(values, dtype=float)
    return (f"{np.median(values):.{digits}f} [{values.min():.{digits}f}-"
            f"{values.max():.{digits}f}]")


class Case:
    """One model on one slide at one setting, with its bare-model baseline ready."""

    def __init__(self, label: str, model, reader, config):
        self.label, self.model, self.reader, self.config = label, model, reader, config
        self.bare = BareModel(model, reader, config, torch.device(config.device))
        self.rounds: dict[str, list[float]] = {"bare": [], "loop": [], "whole": []}

    def describe(self) -> str:
        from napari_wsl_al.core.infer.engine import map_stride_for

        c = self.config
        return (f"{self.label}: {self.reader.name}, {self.bare.tiles} tiles of {c.tile_size} "
                f"(overlap {c.overlap}), batch {c.batch_size}, map stride "
                f"{map_stride_for(self.model, c)}, maps {', '.join(c.maps)}")

    def one_round(self, folder) -> None:
        """The bare model, then ``infer_slide``, on the same tiles."""
        self.rounds["bare"].append(self.bare.run())
        loop, whole = end_to_end_tiles_per_s(self.model, self.reader, self.config, folder)
        self.rounds["loop"].append(loop)
        self.rounds["whole"].append(whole)
        gc.collect()

    def report(self) -> str:
        bare, loop = np.array(self.rounds["bare"]), np.array(self.rounds["loop"])
        ratios = loop / bare
        q1, q3 = np.percentile(ratios, [25, 75])
        return (f"    bare model tiles/s {spread(bare)}; infer_slide (batch loop) {spread(loop)}; "
                f"with set-up {spread(self.rounds['whole'])}\n"
                f"    end-to-end / bare per round: median {spread(ratios, 3)} (IQR {q1:.3f}-"
                f"{q3:.3f}, {len(ratios)} rounds); ratio of the medians "
                f"{np.median(loop) / np.median(bare):.3f} (target >= 0.85)")


def shipped_case(reader, **changes) -> Case | None:
    """The shipped default model at the default settings (None when it is not installed)."""
    from napari_wsl_al.core.models.checkpoint import default_checkpoint_path, load_default_model

    if not default_checkpoint_path().exists():
        return None
    model = load_default_model("cpu")
    config = InferenceConfig(level=0, device="cpu", tissue_threshold=0,
                             maps=("cam", "fg", "probs", "uncertainty"), **changes)
    return Case(f"shipped default model ({type(model).__name__})", model, reader, config)


def small_case(reader, width: float, **changes) -> Case:
    """A CAM-Avg ResNet-18 at a channel width, tiles of 256."""
    config = InferenceConfig(level=0, tile_size=256, overlap=32, batch_size=8, device="cpu",
                             tissue_threshold=0, maps=("cam", "fg", "probs", "uncertainty"),
                             **changes)
    return Case(f"ResNet-18 CAM-Avg width {width}", small_resnet(width), reader, config)


# ---------------------------------------------------------------------- profile
def thread_role(name: str | None = None) -> str:
    """Which part of the pipeline a thread (by name) belongs to."""
    name = threading.current_thread().name if name is None else name
    if name == "MainThread":
        return "main"
    if name.startswith("wslal-read"):
        return "reader"
    if name.startswith("wslal-write"):
        return "writer"
    if name.startswith(("zarr", "asyncio")):
        return "zarr"
    return "other"


class StageTimer:
    """Wall and CPU seconds per thread and stage, from timers wrapped around functions.

    Stages nest: a stage called inside another is recorded under the path of both, so that
    a zarr write is attributed to the blend or the raw-tile store that made it. The wrappers
    live in this script and are removed on exit: the library carries no instrumentation.
    """

    def __init__(self):
        self.stats: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        self._local = threading.local()
        self._undo: list[tuple] = []
        #: Part of the run the main thread is in (see :meth:`set_phase`): its stages are
        #: recorded under it.
        self.phase = "set-up"
        self.on_phase = None

    def set_phase(self, phase: str) -> None:
        """Record the main thread's next stages under ``phase`` (and tell ``on_phase``)."""
        if phase != self.phase and self.on_phase is not None:
            self.on_phase(phase)
        self.phase = phase

    def _stack(self) -> list[str]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def _record(self, path: tuple, wall: float, cpu: float) -> None:
        role = thread_role()
        if role == "main":
            path = (self.phase,) + path
        entry = self.stats[(role, path)]
        entry[0] += wall
        entry[1] += cpu
        entry[2] += 1

    def wrap(self, owner, name: str, stage: str) -> None:
        """Time ``owner.name`` (a class, a module) as ``stage``; nothing when it is absent."""
        own = not isinstance(owner, type) or name in owner.__dict__
        original = getattr(owner, name, None)
        if original is None:
            return
        timer = self

        def timed(*args, **kwargs):
            stack = timer._stack()
            stack.append(stage)
            path = tuple(stack)
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                timer._record(path, time.perf_counter() - wall, time.thread_time() - cpu)
                stack.pop()

        setattr(owner, name, timed)
        self._undo.append((owner, name, original, own))

    def wrap_waits(self) -> None:
        """Time the batch loop's waits: ``Future.result`` on the main thread, outside any stage,
        is a wait for a batch of tiles (a tuple comes back) or for the writer (None)."""
        original = Future.result
        timer = self

        def result(future, timeout=None):
            if threading.current_thread() is not threading.main_thread() or timer._stack():
                return original(future, timeout)
            wall, cpu = time.perf_counter(), time.thread_time()
            value = original(future, timeout)
            stage = "wait for tiles" if isinstance(value, tuple) else "wait for the writer"
            if stage == "wait for tiles" and timer.phase == "set-up":
                timer.set_phase("batch loop")  # the first batch of tiles: the loop has begun
            timer._record((stage,), time.perf_counter() - wall, time.thread_time() - cpu)
            return value

        Future.result = result
        self._undo.append((Future, "result", original, True))

    def __enter__(self):
        import zarr

        from napari_wsl_al.core.infer import engine
        from napari_wsl_al.core.infer import store as store_module
        from napari_wsl_al.core.models.base import WslModel

        self.wrap_waits()
        self.wrap(engine._TileReader, "__call__", "read batch")
        self.wrap(engine._TileReader, "submit", "submit reads")
        self.wrap(engine._TileReader, "_assemble", "assemble batch")
        self.wrap(engine._TileReader, "read_tile", "read tiles")
        self.wrap(WslModel, "normalize", "normalise")
        self.wrap(engine._TileReader, "tissue_fraction", "tissue fraction")
        self.wrap(engine._ModelRunner, "tile_outputs", "model + outputs")
        self.wrap(engine._ModelRunner, "run", "model")
        self.wrap(engine._ModelRunner, "forward", "forward")
        self.wrap(engine._ModelRunner, "finish", "outputs at map size")
        self.wrap(engine, "_to_map_size", "_to_map_size")
        self.wrap(ThreadPoolExecutor, "submit", "submit to a pool")
        self.wrap(MapStore, "_write_tiles", "write_tiles")
        self.wrap(MapStore, "_store_tiles", "store raw tiles")
        self.wrap(MapStore, "_blend_pending", "blend")
        self.wrap(MapStore, "_blend_box", "blend box")
        self.wrap(store_module, "derived_maps", "derived maps")
        self.wrap(MapStore, "_update_pyramid", "pyramid")
        self.wrap(MapStore, "_record_stale", "stale record")
        self.wrap(MapStore, "flush", "final flush")
        self.wrap(zarr.Array, "__setitem__", "zarr write")
        self.wrap(zarr.Array, "__getitem__", "zarr read")
        return self

    def __exit__(self, *exc):
        for owner, name, original, own in reversed(self._undo):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._undo.clear()


class ThreadCpu:
    """CPU seconds of every thread of this process (Linux ``/proc``), by phase and
    :func:`thread_role`.

    Sampled every 20 ms, so that threads ending before :meth:`stop` (the reader and writer
    pools) are counted too; zarr's event loop and its executor show as ``zarr``, torch's and
    the codecs' native threads as ``other``. :meth:`phase` starts a new phase.
    """

    def __init__(self, phase: str = "set-up"):
        self._tick = os.sysconf("SC_CLK_TCK")
        self._lock = threading.Lock()
        self._names: dict[int, str] = {}
        self._last = self._read()
        self._phases: list[tuple[str, dict[int, float]]] = [(phase, dict(self._last))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-sampler", daemon=True)
        self._thread.start()

    def _read(self) -> dict[int, float]:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / self._tick
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            for thread in threading.enumerate():
                if thread.native_id is not None:
                    self._names.setdefault(thread.native_id, thread.name)
            self._last.update(self._read())

    def phase(self, name: str) -> None:
        """End the current phase here and start ``name``."""
        self._sample()
        with self._lock:
            self._phases.append((name, dict(self._last)))

    def stop(self) -> dict[str, dict[str, float]]:
        """CPU seconds per phase and role (the sampler's own thread left out)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        bounds = self._phases + [("", self._last)]
        out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for (phase, begin), (_, end) in itertools.pairwise(bounds):
            for tid, seconds in end.items():
                name = self._names.get(tid, "")
                if name == self._thread.name:
                    continue
                role = thread_role(name) if name else "other"
                out[phase][role] += seconds - begin.get(tid, 0.0)
        return out


def profile_case(case: Case, rounds: int, folder) -> None:
    """Where the end-to-end time of ``case`` goes beyond the model, stage by stage."""
    tiles = 0
    loop_seconds = bare_seconds = 0.0
    cpu: dict[tuple[str, str], float] = defaultdict(float)
    with StageTimer() as timer:
        for _ in range(rounds):
            bare_seconds += case.bare.tiles / case.bare.run()
            timer.on_phase = None
            timer.set_phase("set-up")
            sampler = ThreadCpu("set-up")
            timer.on_phase = sampler.phase
            store = MapStore(Path(folder) / f"profile-{time.monotonic_ns()}.zarr")
            last = None
            for last in run_iter(infer_slide(case.reader, case.model, case.config, store)):
                if last.step >= last.total:
                    timer.set_phase("after the last batch")
            for phase, roles in sampler.stop().items():
                for role, seconds in roles.items():
                    cpu[(phase, role)] += seconds
            shutil.rmtree(store.path, ignore_errors=True)
            tiles += last.metrics["computed"]
            loop_seconds += last.metrics["computed"] / last.metrics["tiles_per_s"]
            gc.collect()
    per_tile = 1000.0 / tiles
    print(f"[profile] {case.describe()}; {rounds} rounds")
    print(f"  batch loop {loop_seconds * per_tile:.1f} ms/tile; bare model {bare_seconds * per_tile:.1f}"
          f" ms/tile (ratio {bare_seconds / loop_seconds:.3f}); wall and CPU ms per tile, nested "
          f"stages inside their caller's figure:")
    phases = {"set-up": 0, "batch loop": 1, "after the last batch": 2}
    for role in ("main", "reader", "writer"):
        rows = sorted(((phases.get(path[0], -1), path), value)
                      for (r, path), value in timer.stats.items() if r == role)
        if not rows:
            continue
        print(f"  {role} thread")
        for (_, path), (wall, thread_cpu, calls) in rows:
            if role == "main":
                phase, path = path[0], path[1:]
                if phase != getattr(profile_case, "_phase", None):
                    print(f"   {phase}:")
                    profile_case._phase = phase
            print(f"    {'  ' * (len(path) - 1)}{path[-1]:<{34 - 2 * len(path)}} wall "
                  f"{wall * per_tile:8.2f}  cpu {thread_cpu * per_tile:8.2f}  ({calls} calls)")
    profile_case._phase = None
    main_parts = sum(v[0] for (r, path), v in timer.stats.items() if r == "main"
                     and len(path) == 2 and path[0] == "batch loop")
    print(f"    (batch loop outside these stages: {(loop_seconds - main_parts) * per_tile:.2f} "
          f"ms/tile: progress records, bookkeeping, the first batch's wait before its record)")
    forward = sum(v[0] for (r, path), v in timer.stats.items() if r == "main" and path[-1] == "forward")
    print(f"  forward inside the pipeline / bare forward: {forward / bare_seconds:.3f} (above 1: "
          f"contention for the cores and the GIL with the other threads and processes)")
    for phase in ("set-up", "batch loop", "after the last batch"):
        roles = {role: seconds for (p, role), seconds in cpu.items() if p == phase and seconds}
        print(f"  CPU ms/tile by thread (/proc), {phase}: " + ", ".join(
            f"{role} {seconds * per_tile:.2f}" for role, seconds in sorted(roles.items())))


def run_iter(job):
    """Iterate a job's progress records, dropping its result."""
    while True:
        try:
            yield next(job)
        except StopIteration:
            return


def pump_events(until, interval_ms: int = 10) -> float:
    """Run the Qt event loop until ``until()`` holds; longest gap of a ``interval_ms`` heartbeat.

    The gap measures how long the event loop (the UI thread) was kept from running.
    """
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    state = {"beat": time.perf_counter(), "stall": 0.0}

    def beat():
        now = time.perf_counter()
        state["stall"] = max(state["stall"], now - state["beat"])
        state["beat"] = now

    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(beat)
    timer.start()
    state["beat"] = time.perf_counter()
    while not until():
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    return state["stall"]


def worker_run(model, reader, config, folder) -> tuple[float, float]:
    """The same run in a napari thread worker; returns (tiles/s, longest event-loop stall s)."""
    from napari.qt.threading import create_worker
    from qtpy.QtWidgets import QApplication

    _app = QApplication.instance() or QApplication([])  # kept: the thread pool needs it
    store = MapStore(Path(folder) / f"worker-{time.monotonic_ns()}.zarr")
    state = {"last": None, "done": False}
    worker = create_worker(infer_slide, reader, model, config, store, _start_thread=False)
    worker.yielded.connect(lambda progress: state.__setitem__("last", progress))
    worker.finished.connect(lambda: state.__setitem__("done", True))
    worker.start()
    stall = pump_events(lambda: state["done"])
    return state["last"].metrics["tiles_per_s"], stall


def idle_event_loop_stall(seconds: float) -> float:
    """Longest gap of the same heartbeat with nothing running: the machine's own noise."""
    end = time.perf_counter() + seconds
    return pump_events(lambda: time.perf_counter() >= end)


def rss_child(size: int, downsample_level: int) -> None:
    """(Subprocess) whole-slide inference on a procedural slide; prints peak RSS in MiB."""
    torch.set_num_threads(1)
    reader = ProceduralSlide(size)
    config = InferenceConfig(level=downsample_level, tile_size=256, overlap=32, batch_size=16,
                             device="cpu", tissue_threshold=0, maps=("cam", "fg", "uncertainty"))
    import threading

    model = OneConvModel()
    before = current_rss_mib()
    samples = [before]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            samples.append(current_rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        quarters = {}
        setup_peak = []

        def on_progress(progress) -> None:
            if not setup_peak:  # before the first batch: opening, tissue mask, set-up
                setup_peak.append(max(samples))
            quarter = min(4, 1 + 4 * progress.step // max(1, progress.total))
            quarters.setdefault(quarter, []).append(max(samples[-5:]))

        result = run_to_end(
            infer_slide(reader, model, config, MapStore(Path(folder) / "m.zarr")), on_progress
        )
        seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak = max(samples)
    print(json.dumps({"size": size, "tiles": result.tiles_computed, "seconds": seconds,
                      "rss_before_mib": before, "peak_rss_mib": peak,
                      "setup_peak_mib": setup_peak[0] if setup_peak else before,
                      "peak_by_quarter_mib": [max(quarters.get(q, [0])) for q in (1, 2, 3, 4)],
                      "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(size: int, level: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(size), "--rss-level",
                          str(level)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tiles, smaller model")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of (a) (default 5, 7 without --quick)")
    parser.add_argument("--profile", action="store_true",
                        help="only the stage-by-stage profile, at map strides 16 and 32")
    parser.add_argument("--ratios-only", action="store_true", help="only (a)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-level", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.rss_level)
        return

    # One intra-op thread: on a small shared machine two OpenMP threads spin-wait for each
    # other and make single measurements vary 5-10x; one thread makes the ratios comparable.
    torch.set_num_threads(args.threads)
    # Slides large enough for a steady state: the batch loop lasts over a second, so that the
    # writer's blends (at least BLEND_INTERVAL_S apart) fall inside it as on a whole slide, and
    # filling the pipeline (the first batch, which nothing overlaps) weighs little. The small
    # model gets 361 tiles of 256 (4096, quick) or 784 (6144); the shipped one 25 tiles of 512
    # (2048, quick) or 64 (3072).
    width = 0.125 if args.quick else 0.25
    rounds = args.rounds or (5 if args.quick else 7)
    reader = ProceduralSlide(4096 if args.quick else 6144, levels=1)
    shipped_reader = ProceduralSlide(2048 if args.quick else 3072, levels=1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"{os.cpu_count()} CPUs; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.profile:
        with tempfile.TemporaryDirectory() as folder:
            for map_stride in (None, 32):
                cases = [small_case(reader, width, map_stride=map_stride),
                         shipped_case(shipped_reader, map_stride=map_stride)]
                for case in cases:
                    if case is not None:
                        profile_case(case, 3, folder)
        print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
        return

    small = small_case(reader, width)
    shipped = shipped_case(shipped_reader)
    cases = [small] + ([shipped] if shipped is not None else [])
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(rounds):  # interleaved: the machine's load drifts
            for case in cases:
                case.one_round(folder)
    print(f"(a) end-to-end infer_slide over the bare model, {rounds} interleaved rounds "
          f"(median [min-max]):")
    for case in cases:
        print(f"  {case.describe()}")
        print(case.report())
    if shipped is None:
        print("  no shipped default model: its ratio is not measured")
    print(f"    load average after (a): {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.ratios_only:
        return

    worker_rounds = 2 if args.quick else 3
    loop, in_worker, stalls = [], [], []
    idle_stall = idle_event_loop_stall(2.0)
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(worker_rounds):
            loop.append(end_to_end_tiles_per_s(small.model, reader, small.config, folder)[0])
            # Collect the synchronous run's garbage first: otherwise a full collection of it,
            # under the GIL, lands in the worker run and shows as an event-loop stall that
            # belongs to the benchmark's previous step, not to the worker.
            gc.collect()
            tiles_per_s, stall = worker_run(small.model, reader, small.config, folder)
            in_worker.append(tiles_per_s)
            stalls.append(stall)

    def med(values) -> float:
        return float(np.median(values))

    def fmt(values) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    print(f"(b) thread worker tiles/s per round: {fmt(in_worker)}; synchronous {fmt(loop)}; "
          f"median ratio worker / synchronous = {med(in_worker) / med(loop):.3f} "
          f"(target >= 0.90)")
    print(f"    longest event-loop stall per round: {', '.join(f'{v * 1000:.0f}' for v in stalls)} "
          f"ms (target < 100 ms); idle baseline on this machine {idle_stall * 1000:.0f} ms")
    small_size, large = (2500, 10000) if args.quick else (10000, 40000)
    level = 2
    rss = [peak_rss(small_size, level), peak_rss(large, level)]
    for item in rss:
        print(f"(c) {item['size']} x {item['size']} slide at level {level} "
              f"({item['tiles']} tiles, {item['seconds']:.1f} s): peak RSS during the run "
              f"{item['peak_rss_mib']:.0f} MiB (before it {item['rss_before_mib']:.0f} MiB, "
              f"+{item['peak_rss_mib'] - item['rss_before_mib']:.0f}; process high-water mark "
              f"{item['ru_maxrss_mib']:.0f} MiB)")
        print(f"    peak RSS of the set-up (tissue mask, store): {item['setup_peak_mib']:.0f} MiB; "
              f"by quarter of the run: "
              f"{', '.join(f'{v:.0f}' for v in item['peak_by_quarter_mib'])} MiB")
    grows = (rss[1]["peak_rss_mib"] - rss[1]["rss_before_mib"]) - (
        rss[0]["peak_rss_mib"] - rss[0]["rss_before_mib"])
    quarters = rss[1]["peak_by_quarter_mib"]
    print(f"    {large} vs {small_size}: {grows:+.0f} MiB for "
          f"{rss[1]['tiles'] / max(1, rss[0]['tiles']):.0f}x "
          f"the tiles; within the {large} run, last quarter vs first: "
          f"{quarters[3] - quarters[0]:+.0f} MiB")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        config_gpu = small.config.replace(device="cuda", batch_size=32)
        with tempfile.TemporaryDirectory() as folder:
            bare_gpu = bare_model_tiles_per_s(small.model, reader, config_gpu, gpu)
            loop_gpu, _ = end_to_end_tiles_per_s(small.model, reader, config_gpu, folder)
        print(f"(d) CUDA {torch.cuda.get_device_name()}: bare {bare_gpu:.1f} tiles/s, "
              f"infer_slide {loop_gpu:.1f} tiles/s, ratio {loop_gpu / bare_gpu:.3f}")
    else:
        print("(d) no CUDA device here: GPU tiles/s not measured")


if __name__ == "__main__":
    main()
