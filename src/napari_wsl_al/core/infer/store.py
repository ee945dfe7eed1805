"""OME-Zarr map store of one slide: blended maps as multiscale arrays, written tile by tile, resumable.

Layout of ``maps/<slide>.zarr`` (zarr format 2, OME-NGFF 0.4 ``multiscales`` on every map)::

    .zattrs                 {"wslal": {spec, map list, geometry, pyramid_stale}}
    cam/0 cam/1 ...         (C, Y, X) per-class CAMs, pyramid levels 0, 1, ...
    fg/  bg/                (Y, X) foreground / background probability
    probs/                  (K, Y, X) class probabilities
    uncertainty/entropy/ uncertainty/margin/ uncertainty/ovr_entropy/ (K, Y, X)
    uncertainty/ovr_entropy_max/ uncertainty/mc_variance/
    _tiles                  (rows, cols, channels, n, n) raw tile outputs, chunks of up to
                            TILE_CHUNK_BYTES along a tile row
    _done                   (rows, cols) uint8: 1 where a tile is stored *and* blended

and beside it ``maps/<slide>.zarr.lock``, the lock file of the run writing it.

Blending. Each tile's outputs (at map resolution, ``n = tile_size / output_stride`` pixels)
are kept in ``_tiles``, in the store's dtype. A map pixel is the weighted mean of the finished
tiles covering it, as stored (float16 values in a float16 store, whether a tile was just
computed or read back, so that the maps do not depend on what was still in memory),
weighted by a cosine-tapered window (flat inside, ``sin^2`` ramps over the overlap; the ramps
of two neighbours sum to one), so no seams show. The tiles stored since the last blend are
written to ``_tiles`` together (a few chunks along their rows rather than a file per tile),
then the map pixels they cover are rewritten from them and the neighbours already finished.
Every write is idempotent, and ``_done`` is written last: a run killed at any moment resumes by
recomputing only the tiles not marked, and zarr replaces each chunk and metadata file
atomically, so what was finished stays intact.

Cost. Blends and pyramid updates cost about the same whatever number of tiles they cover
(zarr rewrites whole chunks), so they are spaced in time: at least :data:`BLEND_INTERVAL_S`
and :data:`PYRAMID_INTERVAL_S` apart, and at least :data:`UPDATE_SPACING` times as long as
the previous one took, which keeps the writer thread mostly idle (and off the GIL the model's
thread needs) on a busy machine.

Pyramid. The lower levels are rebuilt from level 0 every :data:`PYRAMID_INTERVAL_S` and on
:meth:`MapStore.flush`. Before level-0 pixels change, the box holding them is recorded as
``pyramid_stale`` in the attributes; it is cleared once the levels below are rebuilt over it.
A run killed at any moment thus leaves the exact region whose lower levels may be stale, and the
next :meth:`MapStore.prepare` rebuilds it first (a store without the record, written before it
existed, has its whole pyramid rebuilt). A store is *complete* when every tile is done and no
region is stale: a run killed after its last tile, before its final flush brought the pyramid
up to date, leaves a store that is not, and the next run repairs it without the model.

One writer. A run holds ``<store>.lock`` (a :mod:`filelock` lock, released by the system even
when the process is killed) from before :meth:`MapStore.prepare` to after its last flush; a
second run on the same store waits up to :data:`LOCK_TIMEOUT_S`, then gives up with a
:class:`~napari_wsl_al.core.infer.errors.MapStoreError`. Readers need no lock.

Memory is bounded by tiles: a blend rewrites strips of the map one tile high (neighbouring
strips together up to :data:`BLEND_BOX_PIXELS`), a small cache keeps the tiles of three tile
rows and those waiting for their blend, and the pyramid is rebuilt in blocks of
:data:`PYRAMID_BLOCK` map pixels.

Coordinates. Map pixel ``(j, i)`` covers level-0 pixels ``[i * f, (i + 1) * f)`` with
``f = output_stride * downsample``. ``scale`` is ``f`` times the slide's microns per pixel
(level-0 pixels when unknown) and ``translate`` is ``(f - 1) / 2`` times the same unit, so that
pixel centres line up with the slide layer in napari (whose level-0 pixel centres sit at
``index * mpp``).
"""

from __future__ import annotations

import errno
import shutil
import time
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import filelock
import numpy as np

from ..progress import Progress
from .errors import DiskFullError, MapStoreError

#: Version of the map store layout.
STORE_FORMAT_VERSION = 1

#: Side of the chunks of the map arrays.
MAP_CHUNK = 256

