"""Superpixels (SLIC) at a working resolution: per image, and per slide tile by tile into OME-Zarr.

A superpixel (a *region*) is what the annotator labels and what acquisition scores. Regions
are cut by :func:`skimage.segmentation.slic` at a working resolution (``SuperpixelConfig.mpp``
microns per pixel, or the slide's level 0), about ``region_px x region_px`` pixels each. Id 0
is "not a region" (glass); regions are numbered ``1..n`` without gaps.

A slide is cut tile by tile (``tile_px``, a multiple of ``region_px``, so that SLIC's seed grid
lines up with the tiles), reading only tiles that hold tissue and keeping one tile in memory.
A superpixel crossed by a tile border is two regions; fragments smaller than
``min_fragment_fraction`` of the nominal area are merged into a neighbour in the same tile.

Store layout of ``superpixels/<slide>.zarr`` (zarr format 2, OME-NGFF 0.4 ``multiscales``)::

    .zattrs             {"multiscales": [...], "wslal": {config, geometry, n_regions}}
    0                   (Y, X) uint32 region ids, one chunk per tile
    regions/count      (n + 1,) int64 pixels per region (index 0 unused)
    regions/bbox       (n + 1, 4) int64 min_row, min_col, max_row, max_col (max exclusive)
    regions/centroid   (n + 1, 2) float64 (row, col)
    regions/adjacency  (E, 2) int64 pairs a < b of 4-connected neighbours

Coordinates. Working pixel ``(j, i)`` covers level-0 pixels ``[i * f, (i + 1) * f)`` with
``f = downsample``. As for the inference maps, the layer ``scale`` is ``f`` times the slide's
microns per pixel and ``translate`` is ``(f - 1) / 2`` of the same unit, so that pixel centres
line up with the slide layer in napari (whose level-0 pixel ``k`` is centred at ``k * mpp``).
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Generator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import find_contours
from skimage.segmentation import slic

from ..data.tissue import TissueMask, tissue_mask
from ..errors import ActiveLearningError, WslAlError
from ..io.base import SlideReader
from ..progress import Progress

#: Version of the superpixel store layout.
STORE_FORMAT_VERSION = 1

#: Passes of the small-fragment merge (each at least halves what is left to merge).
MAX_MERGE_PASSES = 8

#: Rows per chunk of the per-region arrays.
REGION_CHUNK = 1 << 18


@dataclass(frozen=True)
class SuperpixelConfig:
    """How regions are cut.

    Attributes
    ----------
    region_px : int
        Nominal side of a region in working pixels; SLIC is asked for
        ``area / region_px**2`` segments.
    compactness : float
        SLIC compactness (higher: squarer regions, lower: regions that follow colour).
    mpp : float or None
        Working resolution in microns per pixel; None reads the slide's level 0.
    tile_px : int
        Side of the tiles a slide is cut in, a multiple of ``region_px``.
    min_tissue_fraction : float
        A region is kept only if at least this fraction of its pixels is tissue; pixels off
        tissue get id 0 anyway.
    min_fragment_fraction : float
        Regions smaller than this fraction of ``region_px**2`` are merged into a neighbour.
    sigma : float
        Gaussian smoothing (pixels) SLIC applies before clustering.
    """

    region_px: int = 32
    compactness: float = 10.0
    mpp: float | None = None
    tile_px: int = 1024
    min_tissue_fraction: float = 0.5
    min_fragment_fraction: float = 0.25
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if int(self.region_px) != self.region_px or self.region_px < 2:
            raise ValueError(f"region_px must be an integer >= 2, got {self.region_px!r}")
        if int(self.tile_px) != self.tile_px or self.tile_px < self.region_px:
            raise ValueError(f"tile_px must be an integer >= region_px, got {self.tile_px!r}")
        if self.tile_px % self.region_px:
            raise ValueError(
                f"tile_px ({self.tile_px}) must be a multiple of region_px ({self.region_px})")
        if not (self.compactness > 0 and math.isfinite(self.compactness)):
            raise ValueError(f"compactness must be positive, got {self.compactness!r}")
        if self.mpp is not None and not (self.mpp > 0 and math.isfinite(self.mpp)):
            raise ValueError(f"mpp must be positive or None, got {self.mpp!r}")
        for name in ("min_tissue_fraction", "min_fragment_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be >= 0, got {self.sigma!r}")

    @property
    def nominal_area(self) -> int:
        """``region_px**2``: the pixels of a region of nominal size."""
        return int(self.region_px) ** 2

    @property
    def min_fragment_px(self) -> int:
        """Smallest region kept on its own, in pixels."""
        return math.ceil(self.min_fragment_fraction * self.nominal_area)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the inverse of :meth:`from_json`)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SuperpixelConfig:
        """A configuration from :meth:`to_json` output; missing keys take their defaults.

        Raises
        ------
        ValueError
            On unknown keys or invalid values.
        """
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown superpixel settings {unknown}; known: {sorted(known)}")
        return cls(**data)


# ---------------------------------------------------------------------------- label arrays
def _neighbour_pixel_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids of every 4-connected pair of pixels with different non-zero ids (with repeats)."""
    left, right = labels[:, :-1], labels[:, 1:]
    top, bottom = labels[:-1, :], labels[1:, :]
    across = (left != right) & (left > 0) & (right > 0)
    down = (top != bottom) & (top > 0) & (bottom > 0)
    first = np.concatenate([left[across], top[down]]).astype(np.int64)
    second = np.concatenate([right[across], bottom[down]]).astype(np.int64)
    return first, second


