"""The slide protocol shared by every backend: levels, microns per pixel, regions, lazy arrays.

A backend subclasses :class:`SlideReader` and implements :meth:`SlideReader._read_native`
(a region of one of the file's own levels) plus a few attributes. The base class adds what
every slide offers: reads at level-0 coordinates or at an explicit resolution, padding outside
the image, a lazy pyramid for images that have none, lazy dask arrays chunked on the file's
tiles, thumbnails and napari-ready metadata.

Conventions (those of OpenSlide): sizes are ``(width, height)``, locations are ``(x, y)`` in
level-0 pixels, arrays are ``(height, width, 3)`` uint8 RGB.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import SlideError

#: Pixels outside the image (and transparent pixels) read as white glass.
BACKGROUND_VALUE = 255

#: A lazy pyramid is added until the smallest level fits in this many pixels per side.
SMALLEST_LEVEL_SIZE = 1024

#: Chunk side used for levels whose file is not tiled.
DEFAULT_CHUNK = 512

#: Native pixels per block side when a lazy level is computed (bounds memory per read).
LAZY_BLOCK = 2048


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 RGB to ``size=(width, height)``, antialiased when shrinking.

    Pillow's bilinear filter widens its support with the scale factor, so shrinking averages
    every source pixel (no aliasing); it works on uint8 directly and is several times faster
    than a float resize.
    """
    from PIL import Image

    width, height = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.array(resized)


