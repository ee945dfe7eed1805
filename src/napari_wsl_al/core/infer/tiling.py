"""A tile grid over a slide's tissue at a chosen resolution, with overlap, for tiled inference.

Tiles live in *target pixels*: the slide resampled to the inference resolution, which is
either a microns-per-pixel value or one of the slide's levels. ``downsample`` converts target
pixels to level-0 pixels. The grid is global to the slide (tile ``(row, col)`` starts at
``(col * step, row * step)`` target pixels, ``step = tile_size - overlap``), so runs over
different regions of the same slide share tiles and can be merged and resumed.

A slide smaller than one tile gets one tile, padded with white glass by the reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..io.base import SlideReader
from .errors import InferenceError, NoTissueError


class TissueLike(Protocol):
    """What the grid needs from a tissue mask (``core.data.tissue.TissueMask``)."""

    def box_fraction(self, x: int, y: int, w: int, h: int) -> float:
        """Fraction of tissue in a level-0 box."""


@dataclass(frozen=True)
class Resolution:
    """Where and how tiles are read.

    Attributes
    ----------
    level : int
        Slide level read.
    level_scale : float
        Extra downscale (>= 1) from ``level`` pixels to target pixels.
    downsample : float
        Level-0 pixels per target pixel.
    mpp : float or None
        Microns per target pixel, when the slide's resolution is known.
    """

    level: int
    level_scale: float
    downsample: float
    mpp: float | None


def resolve_resolution(reader: SlideReader, mpp: float | None = None,
                       level: int | None = None) -> Resolution:
    """The level and scale to read a slide at ``mpp`` microns per pixel, or at ``level``.

    With neither given, level 0 is used.
    """
    if mpp is not None and level is not None:
        raise ValueError("give a target resolution (mpp) or a level, not both")
    if mpp is not None:
        if not mpp > 0:
            raise ValueError(f"microns per pixel must be positive, got {mpp}")
        read_level, factor = reader.level_for_mpp(mpp)
        if abs(factor - 1.0) < 1e-3:
            factor = 1.0
        downsample = reader.level_downsamples[read_level] * factor
        return Resolution(read_level, factor, downsample, float(mpp))
    read_level = 0 if level is None else int(level)
    if not 0 <= read_level < reader.level_count:
        raise ValueError(f"{reader.name} has levels 0..{reader.level_count - 1}, not {read_level}")
    downsample = float(reader.level_downsamples[read_level])
    level_mpp = reader.level_mpp(read_level)
    return Resolution(read_level, 1.0, downsample, None if level_mpp is None else level_mpp[0])


@dataclass(frozen=True)
class TileGrid:
    """Tiles over a slide at one resolution; :attr:`tiles` are those to process.

    Attributes
    ----------
    slide_dimensions : (int, int)
        Level-0 ``(width, height)``.
    resolution : Resolution
        Level, scale and downsample of the target pixels.
    tile_size : int
        Tile side in target pixels.
    overlap : int
        Target pixels shared by neighbouring tiles.
    width, height : int
        Size of the slide in target pixels.
    rows, cols : int
        Shape of the global grid.
    tiles : ndarray
        ``(n, 2)`` int ``(row, col)`` of the tiles to process, in raster order.
    """

    slide_dimensions: tuple[int, int]
    resolution: Resolution
    tile_size: int
    overlap: int
    width: int
    height: int
    rows: int
    cols: int
    tiles: np.ndarray

    @property
    def step(self) -> int:
        """Target pixels between the starts of neighbouring tiles."""
        return self.tile_size - self.overlap

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the global grid."""
        return (self.rows, self.cols)

    def __len__(self) -> int:
        return int(len(self.tiles))

    def position(self, row: int, col: int) -> tuple[int, int]:
        """Top-left ``(x, y)`` of a tile in target pixels."""
        return (int(col) * self.step, int(row) * self.step)

    def level0_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """A tile's ``(x, y, w, h)`` in level-0 pixels (it may extend past the slide)."""
        x, y = self.position(row, col)
        d = self.resolution.downsample
        return (int(round(x * d)), int(round(y * d)), int(math.ceil(self.tile_size * d)),
                int(math.ceil(self.tile_size * d)))

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable geometry (what must match for two runs to share tiles)."""
        return {
            "slide_dimensions": list(self.slide_dimensions),
            "level": self.resolution.level,
            "level_scale": self.resolution.level_scale,
            "downsample": self.resolution.downsample,
            "mpp": self.resolution.mpp,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "width": self.width,
            "height": self.height,
            "rows": self.rows,
            "cols": self.cols,
        }


def _grid_count(length: int, tile_size: int, step: int) -> int:
    if length <= tile_size:
        return 1
    return 1 + int(math.ceil((length - tile_size) / step))


def tile_grid(
    reader: SlideReader,
    tile_size: int = 512,
    overlap: int = 64,
    mpp: float | None = None,
    level: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    tissue: TissueLike | None = None,
    tissue_threshold: float = 0.05,
) -> TileGrid:
    """The tiles over a slide's tissue (or a level-0 box of it) at a resolution.

    Parameters
    ----------
    reader : SlideReader
        The slide.
    tile_size, overlap : int
        Tile side and overlap in target pixels (``0 <= overlap < tile_size / 2``).
    mpp, level : float or int, optional
        The target resolution (see :func:`resolve_resolution`).
    region : (x, y, w, h), optional
        A level-0 box (the current view, a drawn rectangle); tiles touching it are kept.
        The whole slide by default.
    tissue : TissueMask, optional
        Tiles whose ``box_fraction`` is below ``tissue_threshold`` are skipped. Without a
        mask every tile is kept.
    tissue_threshold : float
        Least tissue fraction of a kept tile.

    Raises
    ------
    NoTissueError
        When no tile is left (empty tissue, or a region without tissue). Raising, rather
        than returning an empty grid, makes the cause visible in the CLI and the GUI.
    InferenceError
        When the region lies outside the slide.
    """
    tile_size, overlap = int(tile_size), int(overlap)
    if tile_size <= 0:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    if not 0 <= 2 * overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size / 2), got {overlap} for {tile_size}")
    resolution = resolve_resolution(reader, mpp=mpp, level=level)
    w0, h0 = reader.dimensions
    width = max(1, int(math.ceil(w0 / resolution.downsample)))
    height = max(1, int(math.ceil(h0 / resolution.downsample)))
    step = tile_size - overlap
    rows, cols = _grid_count(height, tile_size, step), _grid_count(width, tile_size, step)

    row_range, col_range = (0, rows), (0, cols)
    if region is not None:
        rx, ry, rw, rh = (int(round(v)) for v in region)
        rx0, ry0 = max(0, rx), max(0, ry)
        rx1, ry1 = min(w0, rx + rw), min(h0, ry + rh)
        if rx1 <= rx0 or ry1 <= ry0:
            raise InferenceError(
                f"the region {tuple(region)} lies outside the slide ({w0} x {h0} pixels)",
                path=reader.path,
            )
        d = resolution.downsample
        tx0, ty0, tx1, ty1 = rx0 / d, ry0 / d, rx1 / d, ry1 / d
        # Tiles [c*step, c*step + tile) that intersect [tx0, tx1).
        col_range = (max(0, int(math.floor((tx0 - tile_size) / step)) + 1),
                     min(cols, int(math.ceil(tx1 / step))))
        row_range = (max(0, int(math.floor((ty0 - tile_size) / step)) + 1),
                     min(rows, int(math.ceil(ty1 / step))))
    rr, cc = np.meshgrid(np.arange(*row_range), np.arange(*col_range), indexing="ij")
    candidates = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64)

    grid = TileGrid((w0, h0), resolution, tile_size, overlap, width, height, rows, cols,
                    candidates)
    if tissue is not None and tissue_threshold > 0 and len(candidates):
        keep = np.array(
            [tissue.box_fraction(*_clip_box(grid.level0_box(r, c), w0, h0)) >= tissue_threshold
             for r, c in candidates],
            dtype=bool,
        )
        grid = TileGrid((w0, h0), resolution, tile_size, overlap, width, height, rows, cols,
                        candidates[keep])
    if len(grid) == 0:
        where = "the region" if region is not None else "the slide"
        raise NoTissueError(
            f"no tile of {where} holds at least {tissue_threshold:.0%} tissue",
            path=reader.path if reader.path is not None else reader.name,
            hint="lower the tissue threshold, choose another region, or check the slide",
        )
    return grid


def _clip_box(box: tuple[int, int, int, int], w0: int, h0: int) -> tuple[int, int, int, int]:
    x, y, w, h = box
    x1, y1 = min(w0, x + w), min(h0, y + h)
    x, y = max(0, x), max(0, y)
    return (x, y, max(1, x1 - x), max(1, y1 - y))
