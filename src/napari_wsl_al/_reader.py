"""napari reader contribution: slides, zarr pyramids, images and patch folders as multiscale layers.

napari-free: it returns LayerData tuples, which napari (or a test) turns into layers. The levels
that the slide file does not hold (computed from its last level: the whole pyramid of a patch
folder or of a one-level slide) are kept in memory by a :class:`PyramidPreview` and filled in a
background thread, so that napari, which reads them to draw the whole slide and its thumbnail,
never decodes the whole slide on its UI thread.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.io import can_open, open_slide
from .core.io.base import LevelArray, SlideReader

logger = logging.getLogger(__name__)

#: Levels whose shorter side is below this many pixels are not given to napari.
MIN_LEVEL_SIZE = 16

#: Most bytes of computed levels kept in memory for display (the smallest levels first).
PREVIEW_MAX_BYTES = 96 * 2**20

#: Rows of the last native level read per step of the background fill (at least).
PREVIEW_STRIP_ROWS = 256

#: Grey shown, inside napari's GUI, where a computed level is not filled yet.
PLACEHOLDER_VALUE = 224

LayerData = tuple[Any, dict[str, Any], str]


class PyramidPreview:
    """The computed levels of a slide, kept in memory and filled by a background thread.

    The thread reads the slide's last native level once, in full-width strips, and reduces every
    strip to each cached level with the same box mean as :meth:`SlideReader.read_level`, so the
    pixels are identical to reading the level directly. Rows not filled yet are read from the
    slide directly (as without a preview), unless :attr:`placeholders` is set: napari's GUI sets
    it when it redraws the layer as the strips arrive (see :mod:`napari_wsl_al._qt.previews`),
    and those rows then show :data:`PLACEHOLDER_VALUE` grey for a moment.

    Parameters
    ----------
    reader : SlideReader
        The slide.
    levels : list of int
        Computed levels to keep (each below the file's own pyramid).

    Attributes
    ----------
    done : threading.Event
        Set when every cached level is filled (or the fill stopped).
    error : Exception or None
        Why the fill stopped early (a closed or damaged slide); rows left then read directly.
    """

    def __init__(self, reader: SlideReader, levels: list[int]) -> None:
        self.reader = reader
        self.native = len(reader.native_dimensions) - 1
        downsamples = reader.level_downsamples
        self.factors = {
            level: round(downsamples[level] / downsamples[self.native]) for level in levels
        }
        self.arrays = {
            level: np.full((reader.level_dimensions[level][1], reader.level_dimensions[level][0], 3),
                           PLACEHOLDER_VALUE, np.uint8)
            for level in levels
        }
        self.filled_rows = dict.fromkeys(levels, 0)
        self.placeholders = False
        self.done = threading.Event()
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None

    @property
    def levels(self) -> list[int]:
        """The cached levels."""
        return list(self.arrays)

    def view(self, level: int) -> PreviewLevel:
        """The numpy-like array napari displays for a cached level."""
        return PreviewLevel(self, level)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` from the fill thread after every strip and when the fill ends."""
        self._listeners.append(callback)

    def start(self) -> None:
        """Start filling in a daemon thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"wslal-preview-{self.reader.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the fill after the current strip (the rows left are read directly)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the fill ends; whether it ended."""
        return self.done.wait(timeout)

    def strip_rows(self) -> int:
        """Native rows read per step: whole rows of the file's tiles (of a patch folder's
        cells), at least :data:`PREVIEW_STRIP_ROWS`, so that no tile is decoded twice."""
        tile = self.reader.native_tile_sizes[self.native]
        height = tile[0] if tile else PREVIEW_STRIP_ROWS
        return height * math.ceil(PREVIEW_STRIP_ROWS / height)

    def _run(self) -> None:
        from PIL import Image

        try:
            step = self.strip_rows()
            needed_rows = max(a.shape[0] * self.factors[level] for level, a in self.arrays.items())
            needed_cols = max(a.shape[1] * self.factors[level] for level, a in self.arrays.items())
            # Native rows [kept_from, y) not yet reduced into every level (fewer than a factor).
            kept, kept_from = None, 0
            y = 0
            while y < needed_rows and not self._stop.is_set():
                rows = min(step, needed_rows - y)
                strip = self.reader.read_level(self.native, 0, y, needed_cols, rows)
                if kept is not None and len(kept):
                    strip = np.concatenate([kept, strip])
                y += rows
                for level, array in self.arrays.items():
                    factor = self.factors[level]
                    first, last = self.filled_rows[level], min(array.shape[0], y // factor)
                    if last <= first:
                        continue
                    part = strip[first * factor - kept_from : last * factor - kept_from,
                                 : array.shape[1] * factor]
                    array[first:last] = np.asarray(
                        Image.fromarray(np.ascontiguousarray(part)).reduce(factor))
                    self.filled_rows[level] = last
                start = min(self.filled_rows[level] * self.factors[level] for level in self.arrays)
                kept, kept_from = strip[start - kept_from :].copy(), start
                self._notify()
        except Exception as error:  # noqa: BLE001 - a closed or damaged slide: read directly
            self.error = error
            logger.info("napari-wsl-al: the preview of %s stopped: %s", self.reader.name, error)
        finally:
            self.done.set()
            self._notify()

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception as error:  # noqa: BLE001 - a listener must not stop the fill
                logger.info("napari-wsl-al: preview listener failed: %s", error)


class PreviewLevel(LevelArray):
    """A cached level as napari's numpy-like data: filled rows from memory, the others read
    directly from the slide (or grey placeholders inside napari's GUI)."""

    def __init__(self, preview: PyramidPreview, level: int) -> None:
        super().__init__(preview.reader, level)
        self.preview = preview
        self.array = preview.arrays[level]

    def __repr__(self) -> str:
        return f"<PreviewLevel {self.reader.name!r} level {self.level} shape {self.shape}>"

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        rows = key[0]
        if isinstance(rows, slice):
            start, stop, stride = rows.indices(self.shape[0])
            last = stop if stride > 0 else start + 1
        else:
            selected = np.atleast_1d(np.arange(self.shape[0])[rows])
            last = int(selected.max()) + 1 if selected.size else 0
        preview = self.preview
        if preview.filled_rows[self.level] >= last or preview.placeholders:
            return self.array[key]
        return super().__getitem__(key)


def preview_levels(reader: SlideReader, levels: Sequence[int],
                   max_bytes: int = PREVIEW_MAX_BYTES) -> list[int]:
    """The computed levels among ``levels`` worth keeping in memory: the smallest first, while
    their pixels fit in ``max_bytes``."""
    chosen, used = [], 0
    for level in sorted((lv for lv in levels if not reader.is_native(lv)), reverse=True):
        width, height = reader.level_dimensions[level]
        size = width * height * 3
        if used + size > max_bytes:
            break
        chosen.append(level)
        used += size
    return sorted(chosen)


def _single_path(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Path | None:
    if isinstance(path, (str, os.PathLike)):
        return Path(os.fspath(path))
    if isinstance(path, (list, tuple)) and len(path) == 1 and isinstance(path[0], (str, os.PathLike)):
        return Path(os.fspath(path[0]))
    return None


def layer_data(reader: SlideReader) -> list[LayerData]:
    """The multiscale RGB image layer of a slide, as napari LayerData.

    Parameters
    ----------
    reader : SlideReader
        An open slide; it is kept alive in the layer's ``metadata["reader"]`` so widgets can
        re-read the slide at explicit resolutions.

    Returns
    -------
    list of LayerData
        One ``(levels, kwargs, "image")`` tuple; ``scale`` is in microns when the slide's
        resolution is known (``units`` is then ``"um"``), else in pixels. When some levels are
        computed, ``metadata["preview"]`` is the :class:`PyramidPreview` filling them.
    """
    # Numpy-like lazy levels: every napari slice is one backend read (no dask overhead); the
    # computed levels come from memory once the background preview has filled them.
    shown = [
        level
        for level in range(reader.level_count)
        if level == 0 or min(reader.level_dimensions[level]) >= MIN_LEVEL_SIZE
    ]
    cached = preview_levels(reader, shown)
    preview = PyramidPreview(reader, cached) if cached else None
    levels = [preview.view(level) if level in cached else reader.level_view(level)
              for level in shown]
    metadata: dict[str, Any] = {"slide": reader.metadata(), "reader": reader}
    if preview is not None:
        metadata["preview"] = preview
        preview.start()
    kwargs: dict[str, Any] = {
        "name": reader.name,
        "rgb": True,
        "multiscale": True,
        "scale": reader.napari_scale(),
        # uint8 RGB: fixed limits, so napari does not compute them from the pixels.
        "contrast_limits": (0, 255),
        "metadata": metadata,
    }
    if reader.mpp is not None:
        kwargs["units"] = "um"
    return [(levels, kwargs, "image")]


def read_slide(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """Open ``path`` (or a list of one path) and return its layer data.

    Raises the typed errors of :func:`napari_wsl_al.core.io.open_slide`; napari shows them.
    """
    single = _single_path(path)
    if single is None:
        raise ValueError(f"expected one path, got {path!r}")
    return layer_data(open_slide(single))


def napari_get_reader(
    path: str | os.PathLike | Sequence[str | os.PathLike],
) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader function for ``path``, or None when this plugin cannot read it.

    Never raises: the slide is opened here (opening is lazy and cheap), and any failure,
    whatever its type, makes this return None so that napari can try other readers. The
    failure is logged at INFO level.

    Parameters
    ----------
    path : str, PathLike, or list of one of them
        What the user opened. Lists of several paths are left to other readers.

    Returns
    -------
    callable or None
        A function taking the same path and returning a list of LayerData.
    """
    try:
        single = _single_path(path)
        if single is None or not can_open(single):
            return None
        reader = open_slide(single)
    except Exception as error:  # noqa: BLE001 - napari's contract: never raise from here
        logger.info("napari-wsl-al cannot read %s: %s", path, error)
        return None

    opened = [reader]  # handed out once; later calls open the slide again

    def read(requested: Any) -> list[LayerData]:
        if opened and _single_path(requested) == single:
            layers = layer_data(opened.pop())
        else:
            layers = read_slide(requested)
        _redraw_in_napari(layers)
        return layers

    return read


def _redraw_in_napari(layers: list[LayerData]) -> None:
    """Inside napari's GUI, let previews show grey until filled and redraw their layers then.

    Only when napari's Qt front end is already running (napari called this reader); the
    module then stays napari-free for scripts and tests.
    """
    if "napari._qt" not in sys.modules:
        return
    for _, kwargs, _ in layers:
        preview = kwargs.get("metadata", {}).get("preview")
        if preview is not None:
            from ._qt.previews import redraw_while_filling

            redraw_while_filling(preview)
