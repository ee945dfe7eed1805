"""IO benchmark: time to first pixels, random tile throughput against bare OpenSlide, writer memory.

Run ``python benchmarks/bench_io.py`` from the repository root (``--help`` for options). Every
figure is measured in the same run and reported as ratios, so that the load of a shared machine
cancels out as far as possible:

(a) first screen: ``napari_get_reader(path)(path)``, then the lowest level read whole and one
    1024x1024 window of level 0 (what napari needs for its first frame). ``--napari`` adds an
    Xvfb napari variant: ``viewer.open`` plus one ``viewer.screenshot`` (a real draw).
(b) 500 random 256x256 level-0 tiles, read five ways on the same coordinates, interleaved:
    bare ``openslide.OpenSlide.read_region`` (+ ``np.asarray``), a slice of the napari layer's
    lazy level (``LevelArray``, what the viewer reads), ``reader.read_region``,
    ``level_array(0)[...].compute()`` (dask's default threaded scheduler) and the same with
    ``scheduler="synchronous"``. A 1024x1024 variant shows how the fixed cost of a dask compute
    is amortised on viewport-sized reads.
(c) peak RSS of ``write_synthetic_slide`` for a 10k and a 40k slide, each in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_wsl_al._reader import napari_get_reader  # noqa: E402
from napari_wsl_al.core.io import open_slide  # noqa: E402

REAL_SVS = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
SAMPLE_SVS = REPO / "sample_data" / "CMU-1-Small-Region.svs"


# ---------------------------------------------------------------------- fixtures
def synthetic_slide(folder: Path, size: int) -> tuple[Path, str]:
    """A synthetic pyramidal TIFF: the project's writer when present, else a tifffile pyramid."""
    path = folder / f"synthetic_{size}.tif"
    try:
        from napari_wsl_al.core.data.synthetic import write_synthetic_slide
    except ImportError:
        write_synthetic_slide = None
    if write_synthetic_slide is not None:
        write_synthetic_slide(path, size, size, mpp=0.5, seed=0)
        return path, "write_synthetic_slide"
    import tifffile

    rng = np.random.default_rng(0)
    base = rng.integers(120, 255, (size // 8, size // 8, 3), np.uint8)
    image = np.kron(base, np.ones((8, 8, 1), np.uint8))
    with tifffile.TiffWriter(path) as tif:
        level = image
        options = dict(tile=(256, 256), photometric="rgb", compression="jpeg")
        tif.write(level, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **options)
        while max(level.shape[:2]) > 1024:
            level = level[::2, ::2]
            tif.write(level, subfiletype=1, **options)
    return path, "tifffile pyramid (write_synthetic_slide absent)"


# ---------------------------------------------------------------------- (a) first screen
def first_screen(path: Path, repeats: int) -> dict[str, float]:
    """Median seconds of each step from napari_get_reader to the first screen of pixels."""
    steps: dict[str, list[float]] = {"open+layer": [], "lowest level": [], "1024 view": []}
    total: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        layers = napari_get_reader(str(path))(str(path))
        levels = layers[0][0]
        t1 = time.perf_counter()
        np.asarray(levels[-1])
        t2 = time.perf_counter()
        height, width = levels[0].shape[:2]
        y, x = max(0, height // 2 - 512), max(0, width // 2 - 512)
        np.asarray(levels[0][y : y + 1024, x : x + 1024])
        t3 = time.perf_counter()
        steps["open+layer"].append(t1 - t0)
        steps["lowest level"].append(t2 - t1)
        steps["1024 view"].append(t3 - t2)
        total.append(t3 - t0)
        layers[0][1]["metadata"]["reader"].close()
    result = {name: statistics.median(values) for name, values in steps.items()}
    result["total"] = statistics.median(total)
    return result


def napari_first_draw(path: Path) -> float:
    """Seconds for viewer.open + one screenshot, in a subprocess under the current display."""
    code = f"""
import time, napari
viewer = napari.Viewer(show=True)
viewer.screenshot(canvas_only=True)
t0 = time.perf_counter()
viewer.open({str(path)!r}, plugin="napari-wsl-al")
viewer.screenshot(canvas_only=True)
print(time.perf_counter() - t0)
viewer.close()
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return float(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- (b) tile throughput
def tile_throughput(path: Path, n_tiles: int, size: int, seed: int = 0) -> dict[str, float]:
    """Tiles per second of five ways to read the same random level-0 windows, interleaved."""
    import openslide

    (levels, layer_kwargs, _), = napari_get_reader(str(path))(str(path))
    reader = layer_kwargs["metadata"]["reader"]
    bare = openslide.OpenSlide(str(path))
    layer_level0 = levels[0]
    lazy = reader.level_array(0)
    width, height = reader.dimensions
    rng = np.random.default_rng(seed)
    coords = [
        (int(rng.integers(0, width - size)), int(rng.integers(0, height - size)))
        for _ in range(n_tiles)
    ]
    ways = {
        "bare openslide": lambda x, y: np.asarray(bare.read_region((x, y), 0, (size, size))),
        "napari layer (LevelArray)": lambda x, y: layer_level0[y : y + size, x : x + size],
        "reader.read_region": lambda x, y: reader.read_region((x, y), 0, (size, size)),
        "dask compute (threads)": lambda x, y: lazy[y : y + size, x : x + size].compute(),
        "dask compute (sync)": lambda x, y: lazy[y : y + size, x : x + size].compute(
            scheduler="synchronous"
        ),
    }
    for read in ways.values():  # warm up: caches, imports
        read(*coords[0])
    seconds = dict.fromkeys(ways, 0.0)
    names = list(ways)
    for index, (x, y) in enumerate(coords):
        for offset in range(len(names)):  # rotate the order: no method always goes first
            name = names[(index + offset) % len(names)]
            start = time.perf_counter()
            ways[name](x, y)
            seconds[name] += time.perf_counter() - start
    check = coords[-1]
    expected = reader.read_region(check, 0, (size, size))
    window = (slice(check[1], check[1] + size), slice(check[0], check[0] + size))
    np.testing.assert_array_equal(expected, lazy[window].compute())
    np.testing.assert_array_equal(expected, layer_level0[window])
    reader.close()
    bare.close()
    return {name: n_tiles / s for name, s in seconds.items()}


def dask_overhead(n: int = 200) -> float:
    """Milliseconds per ``compute()`` of a 256x256 slice of an in-memory level (no file IO)."""
    from napari_wsl_al.core.io import ArrayReader

    lazy = ArrayReader(np.zeros((4096, 4096, 3), np.uint8), tile=256).level_array(0)
    rng = np.random.default_rng(1)
    coords = [(int(rng.integers(0, 3840)), int(rng.integers(0, 3840))) for _ in range(n)]
    lazy[:256, :256].compute()
    start = time.perf_counter()
    for x, y in coords:
        lazy[y : y + 256, x : x + 256].compute()
    return (time.perf_counter() - start) / n * 1e3


# ---------------------------------------------------------------------- (c) writer memory
def writer_peak_rss(size: int, folder: Path, timeout: int) -> dict[str, float] | str:
    """Peak RSS (MiB) and seconds of write_synthetic_slide(size x size) in a subprocess."""
    code = f"""
import json, resource, sys, time
from napari_wsl_al.core.data.synthetic import write_synthetic_slide
start = time.perf_counter()
write_synthetic_slide({str(folder / f"rss_{size}.tif")!r}, {size}, {size}, mpp=0.5, seed=0)
seconds = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_mib": peak_kib / 1024, "seconds": seconds}}))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed: {last}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (folder / f"rss_{size}.tif").unlink(missing_ok=True)
    return result


def baseline_rss() -> float:
    """Peak RSS (MiB) of a subprocess that only imports the writer's module."""
    code = (
        "import resource, napari_wsl_al.core.data.synthetic;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return float(out.stdout.strip()) if out.returncode == 0 else float("nan")


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=500, help="random tiles in (b)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of (a)")
    parser.add_argument("--synthetic-size", type=int, default=8192, help="side of the slide in (a)/(b)")
    parser.add_argument("--napari", action="store_true", help="also time napari open + draw")
    parser.add_argument("--rss-sizes", default="10000,40000", help="writer sizes for (c), '' to skip")
    parser.add_argument("--rss-timeout", type=int, default=1800, help="seconds per writer run")
    args = parser.parse_args(argv)

    svs = REAL_SVS if REAL_SVS.exists() else SAMPLE_SVS
    with tempfile.TemporaryDirectory(prefix="bench_io_") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        synthetic, how = synthetic_slide(folder, args.synthetic_size)
        print(f"synthetic slide: {args.synthetic_size}^2 via {how} in {time.perf_counter() - start:.1f} s")
        slides = {"CMU-1-Small-Region.svs": svs, f"synthetic {args.synthetic_size}^2": synthetic}
        for name, path in slides.items():
            with open_slide(path) as reader:
                print(f"  {name}: {reader!r} [{reader.format}], chunks {reader.tile_size(0)}")

        print("\n(a) napari_get_reader(path)(path) -> first screen (median of %d), seconds" % args.repeats)
        print(f"{'slide':28s} {'open+layer':>11s} {'lowest lvl':>11s} {'1024 view':>10s} {'total':>8s}")
        for name, path in slides.items():
            r = first_screen(path, args.repeats)
            print(f"{name:28s} {r['open+layer']:11.3f} {r['lowest level']:11.3f} "
                  f"{r['1024 view']:10.3f} {r['total']:8.3f}")  # fmt: skip
        if args.napari:
            for name, path in slides.items():
                try:
                    print(f"  napari viewer.open + first draw, {name}: {napari_first_draw(path):.3f} s")
                except (subprocess.SubprocessError, ValueError) as error:
                    print(f"  napari variant failed for {name}: {error}")

        for size, count in ((256, args.tiles), (1024, max(20, args.tiles // 10))):
            print(f"\n(b) {count} random {size}x{size} level-0 reads, interleaved; tiles/s and ratio to bare")
            for name, path in slides.items():
                rates = tile_throughput(path, count, size)
                bare = rates["bare openslide"]
                print(f"  {name}")
                for way, rate in rates.items():
                    print(f"    {way:26s} {rate:9.1f} tiles/s   ratio {rate / bare:5.2f}")
        print(f"\n  dask fixed cost: {dask_overhead():.2f} ms per compute() of a 256x256 slice "
              "of an in-memory level (no file IO)")  # fmt: skip

        sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
        if sizes:
            print("\n(c) write_synthetic_slide peak RSS (subprocess ru_maxrss)")
            try:
                import napari_wsl_al.core.data.synthetic as synthetic_module

                present = hasattr(synthetic_module, "write_synthetic_slide")
            except ImportError:
                present = False
            if not present:
                print("  write_synthetic_slide is not there yet: skipped")
            else:
                print(f"  import only: {baseline_rss():8.1f} MiB")
                for size in sizes:
                    r = writer_peak_rss(size, folder, args.rss_timeout)
                    if isinstance(r, str):
                        print(f"  {size}x{size}: {r}")
                    else:
                        print(f"  {size}x{size}: {r['peak_mib']:8.1f} MiB peak, {r['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