#: Pyramid levels are added until the smallest fits in this many pixels per side.
SMALLEST_MAP_LEVEL = 256

#: Least seconds between blends of the newly stored tiles into the maps while a run goes on.
BLEND_INTERVAL_S = 0.5

#: Least seconds between updates of the lower pyramid levels while a run goes on.
PYRAMID_INTERVAL_S = 2.0

#: A blend (a pyramid update) waits at least this many times as long as the previous one took.
UPDATE_SPACING = 3.0

#: Largest chunk of ``_tiles`` in bytes: neighbouring tiles of a row share a chunk up to it.
TILE_CHUNK_BYTES = 1 << 20

#: Level-0 map pixels up to which the strips of neighbouring tile rows are blended as one box.
BLEND_BOX_PIXELS = 1 << 18

#: Side, in level-0 map pixels, of the blocks in which the lower pyramid levels are rebuilt
#: (rounded up to a multiple of ``2 ** (levels - 1)``): memory stays bounded by blocks.
PYRAMID_BLOCK = 1024

#: Seconds a run waits for another run writing the same map store before giving up.
LOCK_TIMEOUT_S = 10.0

#: Seconds between two tries to take a store's lock (and two progress records) while waiting.
LOCK_POLL_S = 0.5

_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass(frozen=True)
class MapSpec:
    """One output map.

    Attributes
    ----------
    name : str
        Group path in the store (``"cam"``, ``"uncertainty/entropy"``).
    channels : tuple of str or None
        Channel names of a multi-channel map ``(C, Y, X)``; None for a ``(Y, X)`` map.
    kind : str
        What the values are (``cam``, ``fg``, ``bg``, ``probs``, ``uncertainty``): the GUI
        picks colormaps and contrast from it.
    """

    name: str
    channels: tuple[str, ...] | None
    kind: str


@dataclass(frozen=True)
class MapHandle:
    """A map on disk, ready for a napari image layer.

    Attributes
    ----------
    name : str
        Map name (group path).
    kind : str
        See :class:`MapSpec`.
    channels : tuple of str or None
        Channel names (axis 0 of every level) or None.
    levels : list of dask.array.Array
        Pyramid levels, largest first.
    scale : (float, float)
        ``(y, x)`` size of a level-0 map pixel in microns (or slide pixels without mpp).
    translate : (float, float)
        ``(y, x)`` offset of the first pixel centre, same unit.
    unit : str or None
        ``"micrometer"``, or None when the slide's resolution is unknown.
    arrays : tuple of zarr.Array
        The zarr arrays behind ``levels`` (same order; empty when not from a store): read
        directly, they give what was written since without a new dask graph.
    """

    name: str
    kind: str
    channels: tuple[str, ...] | None
    levels: list[da.Array]
    scale: tuple[float, float]
    translate: tuple[float, float]
    unit: str | None
    arrays: tuple = ()


def blend_window(n: int, ramp: int) -> np.ndarray:
    """1-D cosine-tapered window: ``sin^2`` ramps of ``ramp`` pixels at both ends, 1 inside.

    Two neighbours overlapping by ``ramp`` pixels have weights summing to exactly one there.
    """
    window = np.ones(n, np.float32)
    ramp = min(int(ramp), n // 2)
    if ramp > 0:
        rising = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp) ** 2
        window[:ramp] = rising
        window[n - ramp :] = rising[::-1]
    return window