def _unique_pairs(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``(E, 2)`` int64 unique unordered pairs as ``a < b``, sorted; ids below ``2**31``."""
    first = np.asarray(first, np.int64)
    second = np.asarray(second, np.int64)
    low, high = np.minimum(first, second), np.maximum(first, second)
    keys = np.unique((low << 32) | high)
    return np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1).astype(np.int64)


def region_adjacency(labels: np.ndarray) -> np.ndarray:
    """Pairs of regions that touch (4-connectivity), from an array of region ids.

    Parameters
    ----------
    labels : ndarray of int
        ``(H, W)`` region ids; 0 is not a region.

    Returns
    -------
    ndarray
        ``(E, 2)`` int64 unique pairs ``(a, b)`` with ``0 < a < b``, sorted.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    return _unique_pairs(*_neighbour_pixel_pairs(labels))


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered ``1..n`` in increasing order of the old ids, 0 kept; uint32."""
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    lookup = np.cumsum(present).astype(np.uint32)
    lookup[~present] = 0
    return lookup[labels]


def _merge_small_fragments(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """Merge regions smaller than ``min_pixels`` into the neighbour they share most border with.

    A small region prefers a neighbour that is not small; failing that, a small neighbour with
    a lower id (so that merges never form cycles). Regions with no neighbour stay. Ids are not
    renumbered.
    """
    labels = labels.astype(np.int64)
    for _ in range(MAX_MERGE_PASSES):
        counts = np.bincount(labels.ravel())
        small = (counts > 0) & (counts < min_pixels)
        small[0] = False
        if not small.any():
            break
        first, second = _neighbour_pixel_pairs(labels)
        source = np.concatenate([first, second])
        target = np.concatenate([second, first])
        movable = small[source] & (~small[target] | (target < source))
        if not movable.any():
            break
        span = np.int64(counts.size)
        keys, border = np.unique(source[movable] * span + target[movable], return_counts=True)
        source, target = keys // span, keys % span
        # Big neighbours first, then the longest shared border.
        score = border + (~small[target]) * np.int64(labels.size + 1)
        order = np.lexsort((score, source))
        source, target = source[order], target[order]
        best = np.r_[source[1:] != source[:-1], True]
        mapping = np.arange(counts.size, dtype=np.int64)
        mapping[source[best]] = target[best]
        # Follow chains (small -> smaller id -> ... -> big) to their end.
        while True:
            followed = mapping[mapping]
            if np.array_equal(followed, mapping):
                break
            mapping = followed
        labels = mapping[labels]
    return labels


def _keep_tissue(labels: np.ndarray, tissue: np.ndarray, min_fraction: float) -> np.ndarray:
    """Zero the regions less than ``min_fraction`` tissue, and every pixel off tissue."""
    counts = np.bincount(labels.ravel())
    on_tissue = np.bincount(labels.ravel(), weights=tissue.ravel(), minlength=counts.size)
    keep = on_tissue >= min_fraction * counts
    keep[0] = False
    return np.where(tissue & keep[labels], labels, 0)


def superpixels_for_image(
    rgb: np.ndarray, config: SuperpixelConfig, tissue: np.ndarray | None = None
) -> np.ndarray:
    """Cut one image (a patch, or a tile of a slide) into regions.

    Parameters
    ----------
    rgb : ndarray
        ``(H, W, 3)`` uint8 RGB at the working resolution.
    config : SuperpixelConfig
        Region size, compactness, tissue and fragment rules.
    tissue : ndarray of bool, optional
        ``(H, W)`` True on tissue; None: the whole image is tissue.

    Returns
    -------
    ndarray
        ``(H, W)`` uint32 region ids ``1..n`` without gaps; 0 off tissue and in regions with
        less than ``config.min_tissue_fraction`` tissue.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    if tissue is not None:
        tissue = np.asarray(tissue, dtype=bool)
        if tissue.shape != (height, width):
            raise ValueError(f"tissue mask {tissue.shape} does not match image {(height, width)}")
        if not tissue.any():
            return np.zeros((height, width), np.uint32)
    if height * width == 0:
        return np.zeros((height, width), np.uint32)
    n_segments = max(1, round(height * width / config.nominal_area))
    labels = slic(
        rgb,
        n_segments=n_segments,
        compactness=config.compactness,
        sigma=config.sigma,
        start_label=1,
        enforce_connectivity=True,
        min_size_factor=config.min_fragment_fraction,
        channel_axis=-1,
    ).astype(np.int64)
    if tissue is not None:
        labels = _keep_tissue(labels, tissue, config.min_tissue_fraction)
    labels = _merge_small_fragments(labels, config.min_fragment_px)
    return _relabel_consecutive(labels)


def region_stats(labels: np.ndarray, n_regions: int | None = None):
    """Pixel count, bounding box and centroid of every region id ``0..n``.

    Parameters
    ----------
    labels : ndarray of int
        ``(H, W)`` region ids.
    n_regions : int, optional
        Highest id ``n`` (default: the maximum of ``labels``).

    Returns
    -------
    counts : ndarray
        ``(n + 1,)`` int64 pixels per id (index 0: pixels that are no region).
    bboxes : ndarray
        ``(n + 1, 4)`` int64 ``min_row, min_col, max_row, max_col``, max exclusive (as
        :func:`skimage.measure.regionprops`); zeros for absent ids and for 0.
    centroids : ndarray
        ``(n + 1, 2)`` float64 ``(row, col)`` mean pixel position; zeros where absent.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max(initial=0)) if n_regions is None else int(n_regions)
    counts = np.bincount(flat, minlength=n + 1)[: n + 1].astype(np.int64)
    bboxes = np.zeros((n + 1, 4), np.int64)
    centroids = np.zeros((n + 1, 2), np.float64)
    pixels = np.flatnonzero(flat)
    if pixels.size == 0:
        return counts, bboxes, centroids
    order = np.argsort(flat[pixels], kind="stable")
    rows, cols = np.divmod(pixels[order], labels.shape[1])
    present = np.flatnonzero(counts[1:]) + 1
    starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
    bboxes[present, 0] = np.minimum.reduceat(rows, starts)
    bboxes[present, 1] = np.minimum.reduceat(cols, starts)
    bboxes[present, 2] = np.maximum.reduceat(rows, starts) + 1
    bboxes[present, 3] = np.maximum.reduceat(cols, starts) + 1
    centroids[present, 0] = np.add.reduceat(rows, starts) / counts[present]
    centroids[present, 1] = np.add.reduceat(cols, starts) / counts[present]
    return counts, bboxes, centroids


def _longest_contour(mask: np.ndarray) -> np.ndarray:
    """The longest closed contour of a boolean mask, ``(row, col)`` in the mask padded by one
    pixel (subtract 1 for the mask's own coordinates)."""
    return max(find_contours(np.pad(mask, 1).astype(np.uint8), 0.5), key=len)


# ---------------------------------------------------------------------------- the map
class SuperpixelMap:
    """The regions of one slide or image: ids at the working resolution and per-region stats.

    Open a stored map with :meth:`open`, or wrap an array with :meth:`from_array`.

    Attributes
    ----------
    labels : zarr.Array or ndarray
        ``(Y, X)`` uint32 region ids (lazy for a stored map: read windows with :meth:`read`).
    mpp : float or None
        Working microns per pixel, None when the slide's resolution is unknown.
    downsample : float
        Level-0 pixels per working pixel.
    n_regions : int
        Highest region id.
    pixel_counts : ndarray
        ``(n + 1,)`` pixels per region.
    bboxes : ndarray
        ``(n + 1, 4)`` ``min_row, min_col, max_row, max_col`` (max exclusive), working pixels.
    centroids : ndarray
        ``(n + 1, 2)`` ``(row, col)`` in working pixels.
    path : Path or None
        The store, for a stored map.
    config : SuperpixelConfig or None
        How the regions were cut, when known.
    """

    def __init__(
        self,
        labels,
        mpp: float | None,
        downsample: float,
        pixel_counts: np.ndarray,
        bboxes: np.ndarray,
        centroids: np.ndarray,
        adjacency: np.ndarray | None = None,
        path: Path | None = None,
        config: SuperpixelConfig | None = None,
    ) -> None:
        self.labels = labels
        self.mpp = None if mpp is None else float(mpp)
        self.downsample = float(downsample)
        self.pixel_counts = pixel_counts
        self.bboxes = bboxes
        self.centroids = centroids
        self.n_regions = int(pixel_counts.size) - 1
        self._adjacency = adjacency
        self.path = path
        self.config = config

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_array(
        cls, labels: np.ndarray, mpp: float | None = None, downsample: float = 1.0
    ) -> SuperpixelMap:
        """A map over region ids held in memory (a patch, a test).

        Parameters
        ----------
        labels : ndarray of int
            ``(H, W)`` non-negative region ids.
        mpp : float, optional
            Working microns per pixel.
        downsample : float
            Level-0 pixels per working pixel.
        """
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
        if labels.size and int(labels.min()) < 0:
            raise ValueError("region ids must be non-negative")
        labels = labels.astype(np.uint32)
        counts, bboxes, centroids = region_stats(labels)
        return cls(labels, mpp, downsample, counts, bboxes, centroids)

    @classmethod
    def open(cls, path: str | Path) -> SuperpixelMap:
        """Open a store written by :func:`compute_slide_superpixels`.

        Raises
        ------
        ActiveLearningError
            When there is no store, it is damaged, or it comes from a newer version.
        """
        import zarr

        path = Path(path)
        if not (path / ".zattrs").is_file():
            raise ActiveLearningError(
                "no superpixels were computed here", path=path,
                hint="compute them first (compute_slide_superpixels)")
        try:
            group = zarr.open_group(str(path), mode="r", zarr_format=2)
            info = dict(group.attrs["wslal"])
            version = int(info["format_version"])
            if version > STORE_FORMAT_VERSION:
                raise ActiveLearningError(
                    f"the superpixels were written by a newer version (format {version})",
                    path=path, hint="update napari-wsl-al, or delete the folder to recompute")
            labels = group["0"]
            counts = np.asarray(group["regions/count"][...], np.int64)
            bboxes = np.asarray(group["regions/bbox"][...], np.int64)
            centroids = np.asarray(group["regions/centroid"][...], np.float64)
            adjacency = np.asarray(group["regions/adjacency"][...], np.int64)
        except (KeyError, ValueError, OSError, TypeError) as error:
            raise ActiveLearningError(
                f"the superpixel store is damaged: {error}", path=path,
                hint="delete the folder and compute the superpixels again") from error
        return cls(labels, info["mpp"], info["downsample"], counts, bboxes, centroids,
                   adjacency=adjacency, path=path,
                   config=SuperpixelConfig.from_json(info["config"]))

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int]:
        """``(Y, X)`` working pixels."""
        return tuple(int(s) for s in self.labels.shape)

    @property
    def level0_mpp(self) -> float:
        """Microns per level-0 pixel, or 1.0 (level-0 pixels as the unit) when unknown."""
        return 1.0 if self.mpp is None else self.mpp / self.downsample

    @property
    def scale(self) -> tuple[float, float]:
        """``(y, x)`` size of a working pixel for a napari layer, in :attr:`unit`."""
        step = self.downsample * self.level0_mpp
        return (step, step)

    @property
    def translate(self) -> tuple[float, float]:
        """``(y, x)`` position of the first pixel centre for a napari layer, in :attr:`unit`."""
        offset = (self.downsample - 1.0) / 2.0 * self.level0_mpp
        return (offset, offset)

    @property
    def unit(self) -> str | None:
        """``"micrometer"``, or None when coordinates are level-0 pixels."""
        return None if self.mpp is None else "micrometer"

    # ------------------------------------------------------------------ reading
    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Region ids of the working-pixel window ``[y0, y1) x [x0, x1)``, 0 outside the map."""
        y0, x0, y1, x1 = (int(v) for v in (y0, x0, y1, x1))
        out = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.uint32)
        rows, cols = self.shape
        cy0, cx0, cy1, cx1 = max(0, y0), max(0, x0), min(rows, y1), min(cols, x1)
        if cy1 > cy0 and cx1 > cx0:
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self.labels[cy0:cy1, cx0:cx1]
        return out

    def ids_in_window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Sorted ids of the regions with pixels in a working-pixel window (int64)."""
        ids = np.unique(self.read(y0, x0, y1, x1))
        return ids[ids > 0].astype(np.int64)

    def _check_id(self, region_id: int) -> int:
        region_id = int(region_id)
        if not 0 < region_id <= self.n_regions or self.pixel_counts[region_id] == 0:
            raise ValueError(f"there is no region {region_id} (ids run 1..{self.n_regions})")
        return region_id

    def region_mask(self, region_id: int) -> tuple[np.ndarray, tuple[int, int]]:
        """A region's pixels inside its bounding box.

        Returns
        -------
        mask : ndarray of bool
            The bounding-box crop, True on the region.
        offset : (int, int)
            ``(y0, x0)`` of the crop in working pixels.
        """
        region_id = self._check_id(region_id)
        y0, x0, y1, x1 = (int(v) for v in self.bboxes[region_id])
        return self.read(y0, x0, y1, x1) == region_id, (y0, x0)

    def _rings_px(self, region_id: int, holes: bool = False) -> list[np.ndarray]:
        """Closed rings ``(N, 2)`` in working-pixel index coordinates ``(row, col)``: the
        region's outline (its longest contour, holes filled), then, with ``holes`` and for a
        region in one piece, the outline of each hole (each region it encloses)."""
        from scipy import ndimage

        mask, (y0, x0) = self.region_mask(region_id)
        offset = np.array([y0 - 1.0, x0 - 1.0])
        filled = ndimage.binary_fill_holes(mask)
        rings = [_longest_contour(filled) + offset]
        if holes and ndimage.label(mask)[1] == 1:
            inner, count = ndimage.label(filled & ~mask)
            rings += [_longest_contour(inner == hole) + offset for hole in range(1, count + 1)]
        return rings

    def _level0_xy(self, ring: np.ndarray) -> np.ndarray:
        """A working-pixel ``(row, col)`` ring in level-0 pixels ``(x, y)``."""
        return ((ring + 0.5) * self.downsample)[:, ::-1].copy()

    def outline_rings_level0(self, region_ids) -> dict[int, list[np.ndarray]]:
        """Per region, its GeoJSON Polygon rings in level-0 pixels ``(x, y)``: the outline of
        :meth:`outline_level0`, then the outline of each hole (each region it encloses).

        Pixel ``k`` spans ``[k, k + 1)``, as in QuPath.
        """
        return {int(r): [self._level0_xy(ring) for ring in self._rings_px(r, holes=True)]
                for r in region_ids}

    def outline_um(self, region_ids) -> dict[int, np.ndarray]:
        """Closed polygons of regions for a napari Shapes layer.

        Returns
        -------
        dict of int to ndarray
            ``(N, 2)`` float ``(row, col)`` per region, first point repeated last, in microns
            on the slide layer's frame (level-0 pixel ``k`` centred at ``k * mpp``); in level-0
            pixels when the resolution is unknown. The longest contour is taken for a region
            in several pieces.
        """
        f, unit = self.downsample, self.level0_mpp
        return {int(r): ((self._rings_px(r)[0] + 0.5) * f - 0.5) * unit for r in region_ids}

    def outline_level0(self, region_ids) -> dict[int, np.ndarray]:
        """Closed polygons of regions in level-0 pixels, ``(x, y)`` (QuPath GeoJSON).

        Pixel ``k`` spans ``[k, k + 1)``, as in QuPath.
        """
        return {int(r): self._level0_xy(self._rings_px(r)[0]) for r in region_ids}

    def region_at(self, y_um: float, x_um: float) -> int:
        """The region under a point of the slide layer (microns, or level-0 pixels); 0 if none."""
        f, unit = self.downsample, self.level0_mpp
        row = math.floor((y_um / unit + 0.5) / f)
        col = math.floor((x_um / unit + 0.5) / f)
        return int(self.read(row, col, row + 1, col + 1)[0, 0])

    def adjacency(self) -> np.ndarray:
        """``(E, 2)`` int64 pairs ``a < b`` of regions that touch, across tile borders too."""
        if self._adjacency is None:
            self._adjacency = region_adjacency(np.asarray(self.labels))
        return self._adjacency

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else str(self.path)
        return f"<SuperpixelMap {self.n_regions} regions, {self.shape}, {where}>"


# ---------------------------------------------------------------------------- slides
def working_resolution(reader: SlideReader, config: SuperpixelConfig) -> tuple[float, float | None]:
    """``(downsample, working mpp)`` of a slide for a configuration.

    Raises
    ------
    ActiveLearningError
        When ``config.mpp`` is set and the slide's resolution is unknown.
    """
    if config.mpp is None:
        return 1.0, None if reader.mpp is None else float(reader.mpp[0])
    if reader.mpp is None:
        raise ActiveLearningError(
            f"superpixels at {config.mpp} um/px need the slide's resolution, which is unknown",
            path=reader.path, hint="set the slide's microns per pixel, or use mpp=None")
    return float(config.mpp) / float(reader.mpp[0]), float(config.mpp)


def _tissue_window(
    tissue: TissueMask, downsample: float, y0: int, x0: int, height: int, width: int
) -> np.ndarray:
    """The tissue mask resampled (nearest) onto a window of working pixels."""
    scale = downsample / tissue.downsample
    rows = np.floor((np.arange(height) + y0 + 0.5) * scale).astype(np.int64)
    cols = np.floor((np.arange(width) + x0 + 0.5) * scale).astype(np.int64)
    n_rows, n_cols = tissue.mask.shape
    return tissue.mask[np.ix_(np.clip(rows, 0, n_rows - 1), np.clip(cols, 0, n_cols - 1))]


def _ngff_attrs(name: str, scale: float, translate: float, unit: str | None) -> dict[str, Any]:
    space = {"type": "space"} if unit is None else {"type": "space", "unit": unit}
    return {"multiscales": [{
        "version": "0.4",
        "name": name,
        "axes": [{"name": "y", **space}, {"name": "x", **space}],
        "datasets": [{
            "path": "0",
            "coordinateTransformations": [
                {"type": "scale", "scale": [scale, scale]},
                {"type": "translation", "translation": [translate, translate]},
            ],
        }],
    }]}


def _write_region_arrays(group, counts, bboxes, centroids, adjacency) -> None:
    for name, data in (("count", counts), ("bbox", bboxes), ("centroid", centroids),
                       ("adjacency", adjacency)):
        chunks = (REGION_CHUNK,) + data.shape[1:]
        group.create_array(f"regions/{name}", data=data, chunks=chunks)


def _replace_store(partial: Path, out_path: Path) -> None:
    """Move the finished store into place; an older store is removed only afterwards."""
    old = None
    if out_path.exists():
        old = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}.old")
        out_path.rename(old)
    partial.rename(out_path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def compute_slide_superpixels(
    reader: SlideReader,
    config: SuperpixelConfig,
    out_path: str | Path,
    tissue: TissueMask | None = None,
) -> Generator[Progress, None, SuperpixelMap]:
    """Cut the tissue of a slide into regions, tile by tile, into an OME-Zarr store.

    A patch folder (a reader with ``patch_boxes``) is cut patch by patch instead: no region
    crosses from one patch to another or into the padding of the mosaic. Only tiles holding
    tissue are read; memory holds one tile and the per-region stats. The
    store is built in ``<out_path>.partial`` and renamed when complete, so ``out_path`` is
    either absent, the previous store, or the new one; a ``.partial`` left by a killed run is
    removed and the work restarted.

    Parameters
    ----------
    reader : SlideReader
        The slide.
    config : SuperpixelConfig
        Region size, working resolution, tiles.
    out_path : str or Path
        The ``.zarr`` folder (``project/superpixels/<slide>.zarr``).
    tissue : TissueMask, optional
        Where the tissue is; computed with :func:`~napari_wsl_al.core.data.tissue.tissue_mask`
        when None.

    Yields
    ------
    Progress
        After each tile with tissue; ``metrics["regions"]`` counts the regions so far.

    Returns
    -------
    SuperpixelMap
        The stored map, opened.

    Raises
    ------
    ActiveLearningError
        When the working resolution needs an unknown slide resolution, or the store cannot be
        written (naming the folder).
    """
    import zarr

    out_path = Path(out_path)
    downsample, working_mpp = working_resolution(reader, config)
    level0_mpp = 1.0 if working_mpp is None else working_mpp / downsample
    unit = None if working_mpp is None else "micrometer"
    w0, h0 = reader.dimensions
    width = max(1, math.ceil(w0 / downsample - 1e-9))
    height = max(1, math.ceil(h0 / downsample - 1e-9))
    if tissue is None:
        tissue = tissue_mask(reader)
    tile = int(config.tile_px)
    patch_boxes = getattr(reader, "patch_boxes", None)
    if patch_boxes:
        # A patch folder: each patch is cut on its own (no region crosses a patch border or
        # reaches into the padding of its cell).
        boxes = []
        for bx, by, bw, bh in patch_boxes:
            y0, x0 = math.ceil(by / downsample - 1e-9), math.ceil(bx / downsample - 1e-9)
            y1 = min(height, max(y0 + 1, math.floor((by + bh) / downsample + 1e-9)))
            x1 = min(width, max(x0 + 1, math.floor((bx + bw) / downsample + 1e-9)))
            boxes.append((y0, x0, y1, x1))
    else:
        boxes = [(y0, x0, min(height, y0 + tile), min(width, x0 + tile))
                 for y0 in range(0, height, tile) for x0 in range(0, width, tile)]
    has_tissue = [tissue.contains_box(x0 * downsample, y0 * downsample,
                                      (x1 - x0) * downsample, (y1 - y0) * downsample)
                  for y0, x0, y1, x1 in boxes]
    total = int(sum(has_tissue))
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        if partial.exists():
            shutil.rmtree(partial)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(partial), mode="w", zarr_format=2)
        labels_array = group.create_array("0", shape=(height, width), dtype="uint32",
                                          chunks=(tile, tile), fill_value=0)
        stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        pairs: list[np.ndarray] = []
        above = np.zeros(width, np.uint32)  # the row just above the current tile row
        bottom = np.zeros(width, np.uint32)  # the last row of the current tile row
        left = np.zeros(tile, np.uint32)  # the last column of the tile to the left
        offset = done = 0
        for (y0, x0, y1, x1), holds_tissue in zip(boxes, has_tissue):
            if x0 == 0 and not patch_boxes:
                above, bottom = bottom, np.zeros(width, np.uint32)
                left = np.zeros(tile, np.uint32)
            ids = np.zeros((y1 - y0, x1 - x0), np.uint32)
            if holds_tissue:
                rgb = _read_working(reader, config, downsample, y0, x0, y1 - y0, x1 - x0)
                local = superpixels_for_image(
                    rgb, config, _tissue_window(tissue, downsample, y0, x0, y1 - y0, x1 - x0))
                count = int(local.max(initial=0))
                if count:
                    ids = np.where(local > 0, local + np.uint32(offset), 0).astype(np.uint32)
                    labels_array[y0:y1, x0:x1] = ids
                    counts, bboxes, centroids = region_stats(local, count)
                    bboxes[1:] += np.array([y0, x0, y0, x0])
                    centroids[1:] += np.array([y0, x0], np.float64)
                    stats.append((counts[1:], bboxes[1:], centroids[1:]))
                    pairs.append(region_adjacency(ids))
                    offset += count
            if not patch_boxes:
                # Regions that touch across the tile's top and left borders.
                pairs.append(_unique_pairs(*_neighbour_pixel_pairs(
                    np.stack([above[x0:x1], ids[0]]))))
                pairs.append(_unique_pairs(*_neighbour_pixel_pairs(
                    np.stack([left[: y1 - y0], ids[:, 0]], axis=1))))
                bottom[x0:x1] = ids[-1]
                left = ids[:, -1].copy()
            if holds_tissue:
                done += 1
                yield Progress(step=done, total=total,
                               message=f"superpixels: tile {done}/{total}",
                               metrics={"regions": offset})
        counts = np.concatenate([[0]] + [s[0] for s in stats]).astype(np.int64)
        bboxes = np.concatenate([np.zeros((1, 4), np.int64)] + [s[1] for s in stats])
        centroids = np.concatenate([np.zeros((1, 2))] + [s[2] for s in stats])
        adjacency = np.concatenate([np.zeros((0, 2), np.int64)] + pairs)
        adjacency = _unique_pairs(adjacency[:, 0], adjacency[:, 1])
        _write_region_arrays(group, counts, bboxes, centroids, adjacency)
        group.attrs.update(_ngff_attrs(f"{reader.name} superpixels", downsample * level0_mpp,
                                       (downsample - 1.0) / 2.0 * level0_mpp, unit))
        group.attrs["wslal"] = {
            "format_version": STORE_FORMAT_VERSION,
            "kind": "superpixels",
            "slide": reader.name,
            "config": config.to_json(),
            "downsample": downsample,
            "mpp": working_mpp,
            "shape": [height, width],
            "level0_dimensions": [int(w0), int(h0)],
            "n_regions": offset,
        }
        _replace_store(partial, out_path)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, WslAlError):
            raise ActiveLearningError(
                f"cannot write the superpixels: {error}", path=out_path,
                hint="check that the disk has space and the folder is writable") from error
        raise
    return SuperpixelMap.open(out_path)


def _read_working(
    reader: SlideReader, config: SuperpixelConfig, downsample: float,
    y0: int, x0: int, height: int, width: int,
) -> np.ndarray:
    """A window of the slide at the working resolution (white outside the slide)."""
    if config.mpp is None:
        return reader.read_region((x0, y0), 0, (width, height))
    location = (round(x0 * downsample), round(y0 * downsample))
    return reader.read_region_mpp(location, config.mpp, (width, height))


__all__ = [
    "SuperpixelConfig",
    "SuperpixelMap",
    "compute_slide_superpixels",
    "region_adjacency",
    "region_stats",
    "superpixels_for_image",
    "working_resolution",
]
