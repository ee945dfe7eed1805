"""Pixel conversions shared by the backends: any image layout or dtype to RGB uint8.

The rules, the same for every backend so that a slide looks the same whichever reads it:

- channels last: 1 channel is grey (repeated to RGB); 2 channels are grey + alpha; 3 are RGB;
  4 are RGBA; more than 4 keep the first three. Alpha is composited over white
  (:data:`~napari_wsl_al.core.io.base.BACKGROUND_VALUE`), so transparent pixels read as glass.
- uint8 is kept as is; bool maps to 0/255.
- other integer types are rescaled linearly from the dtype's full range (``0..65535`` for
  uint16, ``-32768..32767`` for int16 ...) to ``0..255``, unless a ``value_range=(low, high)``
  is given, in which case that range is used and values outside it are clipped. The rule is
  global (never per tile), so that tiles of one slide match.
- floats are taken to lie in ``0..1`` (or in ``value_range`` when given) and clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import BACKGROUND_VALUE


def to_uint8(array: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Rescale an array of any numeric dtype to uint8 by the rule in this module's docstring.

    Parameters
    ----------
    array : ndarray
        Pixel values.
    value_range : (float, float), optional
        The values mapped to 0 and 255. Default: the dtype's range (integers) or ``(0, 1)``
        (floats).

    Returns
    -------
    ndarray
        uint8 array of the same shape.
    """
    array = np.asarray(array)
    if array.dtype == np.uint8 and value_range is None:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(255)
    if value_range is None:
        if np.issubdtype(array.dtype, np.integer):
            info = np.iinfo(array.dtype)
            value_range = (float(info.min), float(info.max))
        else:
            value_range = (0.0, 1.0)
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if array.dtype == np.uint16 and (low, high) == (0.0, 65535.0):
        # Exact and fast: v * 255 / 65535 == v / 257.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    scaled = (array.astype(np.float32) - low) * np.float32(255.0 / (high - low))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def composite_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite uint8 ``rgb`` (H, W, 3) with uint8 ``alpha`` (H, W) over white."""
    if alpha.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[..., None]
    out = (rgb.astype(np.uint16) * a + BACKGROUND_VALUE * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def to_rgb_uint8(
    array: np.ndarray, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Convert a ``(H, W)`` or channels-last ``(H, W, C)`` image to ``(H, W, 3)`` uint8 RGB.

    Parameters
    ----------
    array : ndarray
        Grey, grey + alpha, RGB, RGBA or multi-channel pixels, channels last.
    value_range : (float, float), optional
        Passed to :func:`to_uint8`.

    Returns
    -------
    ndarray
        ``(H, W, 3)`` uint8, C-contiguous.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"expected a (height, width[, channels]) image, got shape {array.shape}")
    array = to_uint8(array, value_range)
    channels = array.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    if channels == 2:
        grey = np.repeat(array[..., :1], 3, axis=2)
        return composite_over_white(grey, array[..., 1])
    if channels == 4:
        return composite_over_white(array[..., :3], array[..., 3])
    return np.ascontiguousarray(array[..., :3])


def read_window(
    array: Any,
    axes: str,
    y_axis: str,
    x_axis: str,
    channel_axis: str | None,
    x: int,
    y: int,
    width: int,
    height: int,
    channel_selection: Any = slice(None),
) -> np.ndarray:
    """Read a ``(height, width[, channels])`` window of an array with named axes.

    Other axes (time, z, series) are read at index 0; the result is ``(Y, X, C)`` whatever the
    stored order, or ``(Y, X)`` without a channel axis.

    Parameters
    ----------
    array : array-like
        Anything sliceable with a tuple (numpy memmap, zarr array, ...).
    axes : str or sequence of str
        The axis names in storage order, e.g. ``"CYX"`` or ``["c", "y", "x"]``.
    y_axis, x_axis, channel_axis : str
        The names of the row, column and channel axes (``channel_axis`` may be None).
    """
    selection: list[Any] = []
    kept: list[str] = []
    for axis in axes:
        if axis == y_axis:
            selection.append(slice(y, y + height))
        elif axis == x_axis:
            selection.append(slice(x, x + width))
        elif axis == channel_axis:
            selection.append(channel_selection)
        else:
            selection.append(0)
            continue
        kept.append(axis)
    window = np.asarray(array[tuple(selection)])
    if channel_axis is None:
        return window
    return np.transpose(window, [kept.index(y_axis), kept.index(x_axis), kept.index(channel_axis)])
