"""UI-thread cost of giving map layers what a run wrote since: dask levels (a new graph per
refresh, as the Inference dock did) against MapLevel views of the store's zarr arrays.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_map_refresh.py

For each map size, a store of three maps (two CAM channels and a foreground, float32, chunks of
256) is written with zarr, three layers show it in a napari viewer, and each refresh gives every
layer new data made beforehand (as the dock's worker thread does): new dask arrays from
``da.from_zarr`` (new graph names, so napari's dask cache does not answer), or fresh
:class:`~napari_wsl_al.core.infer.session.MapLevel` views. Only the ``layer.data = ...`` calls
on the UI thread are timed (``time.perf_counter``), the event loop running between refreshes.
Zoomed in on a map with several levels, the dock only calls ``layer.refresh()`` on the same
views: that is timed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

import dask.array as da
import numpy as np
import zarr

#: (label, level-0 shape, pyramid levels): CMU-1-Small-Region's maps, 80 GlaS patches', a slide's.
SIZES = (("CMU-1 (150 x 112)", (150, 112), 1), ("80 patches (441 x 441)", (441, 441), 1),
         ("slide (4096 x 4096, 4 levels)", (4096, 4096), 4))


def write_maps(folder: str, shape: tuple[int, int], levels: int) -> dict:
    """``{"cam": [levels (2, Y, X)], "fg": [levels (Y, X)]}`` zarr arrays filled with noise."""
    group = zarr.open_group(folder, mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    arrays: dict = {"cam": [], "fg": []}
    for level in range(levels):
        size = (shape[0] >> level, shape[1] >> level)
        cam = group.create_array(f"cam/{level}", shape=(2, *size), chunks=(1, 256, 256),
                                 dtype="float32", fill_value=0.0)
        cam[...] = rng.random((2, *size), dtype=np.float32)
        fg = group.create_array(f"fg/{level}", shape=size, chunks=(256, 256), dtype="float32",
                                fill_value=0.0)
        fg[...] = rng.random(size, dtype=np.float32)
        arrays["cam"].append(cam)
        arrays["fg"].append(fg)
    return arrays


def reopen(folder: str, levels: int) -> dict:
    """The store's arrays opened again (as each refresh's fresh handles do)."""
    group = zarr.open_group(folder, mode="r", zarr_format=2)
    return {name: [group[f"{name}/{level}"] for level in range(levels)] for name in ("cam", "fg")}


def dask_data(folder: str, levels: int) -> list[list]:
    arrays, token = reopen(folder, levels), uuid.uuid4().hex[:8]
    cam = [da.from_zarr(a, name=f"cam-{i}-{token}") for i, a in enumerate(arrays["cam"])]
    fg = [da.from_zarr(a, name=f"fg-{i}-{token}") for i, a in enumerate(arrays["fg"])]
    return [[level[0] for level in cam], [level[1] for level in cam], fg]


def view_data(folder: str, levels: int) -> list[list]:
    from napari_wsl_al.core.infer.session import MapLevel

    arrays = reopen(folder, levels)
    return [[MapLevel(a, 0) for a in arrays["cam"]], [MapLevel(a, 1) for a in arrays["cam"]],
            [MapLevel(a) for a in arrays["fg"]]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="refreshes per case")
    args = parser.parse_args()
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    app = napari.qt.get_qapp()

    def pump(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.005)

    def timed(layers, make, repeats: int, refresh_only: bool = False) -> str:
        spent = []
        for _ in range(repeats):
            data = None if refresh_only else make()
            started = time.perf_counter()
            for index, layer in enumerate(layers):
                if refresh_only:
                    layer.refresh()
                else:
                    layer.data = data[index]
            spent.append(time.perf_counter() - started)
            pump(0.05)
        ms = 1000 * np.asarray(spent)
        return (f"median {np.median(ms):5.1f} ms, 90th percentile {np.percentile(ms, 90):5.1f}, "
                f"longest {ms.max():5.1f}")

    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for label, shape, levels in SIZES:
        folder = tempfile.mkdtemp(prefix="wslal-refresh-") + "/maps.zarr"
        write_maps(folder, shape, levels)
        layers = [viewer.add_image(data, multiscale=True, contrast_limits=(0, 1), name=str(i),
                                   blending="additive")
                  for i, data in enumerate(view_data(folder, levels))]
        viewer.reset_view()
        pump(1.0)
        print(f"{label}, 3 layers, one refresh:")
        def dask_now(folder=folder, levels=levels):
            return dask_data(folder, levels)

        def views_now(folder=folder, levels=levels):
            return view_data(folder, levels)

        for _ in range(2):  # interleaved, twice
            print(f"  dask levels, new data      {timed(layers, dask_now, args.repeats)}")
            print(f"  MapLevel views, new data   {timed(layers, views_now, args.repeats)}")
        if levels > 1:
            viewer.scene.camera.zoom = 8.0
            pump(1.0)
            print(f"  zoomed in (level {layers[0].data_level}): "
                  f"refresh() of the same views {timed(layers, None, args.repeats, True)}")
        viewer.layers.clear()
        pump(0.5)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
