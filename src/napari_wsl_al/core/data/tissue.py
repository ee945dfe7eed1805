"""Tissue detection at low resolution, so that tiling and inference can skip glass.

Method: a thumbnail of the slide -> HSV saturation (stained tissue is coloured, glass is grey)
-> Otsu threshold, never below a floor (``min_saturation``) so that a slide of bare glass gives
an empty mask instead of thresholding noise -> removal of objects smaller than
``min_object_um2`` and filling of holes smaller than ``max_hole_um2`` -> optional dilation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from ..io.base import SlideReader

#: Pixel size assumed for area parameters when a slide's microns per pixel are unknown.
DEFAULT_MPP = 0.5


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask at low resolution, with helpers in level-0 coordinates.

    Attributes
    ----------
    mask : ndarray of bool
        ``(rows, cols)`` mask; True on tissue.
    downsample : float
        Level-0 pixels per mask pixel.
    threshold : float
        The saturation threshold used (0..1).
    """

    mask: np.ndarray
    downsample: float
    threshold: float = 0.0

    def fraction(self) -> float:
        """Fraction of the slide covered by tissue (0 for an empty mask)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _window(self, x: float, y: float, width: float, height: float) -> np.ndarray:
        d = self.downsample
        rows, cols = self.mask.shape
        c0 = min(cols, max(0, int(math.floor(x / d))))
        r0 = min(rows, max(0, int(math.floor(y / d))))
        c1 = min(cols, max(0, int(math.ceil((x + width) / d))))
        r1 = min(rows, max(0, int(math.ceil((y + height) / d))))
        return self.mask[r0:r1, c0:c1]

    def box_fraction(self, x: float, y: float, width: float, height: float) -> float:
        """Fraction of mask pixels under a level-0 box that are tissue (0 outside the slide)."""
        window = self._window(x, y, width, height)
        return float(window.mean()) if window.size else 0.0

    def contains_box(
        self, x: float, y: float, width: float, height: float, min_fraction: float = 0.0
    ) -> bool:
        """Whether the level-0 box holds tissue: more than ``min_fraction`` of it."""
        window = self._window(x, y, width, height)
        if not window.size:
            return False
        if min_fraction <= 0:
            return bool(window.any())
        return float(window.mean()) > min_fraction


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of uint8 RGB, as float32 in 0..1 (0 for black)."""
    high = rgb.max(axis=2).astype(np.float32)
    low = rgb.min(axis=2).astype(np.float32)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def _remove_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    if max_pixels <= 0 or not mask.any():
        return mask
    holes, count = ndimage.label(~mask)
    if count == 0:
        return mask
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    # Background touching the border is glass around the tissue, not a hole.
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = sizes <= max_pixels
    fill[0] = False
    fill[border] = False
    return mask | fill[holes]


def tissue_mask(
    reader: SlideReader,
    max_size: int = 2048,
    min_object_um2: float = 5000.0,
    max_hole_um2: float = 2000.0,
    min_saturation: float = 0.05,
    dilation_um: float = 0.0,
) -> TissueMask:
    """Detect tissue on a low-resolution copy of a slide.

    Parameters
    ----------
    reader : SlideReader
        The slide.
    max_size : int
        Longer side of the thumbnail the mask is computed on.
    min_object_um2 : float
        Tissue pieces smaller than this (square microns) are dropped as dust.
    max_hole_um2 : float
        Holes inside tissue smaller than this are filled.
    min_saturation : float
        Floor of the saturation threshold (0..1): glass stays below it even when Otsu would
        split its noise.
    dilation_um : float
        Grow the mask by this many microns (0: no dilation).

    Returns
    -------
    TissueMask
        Empty (all False) for a slide of bare glass; never raises for that.

    Notes
    -----
    Areas are converted with the slide's microns per pixel, or :data:`DEFAULT_MPP` when the
    slide does not give them.
    """
    thumbnail = reader.thumbnail(max_size)
    w0, h0 = reader.dimensions
    rows, cols = thumbnail.shape[:2]
    downsample = (w0 / cols + h0 / rows) / 2.0
    saturation = hsv_saturation(thumbnail)
    if float(saturation.max()) - float(saturation.min()) > 1e-6:
        threshold = max(float(threshold_otsu(saturation)), min_saturation)
    else:
        threshold = max(float(saturation.max()) + 1e-6, min_saturation)
    mask = saturation > threshold
    mpp = reader.mpp[0] if reader.mpp is not None else DEFAULT_MPP
    pixel_um2 = (mpp * downsample) ** 2
    mask = _remove_small(mask, int(math.ceil(min_object_um2 / pixel_um2)))
    mask = _fill_small_holes(mask, int(max_hole_um2 / pixel_um2))
    if dilation_um > 0 and mask.any():
        radius = max(1, int(round(dilation_um / (mpp * downsample))))
        # A disk dilation, as a distance threshold (fast for any radius).
        mask = ndimage.distance_transform_edt(~mask) <= radius
    mask = np.ascontiguousarray(mask, dtype=bool)
    return TissueMask(mask=mask, downsample=downsample, threshold=threshold)