class LevelArray:
    """A level as a lazy numpy-like array: slicing it reads exactly the requested window.

    This is what napari displays: each slice is one backend read, with none of dask's per-call
    scheduling cost (several milliseconds, as much as a 256-pixel OpenSlide read). Use
    :meth:`SlideReader.level_array` for a dask array of the same level to compute over.
    """

    def __init__(self, reader: SlideReader, level: int):
        self.reader = reader
        self.level = level
        width, height = reader.level_dimensions[level]
        self.shape = (height, width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.size = height * width * 3

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"<LevelArray {self.reader.name!r} level {self.level} shape {self.shape}>"

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        rows, cols, channels = key
        if isinstance(rows, slice) and isinstance(cols, slice):
            (y0, y1, ys), (x0, x1, xs) = rows.indices(self.shape[0]), cols.indices(self.shape[1])
            if ys == 1 and xs == 1 and y1 > y0 and x1 > x0:
                window = self.reader.read_level(self.level, x0, y0, x1 - x0, y1 - y0)
                return window[..., channels]
        # Rare: integer, strided, reversed, empty or fancy selections (dask fuses the user's
        # indexing into this call). Read the bounding window, then pick with numpy.
        ry = np.arange(self.shape[0])[rows]
        rx = np.arange(self.shape[1])[cols]
        flat_y, flat_x = np.atleast_1d(ry), np.atleast_1d(rx)
        if flat_y.size == 0 or flat_x.size == 0:
            window = np.empty((flat_y.size, flat_x.size, 3), np.uint8)
        else:
            ylo, xlo = int(flat_y.min()), int(flat_x.min())
            window = self.reader.read_level(
                self.level, xlo, ylo, int(flat_x.max()) - xlo + 1, int(flat_y.max()) - ylo + 1
            )
            window = window[np.ix_(flat_y - ylo, flat_x - xlo)]
        if np.ndim(ry) == 0 and np.ndim(rx) == 0:
            window = window[0, 0]
        elif np.ndim(ry) == 0:
            window = window[0]
        elif np.ndim(rx) == 0:
            window = window[:, 0]
        return window[..., channels]


class SlideReader(ABC):
    """A whole-slide image (or any image) read lazily, one region at a time.

    Subclasses set, in their ``__init__``, :attr:`path`, :attr:`name`, :attr:`format`,
    :attr:`native_dimensions` (``(width, height)`` per file level, largest first),
    :attr:`native_downsamples`, and optionally :attr:`mpp`, :attr:`objective_power`,
    :attr:`properties` and :attr:`native_tile_sizes`, then call :meth:`_finish_init`.

    Attributes
    ----------
    path : Path or None
        The file or folder read; None for in-memory slides.
    name : str
        Display name (file name without its extension).
    format : str
        The backend and format, e.g. ``"openslide:aperio"``.
    mpp : tuple of float or None
        Microns per pixel at level 0 as ``(x, y)``; None when the file does not say. The user
        can set it with :meth:`set_mpp`.
    mpp_given : bool
        Whether :attr:`mpp` was given by the user or the caller (:meth:`set_mpp`) rather than
        read from the file: a project keeps such a resolution (see :func:`given_mpp`).
    objective_power : float or None
        Scanner objective magnification at level 0, when known.
    properties : dict of str
        Raw metadata of the file.
    """

    path: Path | None = None
    name: str = "slide"
    format: str = "unknown"
    mpp: tuple[float, float] | None = None
    mpp_given: bool = False
    objective_power: float | None = None

    def __init__(self) -> None:
        self.properties: dict[str, str] = {}
        self.native_dimensions: list[tuple[int, int]] = []
        self.native_downsamples: list[float] = []
        self.native_tile_sizes: list[tuple[int, int] | None] = []
        self._arrays: dict[int, da.Array] = {}
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ backend API
    @abstractmethod
    def _read_native(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a window of a file level, in that level's pixels, fully inside the level.

        Must return ``(height, width, 3)`` uint8 RGB and be safe to call from several threads.
        """

    def associated_image_names(self) -> list[str]:
        """Names of the associated images (``label``, ``macro``, ``thumbnail`` ...)."""
        return []

    def read_associated(self, name: str) -> np.ndarray:
        """An associated image as ``(height, width, 3)`` uint8."""
        raise KeyError(f"{self.name} has no associated image {name!r}")

    def _close(self) -> None:
        """Release file handles (backends override)."""

    # ------------------------------------------------------------------ set-up
    def _finish_init(self) -> None:
        """Validate what the backend set and add a lazy pyramid below its last level."""
        if not self.native_dimensions:
            raise SlideError("the file holds no image", path=self.path)
        if not self.native_downsamples:
            w0 = self.native_dimensions[0][0]
            self.native_downsamples = [w0 / w for w, _ in self.native_dimensions]
        if len(self.native_tile_sizes) != len(self.native_dimensions):
            self.native_tile_sizes = [None] * len(self.native_dimensions)
        dims = list(self.native_dimensions)
        downs = list(self.native_downsamples)
        while max(dims[-1]) > SMALLEST_LEVEL_SIZE and min(dims[-1]) >= 2:
            w, h = dims[-1]
            dims.append((w // 2, h // 2))
            downs.append(downs[-1] * 2.0)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(dims)
        self.level_downsamples: tuple[float, ...] = tuple(downs)

    # ------------------------------------------------------------------ geometry
    @property
    def level_count(self) -> int:
        """Number of levels, the lazy ones included."""
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    def is_native(self, level: int) -> bool:
        """Whether the level is stored in the file (and not computed on the fly)."""
        return level < len(self.native_dimensions)

    def level_mpp(self, level: int) -> tuple[float, float] | None:
        """Microns per pixel of a level, or None when the slide's resolution is unknown."""
        if self.mpp is None:
            return None
        d = self.level_downsamples[level]
        return (self.mpp[0] * d, self.mpp[1] * d)

    def set_mpp(self, mpp: float | tuple[float, float]) -> None:
        """Set the level-0 resolution of a slide whose file does not give it."""
        mx, my = (mpp, mpp) if np.isscalar(mpp) else mpp
        if not (mx > 0 and my > 0 and math.isfinite(mx) and math.isfinite(my)):
            raise ValueError(f"microns per pixel must be positive numbers, got {mpp!r}")
        self.mpp = (float(mx), float(my))
        self.mpp_given = True

    def best_level_for_downsample(self, downsample: float) -> int:
        """The deepest level whose downsample does not exceed ``downsample``."""
        best = 0
        for level, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = level
        return best

    def level_for_mpp(self, mpp: float) -> tuple[int, float]:
        """The level to read for a target resolution, and the extra downscale still needed.

        Returns ``(level, factor)`` with ``factor >= 1``: read at ``level`` and shrink by
        ``factor`` to reach ``mpp``.
        """
        if self.mpp is None:
            raise SlideError(
                "the slide's microns per pixel are unknown",
                path=self.path,
                hint="set them with set_mpp() or read by level instead",
            )
        downsample = mpp / self.mpp[0]
        level = self.best_level_for_downsample(downsample)
        return level, max(1.0, downsample / self.level_downsamples[level])

    def tile_size(self, level: int) -> tuple[int, int]:
        """``(height, width)`` of the chunks of a level's lazy array."""
        if self.is_native(level) and self.native_tile_sizes[level]:
            th, tw = self.native_tile_sizes[level]
            # Very small tiles make huge dask graphs: group them.
            k = max(1, math.ceil(256 / max(1, min(th, tw))))
            return th * k, tw * k
        return DEFAULT_CHUNK, DEFAULT_CHUNK

    # ------------------------------------------------------------------ reading
    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a window in a level's own pixel coordinates, padding outside with white."""
        self._check_open()
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.name} has levels 0..{self.level_count - 1}, not {level}")
        width, height = int(width), int(height)
        if width < 0 or height < 0:
            raise ValueError(f"region size must be non-negative, got {(width, height)}")
        lw, lh = self.level_dimensions[level]
        x0, y0 = max(0, int(x)), max(0, int(y))
        x1, y1 = min(lw, int(x) + width), min(lh, int(y) + height)
        if x0 == int(x) and y0 == int(y) and x1 - x0 == width and y1 - y0 == height:
            return self._read_any(level, x0, y0, width, height)
        out = np.full((height, width, 3), BACKGROUND_VALUE, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - int(y) : y1 - int(y), x0 - int(x) : x1 - int(x)] = self._read_any(
                level, x0, y0, x1 - x0, y1 - y0
            )
        return out

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size=(width, height)`` pixels of ``level`` at level-0 ``location=(x, y)``.

        The same signature as ``openslide.OpenSlide.read_region``, returning RGB uint8.
        """
        d = self.level_downsamples[level]
        return self.read_level(
            level, int(round(location[0] / d)), int(round(location[1] / d)), size[0], size[1]
        )

    def read_region_mpp(
        self, location: tuple[int, int], mpp: float, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size=(width, height)`` pixels at resolution ``mpp`` from level-0 ``location``."""
        level, factor = self.level_for_mpp(mpp)
        if factor <= 1.0 + 1e-3:
            return self.read_region(location, level, size)
        w = int(math.ceil(size[0] * factor))
        h = int(math.ceil(size[1] * factor))
        window = self.read_region(location, level, (w, h))
        return resize_rgb(window, size)

    def _read_any(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        if self.is_native(level):
            region = self._read_native(level, x, y, width, height)
        else:
            region = self._read_lazy(level, x, y, width, height)
        if region.shape != (height, width, 3) or region.dtype != np.uint8:
            raise SlideError(
                f"backend returned {region.shape} {region.dtype} for a {height}x{width} window",
                path=self.path,
            )
        return region

    def _read_lazy(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """A window of a lazy level: ``f x f`` box means of the last native level.

        Read straight from the native level (one read per block, no chain of dask
        reductions), in blocks of at most :data:`LAZY_BLOCK` native pixels a side so that
        memory stays bounded for windows of very reduced levels.
        """
        from PIL import Image

        native = len(self.native_dimensions) - 1
        factor = int(round(self.level_downsamples[level] / self.level_downsamples[native]))
        out = np.empty((height, width, 3), np.uint8)
        step = max(1, LAZY_BLOCK // factor)  # lazy-level pixels per block side
        for by in range(0, height, step):
            for bx in range(0, width, step):
                bw, bh = min(step, width - bx), min(step, height - by)
                source = self._read_native(
                    native, (x + bx) * factor, (y + by) * factor, bw * factor, bh * factor
                )
                # Pillow's reduce is an exact box mean, rounded, in C.
                reduced = Image.fromarray(np.ascontiguousarray(source)).reduce(factor)
                out[by : by + bh, bx : bx + bw] = np.asarray(reduced)
        return out

    # ------------------------------------------------------------------ lazy arrays
    def level_array(self, level: int) -> da.Array:
        """Level ``level`` as a lazy ``(height, width, 3)`` uint8 dask array on the file's tiles.

        Lazy levels (below the file's own pyramid) are box means of the last native level
        (``2**k x 2**k`` blocks), computed when a window of them is read.
        """
        with self._lock:
            if level in self._arrays:
                return self._arrays[level]
        view = LevelArray(self, level)
        th, tw = self.tile_size(level)
        # Default getter (fancy=True): dask fuses a slice of a chunk into the chunk's read,
        # so a 256-pixel window reads 256 pixels, not the whole chunk around it.
        array = da.from_array(
            view,
            chunks=(th, tw, 3),
            lock=False,
            name=f"wslal-{id(self):x}-{self.name}-level{level}",
            meta=np.empty((0, 0, 0), np.uint8),
        )
        with self._lock:
            self._arrays.setdefault(level, array)
            return self._arrays[level]

    def levels(self) -> list[da.Array]:
        """Every level as a lazy dask array, largest first."""
        return [self.level_array(level) for level in range(self.level_count)]

    def level_view(self, level: int) -> LevelArray:
        """Level ``level`` as a :class:`LevelArray`: napari's multiscale ``data``."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.name} has levels 0..{self.level_count - 1}, not {level}")
        return LevelArray(self, level)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide scaled so that its longer side is at most ``max_size`` pixels."""
        w0, h0 = self.dimensions
        factor = max(1.0, max(w0, h0) / max_size)
        level = self.best_level_for_downsample(factor)
        lw, lh = self.level_dimensions[level]
        image = self.read_level(level, 0, 0, lw, lh)
        tw, th = max(1, int(round(w0 / factor))), max(1, int(round(h0 / factor)))
        if (tw, th) == (lw, lh):
            return image
        return resize_rgb(image, (tw, th))

    # ------------------------------------------------------------------ metadata
    def metadata(self) -> dict[str, Any]:
        """A JSON-serialisable summary, stored in the napari layer's ``metadata``."""
        return {
            "path": None if self.path is None else str(self.path),
            "name": self.name,
            "format": self.format,
            "dimensions": list(self.dimensions),
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "native_levels": len(self.native_dimensions),
            "mpp": None if self.mpp is None else list(self.mpp),
            "objective_power": self.objective_power,
            "associated_images": self.associated_image_names(),
            "properties": dict(self.properties),
        }

    def napari_scale(self) -> tuple[float, float]:
        """Level-0 ``(y, x)`` scale for napari: microns when known, else pixels (1, 1)."""
        if self.mpp is None:
            return (1.0, 1.0)
        return (self.mpp[1], self.mpp[0])

    # ------------------------------------------------------------------ life cycle
    def _check_open(self) -> None:
        if self._closed:
            raise SlideError("the slide was closed", path=self.path)

    def close(self) -> None:
        """Close the file; further reads raise :class:`SlideError`."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = "unknown mpp" if self.mpp is None else f"{self.mpp[0]:.3g} um/px"
        return f"<{type(self).__name__} {self.name!r} {w}x{h}, {self.level_count} levels, {mpp}>"


def given_mpp(reader: SlideReader) -> float | None:
    """The level-0 µm per pixel that was given to ``reader`` rather than read from its file
    (set in the Slide dock, or passed when it was opened); None when the file's own holds or
    none is known. A project records it for the slide, so that the slide reopens at it."""
    return reader.mpp[0] if reader.mpp_given and reader.mpp is not None else None
