"""An in-memory slide over numpy arrays: the same API as the file backends, for tests and demos."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._convert import to_rgb_uint8
from .base import SlideReader


class ArrayReader(SlideReader):
    """A slide held in memory, one numpy array per level.

    Parameters
    ----------
    array : ndarray or sequence of ndarray
        Level 0 as ``(H, W)`` or ``(H, W, C)`` pixels, or several levels, largest first.
        Converted once to RGB uint8 (see :mod:`napari_wsl_al.core.io._convert`).
    mpp : float or (float, float), optional
        Microns per pixel of level 0.
    name : str
        Display name.
    tile : int
        Chunk side of the lazy arrays.
    levels : sequence of ndarray, optional
        Extra levels below ``array`` (an alternative to passing a sequence as ``array``).
    value_range : (float, float), optional
        Intensity range mapped to 0..255 for non-uint8 arrays.
    """

    def __init__(
        self,
        array: np.ndarray | Sequence[np.ndarray],
        mpp: float | tuple[float, float] | None = None,
        name: str = "array",
        tile: int = 256,
        levels: Sequence[np.ndarray] | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(array, np.ndarray) or not isinstance(array, Sequence):
            arrays = [array]
        else:
            arrays = list(array)
        arrays += list(levels or [])
        if not arrays:
            raise ValueError("ArrayReader needs at least one array")
        self._levels = [to_rgb_uint8(a, value_range) for a in arrays]
        for above, below in zip(self._levels, self._levels[1:]):
            if below.shape[0] > above.shape[0] or below.shape[1] > above.shape[1]:
                raise ValueError("levels must be ordered largest first")
        self.name = name
        self.format = "memory"
        if mpp is not None:
            self.set_mpp(mpp)
        self.native_dimensions = [(a.shape[1], a.shape[0]) for a in self._levels]
        w0, h0 = self.native_dimensions[0]
        self.native_downsamples = [
            (w0 / max(1, w) + h0 / max(1, h)) / 2.0 for w, h in self.native_dimensions
        ]
        self.native_tile_sizes = [(int(tile), int(tile))] * len(self._levels)
        self._finish_init()

    def _read_native(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._levels[level][y : y + height, x : x + width].copy()