def _pyramid_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > SMALLEST_MAP_LEVEL and min(shapes[-1]) > 1:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _downsample_2x(block: np.ndarray) -> np.ndarray:
    """2 x 2 mean over the last two axes, replicating the edge of odd sizes."""
    h, w = block.shape[-2:]
    if h % 2 or w % 2:
        pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
        block = np.pad(block, pad, mode="edge")
        h, w = block.shape[-2:]
    shaped = block.reshape(block.shape[:-2] + (h // 2, 2, w // 2, 2))
    return shaped.mean(axis=(-3, -1), dtype=np.float32)


def lock_path(store_path: str | Path) -> Path:
    """``<store>.lock`` beside a map store: the lock file of the run writing it."""
    path = Path(store_path)
    return path.with_name(path.name + ".lock")


def _is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


class MapStore:
    """The maps of one slide in an OME-Zarr folder, written incrementally by tiled inference.

    Parameters
    ----------
    path : str or Path
        The ``.zarr`` folder (``Project.maps_path(slide)``); created on :meth:`prepare`.
    lock_timeout : float, optional
        Seconds to wait for another run writing this store (:data:`LOCK_TIMEOUT_S` when None).

    Notes
    -----
    One writer at a time: :func:`~napari_wsl_al.core.infer.engine.infer_slide` runs its job
    through :meth:`writing`, which holds the store's lock file (:func:`lock_path`) across
    :meth:`prepare`, :meth:`write_tiles` (from its writer thread) and the last :meth:`flush`,
    and releases it however the job ends (done, cancelled, failed). Readers (napari layers)
    may read :meth:`handles` meanwhile, without the lock: files are replaced atomically.
    """

    def __init__(self, path: str | Path, lock_timeout: float | None = None) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._group = None
        self._info: dict[str, Any] | None = None
        self._maps: list[MapSpec] = []
        self._arrays: dict[str, list[Any]] = {}
        self._tiles = None
        self._done_array = None
        self.done: np.ndarray | None = None
        self._tile_cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._unwritten: dict[tuple[int, int], np.ndarray] = {}
        self._dirty: list[int] | None = None
        self._last_pyramid = self._last_blend = 0.0
        self._blend_wait = self._pyramid_wait = 0.0

    # ------------------------------------------------------------------ opening
    def exists(self) -> bool:
        """Whether a map store was written here."""
        return (self.path / ".zattrs").is_file() or (self.path / "zarr.json").is_file()

    def _open_group(self, mode: str):
        import zarr

        return zarr.open_group(str(self.path), mode=mode, zarr_format=2)

    def read_info(self) -> dict[str, Any] | None:
        """The store's ``wslal`` attributes, or None when there is no store."""
        if not self.exists():
            return None
        try:
            group = self._open_group("r")
            return dict(group.attrs.asdict().get("wslal", {})) or None
        except (OSError, ValueError, KeyError) as error:
            raise MapStoreError(f"cannot read the map store: {error}", path=self.path) from error

    @property
    def lock_path(self) -> Path:
        """The lock file of the run writing this store (:func:`lock_path`)."""
        return lock_path(self.path)

    def writing(self, job, slide: str):
        """Run ``job``, a generator writing this store, holding the store's lock.

        Waits up to ``lock_timeout`` seconds for another run (another process, or another
        job of this one) writing the same store, yielding a :class:`Progress` record every
        :data:`LOCK_POLL_S` meanwhile (so a GUI shows it and can cancel). The lock is released
        when ``job`` returns, raises or is closed.

        Parameters
        ----------
        job : generator
            Yields :class:`Progress` records, returns a result.
        slide : str
            Name of the slide, for the messages.

        Returns
        -------
        object
            What ``job`` returns.

        Raises
        ------
        MapStoreError
            Another run kept the store for the whole wait, or the lock file cannot be made.
        """
        lock = yield from self._take_lock(slide)
        try:
            return (yield from job)
        finally:
            lock.release()

    def _take_lock(self, slide: str):
        timeout = LOCK_TIMEOUT_S if self.lock_timeout is None else float(self.lock_timeout)
        path = self.lock_path
        lock = filelock.FileLock(str(path), thread_local=False)
        started = time.monotonic()
        while True:
            waited = time.monotonic() - started
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                lock.acquire(timeout=max(0.0, min(LOCK_POLL_S, timeout - waited)))
                return lock
            except filelock.Timeout:
                waited = time.monotonic() - started
                if waited >= timeout:
                    raise MapStoreError(
                        f"another run is writing the maps of slide {slide!r} (waited "
                        f"{timeout:g} s for it to finish)", path=self.path,
                        hint="let that run finish, then run inference again (the maps it "
                        "finished are reused), or stop it",
                    ) from None
            except OSError as error:
                raise MapStoreError(f"cannot make the lock file {path.name}: {error}",
                                    path=self.path,
                                    hint="check that the folder exists and can be written") \
                    from error
            yield Progress(0, None, f"waiting for another run writing the maps of slide "
                           f"{slide!r} ({waited:.0f} s of {timeout:g} s)",
                           {"tiles_per_s": 0.0, "batch": 0, "computed": 0, "waited_s": waited})

    def is_complete(self, spec: dict[str, Any], tiles: np.ndarray) -> bool:
        """Whether the store holds maps made with ``spec`` with every tile of ``tiles`` done.

        And with the whole pyramid up to date: a store killed after its last tile, before
        its final flush, is not complete.
        """
        info = self.read_info()
        if info is None or info.get("spec") != spec:
            return False
        if info.get("pyramid_stale", "unknown") is not None:
            return False
        done = self.done_bitmap()
        tiles = np.asarray(tiles).reshape(-1, 2)
        return bool(done[tiles[:, 0], tiles[:, 1]].all())

    def prepare(
        self,
        spec: dict[str, Any],
        maps: list[MapSpec],
        tile_channels: dict[str, tuple[int, int]],
        grid_shape: tuple[int, int],
        tile_map_size: int,
        step_map: int,
        map_shape: tuple[int, int],
        scale: tuple[float, float],
        translate: tuple[float, float],
        unit: str | None,
        dtype: str = "float32",
    ) -> np.ndarray:
        """Open the store for writing, creating it (or resetting it when ``spec`` changed).

        The caller holds the store's lock (:meth:`writing`).

        Parameters
        ----------
        spec : dict
            Everything that must match for tiles of an earlier run to be reused (geometry,
            model, maps, options). A store with another spec is deleted and recreated, with a
            warning: maps are derived data.
        maps : list of MapSpec
            The maps to write.
        tile_channels : dict of str to (int, int)
            Channel ranges ``[start, stop)`` of the raw tile outputs (``cam``, ``fg``,
            ``probs``, ``mc_variance``) inside ``_tiles``.
        grid_shape : (int, int)
            ``(rows, cols)`` of the tile grid.
        tile_map_size, step_map : int
            Tile side and tile step in map pixels.
        map_shape : (int, int)
            ``(Y, X)`` of the level-0 maps.
        scale, translate : (float, float)
            Level-0 map pixel size and first pixel centre, ``(y, x)``.
        unit : str or None
            Unit of ``scale`` and ``translate``.
        dtype : str
            ``"float32"`` or ``"float16"``.

        Returns
        -------
        ndarray
            The ``(rows, cols)`` bool bitmap of tiles already done.

        Notes
        -----
        Lower pyramid levels that a killed run left stale (``pyramid_stale``) are rebuilt here,
        before anything else is written.
        """
        info = self.read_info()
        if info is not None and info.get("spec") != spec:
            warnings.warn(
                f"{self.path}: the maps were computed with other settings; recomputing them",
                stacklevel=3,
            )
            self._guard(lambda: shutil.rmtree(self.path))
            info = None
        channel_total = max(stop for _, stop in tile_channels.values())
        cols = grid_shape[1]
        n = int(tile_map_size)
        if info is None:
            self._guard(lambda: self._create(spec, maps, tile_channels, grid_shape, n, step_map,
                                             map_shape, scale, translate, unit, dtype,
                                             channel_total))
        self._group = self._open_group("r+")
        self._info = dict(self._group.attrs["wslal"])
        self._maps = [MapSpec(m["name"], None if m["channels"] is None else tuple(m["channels"]),
                              m["kind"]) for m in self._info["maps"]]
        self._arrays = {
            m.name: [self._group[f"{m.name}/{level}"]
                     for level in range(len(self._info["level_shapes"]))]
            for m in self._maps
        }
        self._tiles = self._group["_tiles"]
        self._done_array = self._group["_done"]
        self.done = np.asarray(self._done_array[...]).astype(bool)
        self._tile_cache.clear()
        self._unwritten.clear()
        # Three tile rows: the row being blended and its neighbours above and below.
        self._cache_size = 3 * cols + 8
        self._window = np.outer(blend_window(n, n - step_map), blend_window(n, n - step_map))
        self._stored = self.done.copy()
        self._pending: list[tuple[int, int]] = []
        stale = self._info.get("pyramid_stale", "unknown")
        if stale == "unknown":  # written before the record existed: rebuild it all
            stale = [0, 0, *self._info["map_shape"]]
        self._dirty = None if stale is None else [int(v) for v in stale]
        self._guard(self._update_pyramid)
        self._last_pyramid = self._last_blend = time.monotonic()
        self._blend_wait, self._pyramid_wait = BLEND_INTERVAL_S, PYRAMID_INTERVAL_S
        return self.done.copy()

    def _create(self, spec, maps, tile_channels, grid_shape, n, step_map, map_shape, scale,
                translate, unit, dtype, channel_total) -> None:
        import zarr

        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Build in a temporary folder, then rename: a half-created store never looks valid.
        building = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            group = zarr.open_group(str(building), mode="w", zarr_format=2)
            shapes = _pyramid_shapes(map_shape)
            for m in maps:
                sub = group.require_group(m.name)
                lead = () if m.channels is None else (len(m.channels),)
                for level, shape in enumerate(shapes):
                    sub.create_array(
                        str(level), shape=lead + shape, dtype=dtype, fill_value=0,
                        chunks=(1,) * len(lead) + (MAP_CHUNK, MAP_CHUNK),
                    )
                sub.attrs.update(self._ngff(m, shapes, scale, translate, unit, map_shape))
            rows, cols = grid_shape
            tile_bytes = channel_total * n * n * np.dtype(dtype).itemsize
            along_row = max(1, min(cols, TILE_CHUNK_BYTES // tile_bytes))
            group.create_array("_tiles", shape=(rows, cols, channel_total, n, n), dtype=dtype,
                               chunks=(1, along_row, channel_total, n, n), fill_value=0)
            group.create_array("_done", shape=(rows, cols), dtype="uint8", fill_value=0,
                               chunks=(rows, cols))
            group.attrs["wslal"] = {
                "format_version": STORE_FORMAT_VERSION,
                "spec": spec,
                "maps": [{"name": m.name, "channels": None if m.channels is None
                          else list(m.channels), "kind": m.kind} for m in maps],
                "tile_channels": {k: list(v) for k, v in tile_channels.items()},
                "grid_shape": list(grid_shape),
                "tile_map_size": n,
                "step_map": int(step_map),
                "map_shape": list(map_shape),
                "level_shapes": [list(s) for s in shapes],
                "scale": list(scale),
                "translate": list(translate),
                "unit": unit,
                "dtype": dtype,
                "tiles_done": 0,
                "pyramid_stale": None,
            }
            building.rename(self.path)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise

    @staticmethod
    def _ngff(m: MapSpec, shapes, scale, translate, unit, map_shape) -> dict[str, Any]:
        space = {"type": "space"} if unit is None else {"type": "space", "unit": unit}
        axes = [{"name": "y", **space}, {"name": "x", **space}]
        if m.channels is not None:
            axes.insert(0, {"name": "c", "type": "channel"})
        datasets = []
        for level, shape in enumerate(shapes):
            fy, fx = map_shape[0] / shape[0], map_shape[1] / shape[1]
            level_scale = [scale[0] * fy, scale[1] * fx]
            level_translate = [translate[0] + scale[0] * (fy - 1) / 2,
                               translate[1] + scale[1] * (fx - 1) / 2]
            if m.channels is not None:
                level_scale, level_translate = [1.0] + level_scale, [0.0] + level_translate
            datasets.append({
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": level_scale},
                    {"type": "translation", "translation": level_translate},
                ],
            })
        return {
            "multiscales": [{"version": "0.4", "name": m.name, "axes": axes,
                             "datasets": datasets, "type": "mean"}],
            "wslal": {"kind": m.kind,
                      "channels": None if m.channels is None else list(m.channels)},
        }

    # ------------------------------------------------------------------ writing
    def _guard(self, action):
        """Run a write, turning a full disk into :class:`DiskFullError`."""
        try:
            return action()
        except OSError as error:
            if _is_disk_full(error):
                raise DiskFullError(
                    "the disk is full; maps finished so far are kept and the run can resume",
                    path=self.path, hint="free some space, then run inference again",
                ) from error
            raise MapStoreError(f"cannot write maps: {error}", path=self.path) from error
        except Exception as error:  # zarr may wrap OSErrors raised by its store
            if _is_disk_full(error):
                raise DiskFullError(
                    "the disk is full; maps finished so far are kept and the run can resume",
                    path=self.path, hint="free some space, then run inference again",
                ) from error
            raise

    def write_tiles(self, tiles: np.ndarray, outputs: np.ndarray) -> None:
        """Store a batch of tile outputs; blend the maps they cover and mark them done.

        Blending is throttled (every :data:`BLEND_INTERVAL_S`, and on :meth:`flush`): tiles
        stored but not yet blended are not marked done, so a kill recomputes them.

        Parameters
        ----------
        tiles : ndarray
            ``(B, 2)`` ``(row, col)`` of the tiles.
        outputs : ndarray
            ``(B, channels, n, n)`` raw outputs at map resolution.
        """
        self._guard(lambda: self._write_tiles(np.asarray(tiles), np.asarray(outputs)))

    def _write_tiles(self, tiles: np.ndarray, outputs: np.ndarray) -> None:
        dtype = self._tiles.dtype
        for (r, c), data in zip(tiles, outputs):
            key = (int(r), int(c))
            self._pending.append(key)
            self._unwritten[key] = data
            # Blended as stored: a tile read back from ``_tiles`` gives the same maps.
            self._remember(key, data.astype(dtype, copy=False).astype(np.float32, copy=False))
        self._stored[tiles[:, 0], tiles[:, 1]] = True
        if time.monotonic() - self._last_blend > self._blend_wait:
            self._blend_pending()

    def _store_tiles(self) -> None:
        """Write the raw outputs of the tiles stored since the last blend to ``_tiles``: one
        call per run of neighbours in a row, so that zarr rewrites each chunk once."""
        if not self._unwritten:
            return
        dtype = self._tiles.dtype
        keys = sorted(self._unwritten)
        start = 0
        for stop in range(1, len(keys) + 1):
            if (stop == len(keys) or keys[stop][0] != keys[start][0]
                    or keys[stop][1] != keys[stop - 1][1] + 1):
                r, c0, c1 = keys[start][0], keys[start][1], keys[stop - 1][1] + 1
                self._tiles[r, c0:c1] = np.stack(
                    [self._unwritten[key] for key in keys[start:stop]]).astype(dtype, copy=False)
                start = stop
        self._unwritten.clear()

    def _blend_pending(self) -> None:
        """Blend the maps over the tiles stored since the last time, then mark them done."""
        started = time.monotonic()
        if not self._pending:
            self._last_blend = started
            return
        self._store_tiles()
        n, step = self._info["tile_map_size"], self._info["step_map"]
        pending = np.array(self._pending, dtype=np.int64)
        # One strip per tile row, neighbouring strips blended as one box while it stays under
        # BLEND_BOX_PIXELS (zarr then rewrites each chunk once): memory stays bounded.
        boxes: list[tuple[int, int, int, int]] = []
        for r in np.unique(pending[:, 0]):
            cols = pending[pending[:, 0] == r, 1]
            strip = (int(r) * step, int(cols.min()) * step,
                     int(r) * step + n, int(cols.max()) * step + n)
            if boxes and boxes[-1][2] >= strip[0]:
                last = boxes[-1]
                merged = (last[0], min(last[1], strip[1]), strip[2], max(last[3], strip[3]))
                if (merged[2] - merged[0]) * (merged[3] - merged[1]) <= BLEND_BOX_PIXELS:
                    boxes[-1] = merged
                    continue
            boxes.append(strip)
        # Recorded before level 0 changes: a kill leaves the region to rebuild below it.
        self._mark_dirty((min(b[0] for b in boxes), min(b[1] for b in boxes),
                          max(b[2] for b in boxes), max(b[3] for b in boxes)))
        for box in boxes:
            self._blend_box(box, self._stored)
        # The done bitmap last: a tile is marked only once its maps are written.
        self._done_array[...] = self._stored.astype(np.uint8)
        self.done = self._stored.copy()
        self._pending.clear()
        self._last_blend = time.monotonic()
        self._blend_wait = max(BLEND_INTERVAL_S, UPDATE_SPACING * (self._last_blend - started))
        if self._last_blend - self._last_pyramid > self._pyramid_wait:
            self._update_pyramid()

    def _remember(self, key: tuple[int, int], data: np.ndarray) -> None:
        self._tile_cache[key] = data
        self._tile_cache.move_to_end(key)
        # The tiles waiting to be blended are the newest: never dropped before their blend.
        while len(self._tile_cache) > self._cache_size + len(self._pending):
            self._tile_cache.popitem(last=False)

    def _tile(self, key: tuple[int, int]) -> np.ndarray:
        data = self._tile_cache.get(key)
        if data is None:
            # The whole chunk that holds the tile: its finished neighbours come with it.
            r, c = key
            along = self._tiles.chunks[1]
            c0 = c // along * along
            c1 = min(self._tiles.shape[1], c0 + along)
            chunk = np.asarray(self._tiles[r, c0:c1], dtype=np.float32)
            for col in range(c0, c1):
                if (col == c or self._stored[r, col]) and (r, col) not in self._tile_cache:
                    self._remember((r, col), chunk[col - c0])
            data = chunk[c - c0]
            self._remember(key, data)
        return data

    def _blend_box(self, box: tuple[int, int, int, int], done: np.ndarray) -> None:
        """Recompute every map over a box of level-0 map pixels from the finished tiles.

        The caller records the box as stale (:meth:`_mark_dirty`) first.
        """
        map_h, map_w = self._info["map_shape"]
        n, step = self._info["tile_map_size"], self._info["step_map"]
        y0, x0 = max(0, box[0]), max(0, box[1])
        y1, x1 = min(map_h, box[2]), min(map_w, box[3])
        if y1 <= y0 or x1 <= x0:
            return
        rows, cols = done.shape
        r0, r1 = max(0, (y0 - n) // step + 1), min(rows, -(-y1 // step))
        c0, c1 = max(0, (x0 - n) // step + 1), min(cols, -(-x1 // step))
        channels = self._tiles.shape[2]
        total = np.zeros((channels, y1 - y0, x1 - x0), np.float32)
        weight = np.zeros((y1 - y0, x1 - x0), np.float32)
        for r in range(r0, r1):
            for c in range(c0, c1):
                if not done[r, c]:
                    continue
                ty, tx = r * step, c * step
                sy0, sx0 = max(y0, ty), max(x0, tx)
                sy1, sx1 = min(y1, ty + n), min(x1, tx + n)
                if sy1 <= sy0 or sx1 <= sx0:
                    continue
                w = self._window[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
                data = self._tile((r, c))[:, sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
                total[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += data * w
                weight[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += w
        covered = weight > 0
        blended = np.where(covered, total / np.where(covered, weight, 1.0), 0.0)
        values = derived_maps(blended, self._info["tile_channels"], [m.name for m in self._maps])
        for m in self._maps:
            value = np.where(covered, values[m.name], 0.0)
            target = self._arrays[m.name][0]
            value = value.astype(target.dtype, copy=False)
            if m.channels is None:
                target[y0:y1, x0:x1] = value
            else:
                target[:, y0:y1, x0:x1] = value

    def _record_stale(self, box: list[int] | None) -> None:
        """Write the region whose lower pyramid levels may be stale (None: none) to the store."""
        info = dict(self._info)
        info["pyramid_stale"] = box
        self._group.attrs["wslal"] = info
        self._info = info

    def _mark_dirty(self, box: tuple[int, int, int, int]) -> None:
        """Add a box of level-0 map pixels about to change to the stale region, on disk."""
        map_h, map_w = self._info["map_shape"]
        box = [max(0, int(box[0])), max(0, int(box[1])),
               min(map_h, int(box[2])), min(map_w, int(box[3]))]
        if self._dirty is not None:
            box = [min(self._dirty[0], box[0]), min(self._dirty[1], box[1]),
                   max(self._dirty[2], box[2]), max(self._dirty[3], box[3])]
        if box != self._dirty:
            self._dirty = box
            self._record_stale(box)

    def _update_pyramid(self) -> None:
        """Rebuild the lower pyramid levels over the stale region, then clear it on disk."""
        started = time.monotonic()
        self._last_pyramid = started
        if self._dirty is None:
            return
        shapes = self._info["level_shapes"]
        if len(shapes) > 1:
            # Blocks aligned to 2 ** (levels - 1): each level's block is the 2 x 2 mean of the
            # block above, computed in memory; the edge of odd sizes is replicated.
            align = 2 ** (len(shapes) - 1)
            side = align * -(-PYRAMID_BLOCK // align)
            map_h, map_w = shapes[0]
            y0, x0, y1, x1 = self._dirty
            y0, x0 = y0 // align * align, x0 // align * align
            y1, x1 = min(map_h, -(-y1 // align) * align), min(map_w, -(-x1 // align) * align)
            for by in range(y0, y1, side):
                for bx in range(x0, x1, side):
                    self._rebuild_block(by, bx, min(by + side, y1), min(bx + side, x1))
        self._dirty = None
        self._record_stale(None)
        self._last_pyramid = time.monotonic()
        self._pyramid_wait = max(PYRAMID_INTERVAL_S,
                                 UPDATE_SPACING * (self._last_pyramid - started))

    def _rebuild_block(self, y0: int, x0: int, y1: int, x1: int) -> None:
        """Every lower level of every map under one aligned block of level-0 map pixels."""
        for m in self._maps:
            arrays = self._arrays[m.name]
            lead = () if m.channels is None else (slice(None),)
            block = np.asarray(arrays[0][lead + (slice(y0, y1), slice(x0, x1))], np.float32)
            for level in range(1, len(arrays)):
                block = _downsample_2x(block)
                ly0, lx0 = y0 >> level, x0 >> level
                below = arrays[level]
                stored = block.astype(below.dtype, copy=False)
                below[lead + (slice(ly0, ly0 + stored.shape[-2]),
                              slice(lx0, lx0 + stored.shape[-1]))] = stored
                block = stored.astype(np.float32, copy=False)  # what a read would give back

    def flush(self, tiles_done: int | None = None) -> None:
        """Blend the tiles stored so far, bring the pyramid up to date and record both.

        After the final flush of a run that did every tile, the store is complete
        (:meth:`is_complete`).
        """

        def _flush():
            if self._info is None:
                return
            self._blend_pending()
            self._update_pyramid()
            if self._group is not None:
                info = dict(self._group.attrs["wslal"])
                info["tiles_done"] = int(self.done.sum()) if tiles_done is None else tiles_done
                self._group.attrs["wslal"] = info
                self._info = info

        self._guard(_flush)

    # ------------------------------------------------------------------ reading
    def handles(self) -> dict[str, MapHandle]:
        """Every map as lazy dask levels with its micron scale and translate.

        Each call makes new dask arrays (new graph names), so a layer given them re-reads
        what was written since.
        """
        import zarr

        info = self._info or self.read_info()
        if info is None:
            raise MapStoreError("no maps were written here", path=self.path,
                                hint="run inference first")
        group = zarr.open_group(str(self.path), mode="r", zarr_format=2)
        token = uuid.uuid4().hex[:8]
        out = {}
        for entry in info["maps"]:
            name = entry["name"]
            arrays = tuple(group[f"{name}/{level}"] for level in range(len(info["level_shapes"])))
            levels = [da.from_zarr(array, name=f"wslal-map-{name}-{level}-{token}")
                      for level, array in enumerate(arrays)]
            out[name] = MapHandle(
                name=name, kind=entry["kind"],
                channels=None if entry["channels"] is None else tuple(entry["channels"]),
                levels=levels, scale=tuple(info["scale"]), translate=tuple(info["translate"]),
                unit=info.get("unit"), arrays=arrays,
            )
        return out

    def done_bitmap(self) -> np.ndarray:
        """``(rows, cols)`` bool: tiles finished so far (read from disk)."""
        import zarr

        group = zarr.open_group(str(self.path), mode="r", zarr_format=2)
        return np.asarray(group["_done"][...]).astype(bool)


def derived_maps(blended: np.ndarray, tile_channels: dict[str, Any],
                 names: list[str]) -> dict[str, np.ndarray]:
    """The output maps from blended raw channels (``cam``, ``fg``, ``probs``, ``mc_variance``).

    ``seg`` is the same class probabilities as ``probs``, named for joint models whose
    probabilities come from the segmentation head.

    Uncertainty comes from the blended class probabilities ``p`` (``K`` classes):
    predictive entropy ``-sum p log p``; margin ``p_best - p_second`` (best versus second
    best: small is uncertain); one-vs-rest entropy per class
    ``H_c = -p_c log p_c - (1 - p_c) log(1 - p_c)`` and its maximum over classes. With a
    ``tissue`` channel (the tissue gate: the tissue fraction ``t`` under each map pixel), the
    uncertainty is that of the tissue: entropies and MC-dropout variance are multiplied by
    ``t`` and the margin is ``1 - t (1 - margin)``, so glass reads as certain.
    """

    def part(key: str) -> np.ndarray:
        a, b = tile_channels[key]
        return blended[a:b]

    out: dict[str, np.ndarray] = {}
    if "cam" in names:
        out["cam"] = part("cam")
    if "fg" in tile_channels:
        fg = np.clip(part("fg")[0], 0.0, 1.0)
        out["fg"], out["bg"] = fg, 1.0 - fg
    if "probs" in tile_channels:
        p = np.clip(part("probs"), 0.0, 1.0)
        out["probs"] = p
        out["seg"] = p
        logp = np.log(np.clip(p, 1e-12, 1.0))
        out["uncertainty/entropy"] = -(p * logp).sum(axis=0)
        if p.shape[0] > 1:
            top = np.sort(p, axis=0)
            out["uncertainty/margin"] = top[-1] - top[-2]
        else:
            out["uncertainty/margin"] = np.abs(2 * p[0] - 1)
        q = 1.0 - p
        ovr = -(p * logp) - q * np.log(np.clip(q, 1e-12, 1.0))
        out["uncertainty/ovr_entropy"] = ovr
        out["uncertainty/ovr_entropy_max"] = ovr.max(axis=0)
    if "mc_variance" in tile_channels:
        out["uncertainty/mc_variance"] = part("mc_variance")[0]
    if "tissue" in tile_channels:
        tissue = np.clip(part("tissue")[0], 0.0, 1.0)
        for name in ("uncertainty/entropy", "uncertainty/ovr_entropy",
                     "uncertainty/ovr_entropy_max", "uncertainty/mc_variance"):
            if name in out:
                out[name] = out[name] * tissue
        if "uncertainty/margin" in out:
            out["uncertainty/margin"] = 1.0 - tissue * (1.0 - out["uncertainty/margin"])
    return {name: out[name] for name in names}


def map_level_count(shape: tuple[int, int]) -> int:
    """Number of pyramid levels of a map of ``shape``."""
    return len(_pyramid_shapes(shape))


__all__ = ["MapHandle", "MapSpec", "MapStore", "blend_window", "derived_maps", "lock_path",
           "map_level_count"]
