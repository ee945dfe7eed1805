"""Synthetic H&E histology: patches, pyramidal slides and GlaS-style patch sets with ground truth.

Everything is procedural and deterministic given a seed. The picture is built from a few
fields defined on an infinite *canvas* (level-0 pixels), so that any window can be rendered on
its own, at any downsample, and neighbouring tiles join without seams:

- a tissue field (slides only): irregular blobs of tissue on white glass;
- a malignancy field (slides only): which parts of the tissue are malignant;
- glands, placed on hashed jittered grids: benign glands are regular ellipses of similar size,
  evenly spaced; malignant glands are crowded, elongated and branched (unions of ellipses) of
  varied size, with irregular borders and a thicker epithelium;
- periodic textures (stroma fibres, nuclei, goblet-cell bubbles, grain), computed once.

The colours come from Beer-Lambert mixing of hematoxylin and eosin optical densities.
Level ``k`` of a slide is rendered directly at downsample ``2**k`` from the same fields (with
textures averaged accordingly), so writing a pyramid needs memory for one tile, not one level.

Ground truth of a slide is written next to it as ``<slide stem>.truth.npz`` (see
:func:`read_slide_truth`): boolean ``tissue``, ``malignant`` and ``gland`` maps at a low
resolution given by ``downsample`` (level-0 pixels per truth pixel).
"""

from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage

from ..errors import DatasetError, SlideError
from ..progress import Progress

__all__ = [
    "CLASS_NAMES",
    "SyntheticSample",
    "SlideTruth",
    "synthetic_he_image",
    "write_synthetic_slide",
    "read_slide_truth",
    "truth_path_for",
    "write_synthetic_patch_set",
]

#: Image-level classes of the synthetic data, in label order.
CLASS_NAMES = ("benign", "malignant")

#: Optical density of one unit of hematoxylin and of eosin, per RGB channel (fitted by eye to
#: the purple-heavy staining of colon H&E such as GlaS).
HEMATOXYLIN_OD = np.array([0.52, 0.76, 0.22], np.float32)
EOSIN_OD = np.array([0.08, 0.78, 0.16], np.float32)

#: Brightness of clear glass, as a fraction of 255.
GLASS_BRIGHTNESS = 0.955

_MASK64 = (1 << 64) - 1
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)


@dataclass(frozen=True)
class SyntheticSample:
    """A synthetic H&E image with its ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        ``(height, width, 3)`` uint8 RGB.
    gland_mask : numpy.ndarray
        ``(height, width)`` bool, True on glands (epithelium and lumen).
    label : int
        Image-level class: 0 benign, 1 malignant.
    class_name : str
        ``CLASS_NAMES[label]``.
    """

    image: np.ndarray
    gland_mask: np.ndarray
    label: int
    class_name: str


@dataclass(frozen=True)
class SlideTruth:
    """Low-resolution ground truth of a synthetic slide.

    Attributes
    ----------
    tissue, malignant, gland : numpy.ndarray
        ``(height, width)`` bool maps; ``malignant`` and ``gland`` are within ``tissue``.
    downsample : float
        Level-0 pixels per truth pixel.
    mpp : float
        Microns per pixel of the slide's level 0.
    """

    tissue: np.ndarray
    malignant: np.ndarray
    gland: np.ndarray
    downsample: float
    mpp: float


# ---------------------------------------------------------------------------------------------
# Deterministic hashing and noise


def _hash_uniform(ix: np.ndarray, iy: np.ndarray, seed: int, channel: int) -> np.ndarray:
    """Uniform numbers in [0, 1) that depend only on integer cell coordinates, seed and channel."""
    ux = np.asarray(ix, np.int64).astype(np.uint64)
    uy = np.asarray(iy, np.int64).astype(np.uint64)
    salt = (seed + 1) * 0x165667B19E3779F9 + (channel + 1) * 0x27D4EB2F165667C5
    salt = np.uint64(salt & _MASK64)
    h = (ux * _K1) ^ (uy * _K2) ^ salt
    h ^= h >> np.uint64(33)
    h *= _M1
    h ^= h >> np.uint64(33)
    h *= _M2
    h ^= h >> np.uint64(33)
    return ((h >> np.uint64(40)).astype(np.float64) * (1.0 / (1 << 24))).astype(np.float32)


def _periodic_noise(
    shape: tuple[int, int],
    rng: np.random.Generator,
    wavelength: float,
    anisotropy: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """Periodic smooth Gaussian noise, zero mean, unit variance, filtered in Fourier space.

    ``wavelength`` is the typical size of its blobs (four times the smoothing sigma) in pixels
    along the axis ``angle``; across it the size is ``wavelength / anisotropy``.
    """
    ny, nx = shape
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = scipy.fft.rfft2(white)
    ky = np.fft.fftfreq(ny).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(nx).astype(np.float32)[None, :]
    c, s = math.cos(angle), math.sin(angle)
    along = kx * c + ky * s
    across = -kx * s + ky * c
    sigma_along = wavelength / 4.0
    sigma_across = sigma_along / anisotropy
    gain = np.exp(-2 * math.pi**2 * ((along * sigma_along) ** 2 + (across * sigma_across) ** 2))
    field = scipy.fft.irfft2(spectrum * gain, s=shape).astype(np.float32, copy=False)
    std = float(field.std())
    return field / std if std > 0 else field


def _block_mean(field: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of a periodic field (sides divisible by factor)."""
    if factor == 1:
        return field
    ny, nx = field.shape
    fy, fx = min(factor, ny), min(factor, nx)
    return field.reshape(ny // fy, fy, nx // fx, fx).mean(axis=(1, 3), dtype=np.float32)


def _worley(
    xs: np.ndarray,
    ys: np.ndarray,
    cell: tuple[float, float],
    n_cells: tuple[int, int],
    seed: int,
    channel: int,
    *,
    jitter: float = 0.9,
    max_elongation: float = 1.0,
    second: bool = False,
) -> dict[str, np.ndarray]:
    """Cellular noise: for every pixel, the nearest of one random point per (periodic) grid cell.

    Parameters
    ----------
    xs, ys : numpy.ndarray
        Pixel-centre coordinates (1-D) of the columns and rows.
    cell : (float, float)
        Cell size ``(x, y)``; ``n_cells`` cells per period along each axis.
    max_elongation : float
        The returned distance ``d`` is measured in an elliptical metric of random orientation
        and elongation up to this value, attached to each point (elongated nuclei).
    second : bool
        Also return ``d2``, the (round) distance to the second-nearest point.

    Returns
    -------
    dict
        ``d`` (distance to the nearest point), ``ox``, ``oy`` (offset from the pixel to that
        point), ``r1``, ``r2`` (two uniform random numbers attached to that point), and ``d2``.
    """
    cw, ch = cell
    ncx, ncy = n_cells
    col_cell = np.floor(xs / cw).astype(np.int64)
    row_cell = np.floor(ys / ch).astype(np.int64)
    c_lo, c_hi = int(col_cell.min()) - 1, int(col_cell.max()) + 1
    r_lo, r_hi = int(row_cell.min()) - 1, int(row_cell.max()) + 1
    gx = np.arange(c_lo, c_hi + 1)
    gy = np.arange(r_lo, r_hi + 1)
    wx, wy = np.meshgrid(np.mod(gx, ncx), np.mod(gy, ncy))
    n_grid_cols = gx.size
    point_x = ((gx[None, :] + 0.5 + jitter * (_hash_uniform(wx, wy, seed, channel) - 0.5)) * cw)
    point_y = ((gy[:, None] + 0.5 + jitter * (_hash_uniform(wx, wy, seed, channel + 1) - 0.5)) * ch)
    point_x = point_x.astype(np.float32)
    point_y = point_y.astype(np.float32)
    shape = (ys.size, xs.size)
    best = np.full(shape, np.inf, np.float32)
    best2 = np.full(shape, np.inf, np.float32) if second else None
    best_offset = np.zeros(shape, np.int8)
    out_ox = np.zeros(shape, np.float32)
    out_oy = np.zeros(shape, np.float32)
    closer = np.empty(shape, bool)
    base_c = (col_cell - c_lo).astype(np.intp)
    base_r = (row_cell - r_lo).astype(np.intp)
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    for k, (dr, dc) in enumerate(offsets):
        if dc == -1:
            px_rows = np.take(point_x, base_r + dr, axis=0)
            py_rows = np.take(point_y, base_r + dr, axis=0)
        cols = base_c + dc
        ox = np.take(px_rows, cols, axis=1)
        ox -= xs[None, :]
        oy = np.take(py_rows, cols, axis=1)
        oy -= ys[:, None]
        d2 = ox * ox
        d2 += oy * oy
        np.less(d2, best, out=closer)
        if second:
            np.minimum(best2, np.where(closer, best, d2), out=best2)
        np.copyto(best, d2, where=closer)
        np.copyto(out_ox, ox, where=closer)
        np.copyto(out_oy, oy, where=closer)
        best_offset[closer] = k
    offset_rows = np.array([o[0] for o in offsets], np.intp)[best_offset]
    offset_cols = np.array([o[1] for o in offsets], np.intp)[best_offset]
    best_id = (base_r[:, None] + offset_rows) * n_grid_cols + (base_c[None, :] + offset_cols)
    flat_x, flat_y = wx.ravel(), wy.ravel()

    def attribute(k: int) -> np.ndarray:
        return _hash_uniform(flat_x, flat_y, seed, channel + k)[best_id]

    result = {"ox": out_ox, "oy": out_oy, "r1": attribute(2), "r2": attribute(3)}
    if max_elongation > 1.0:
        theta = attribute(4) * np.float32(math.pi)
        elong = 1.0 + (max_elongation - 1.0) * attribute(5)
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        u = out_ox * cos_t + out_oy * sin_t
        v = out_oy * cos_t - out_ox * sin_t
        result["d"] = np.sqrt(u * u / elong + v * v * elong)
    else:
        result["d"] = np.sqrt(best)
    if second:
        result["d2"] = np.sqrt(best2)
    return result


# ---------------------------------------------------------------------------------------------
# Appearance parameters


@dataclass(frozen=True)
class _Style:
    """Sizes (level-0 pixels, already multiplied by the gland scale) and stain strengths."""

    scale: float
    hematoxylin: float = 1.0
    eosin: float = 1.0

    # gland grids
    @property
    def benign_spacing(self) -> float:
        return 92.0 * self.scale

    @property
    def malignant_spacing(self) -> float:
        return 82.0 * self.scale

    # nuclei
    @property
    def nucleus_cell(self) -> float:
        return 5.5 * self.scale

    @property
    def nucleus_radius(self) -> float:
        return 2.3 * self.scale

    @property
    def goblet_cell(self) -> float:
        return 6.0 * self.scale


class _Textures:
    """Periodic textures and stain layers for one pyramid level, sampled by level pixels.

    The base textures are computed once at level 0 on a torus and averaged down for coarser
    levels; cellular textures (nuclei, goblet cells) are evaluated directly at the level's pixel
    centres, on first use, and replaced by their mean at downsamples of 4 and more.
    """

    def __init__(self, base: dict[str, np.ndarray], style: _Style, seed: int, downsample: int):
        self.downsample = downsample
        self.style = style
        self.seed = seed
        self.detailed = downsample <= 2
        self._base_period = base["fibre"].shape
        f = {name: _block_mean(field, max(1, downsample)) for name, field in base.items()}
        fibre, warp2, blob = f["fibre"], f["warp2"], f["blob"]
        loose = np.clip(1.0 - 4.0 * (fibre - 0.12), 0, 1)
        debris = np.clip(1.4 * (blob + 0.6 * warp2) - 1.3, 0, 1)
        self.fields = {
            "warp": f["warp"],
            "warp2": warp2,
            "blob": blob,
            "grain": f["grain"],
            # stroma: pink fibres, looser (paler) in places, a little hematoxylin everywhere
            "e_stroma": (0.28 + 0.42 * fibre) * (1.0 - 0.7 * loose),
            "h_stroma": 0.10 + 0.04 * fibre,
            # where retraction clefts (thin white gaps around glands) open
            "cleft_gate": 0.85 * np.clip(warp2 * 1.5 + 0.3, 0, 1),
            # malignant lumens: empty, with some eosinophilic debris
            "e_void": 0.03 + 0.55 * debris,
            "h_void": 0.02 + 0.25 * debris,
            # density of nuclei in the stroma (inflammation)
            "inflamed": 0.16 + 0.12 * np.clip(blob, 0, 2),
            # dither for quantising stain concentrations
            "dither": np.random.default_rng([seed, 17, downsample]).random(fibre.shape, np.float32),
        }
        self.fields = {k: np.ascontiguousarray(v, np.float32) for k, v in self.fields.items()}
        self.period = self.fields["warp"].shape
        self._cells_ready = not self.detailed

    def _ensure_cells(self) -> None:
        """Compute the nuclei and goblet-cell textures (detailed levels only)."""
        if self._cells_ready:
            return
        st, ds = self.style, self.downsample
        ny, nx = self.period
        py0, px0 = self._base_period
        xs = ((np.arange(nx, dtype=np.float32) + 0.5) * ds).astype(np.float32)
        ys = ((np.arange(ny, dtype=np.float32) + 0.5) * ds).astype(np.float32)
        n_nuc = (max(1, round(px0 / st.nucleus_cell)), max(1, round(py0 / st.nucleus_cell)))
        nuclei = _worley(
            xs, ys, (px0 / n_nuc[0], py0 / n_nuc[1]), n_nuc, self.seed, 100, max_elongation=1.7
        )
        n_gob = (max(1, round(px0 / st.goblet_cell)), max(1, round(py0 / st.goblet_cell)))
        goblets = _worley(
            xs, ys, (px0 / n_gob[0], py0 / n_gob[1]), n_gob, self.seed, 200, jitter=0.6, second=True
        )
        septa = np.clip(1.0 - (goblets["d2"] - goblets["d"]) / (0.9 * st.scale + 0.5 * ds), 0, 1)
        r = st.nucleus_radius
        cells = {
            # benign lumens: goblet cells, pale mucin in purple-pink membranes
            "e_goblet": 0.06 + 0.40 * septa,
            "h_goblet": 0.14 + 0.35 * septa,
            # the nearest nucleus centre: distance (level-0 pixels), offset (level pixels),
            # a random number deciding its presence, its radius and how much it grows if malignant
            "nuc_d": nuclei["d"],
            "nuc_ox": nuclei["ox"] / ds,
            "nuc_oy": nuclei["oy"] / ds,
            "nuc_r1": nuclei["r1"],
            "nuc_radius": r * (0.8 + 0.4 * nuclei["r2"]),
            "nuc_boost": 0.3 + 0.45 * nuclei["r2"],
        }
        self.fields.update({k: np.ascontiguousarray(v, np.float32) for k, v in cells.items()})
        self._cells_ready = True

    def sample(self, name: str, row0: int, col0: int, n_rows: int, n_cols: int) -> np.ndarray:
        """A window of a texture, wrapping around its period (do not modify it in place)."""
        if name not in self.fields:
            self._ensure_cells()
        field = self.fields[name]
        ny, nx = field.shape
        r, c = row0 % ny, col0 % nx
        if r + n_rows <= ny and c + n_cols <= nx:
            return field[r : r + n_rows, c : c + n_cols]
        rows = (r + np.arange(n_rows)) % ny
        cols = (c + np.arange(n_cols)) % nx
        return field[np.ix_(rows, cols)]


def _base_textures(period: tuple[int, int], style: _Style, seed: int) -> dict[str, np.ndarray]:
    """Level-0 periodic textures: fibres, border warps, tissue-edge wobble, debris, grain."""
    rng = np.random.default_rng([seed, 7])
    s = style.scale
    fibre = np.zeros(period, np.float32)
    mix = _periodic_noise(period, rng, 150 * s)
    for k in range(3):
        angle = rng.uniform(0, math.pi)
        component = _periodic_noise(period, rng, 20 * s, anisotropy=4.0, angle=angle)
        weight = np.clip(1.0 + mix * math.cos(2 * math.pi * k / 3) * 1.5, 0, None)
        fibre += weight * component
    fibre /= max(float(fibre.std()), 1e-6)
    return {
        # stroma fibres in [0, 1], with loose (low) areas
        "fibre": np.clip(0.5 + 0.2 * fibre, 0, 1),
        # smooth perturbations of gland borders and lumens, ~unit variance
        "warp": _periodic_noise(period, rng, 34 * s),
        "warp2": _periodic_noise(period, rng, 16 * s),
        # tissue edge wobble, inflammation density, debris
        "blob": _periodic_noise(period, rng, 140 * s),
        # fine grain (chromatin, staining noise)
        "grain": _periodic_noise(period, rng, 2.0 * s),
    }


# ---------------------------------------------------------------------------------------------
# Layouts: where tissue and which class


class _UniformLayout:
    """All tissue, one class (for patches)."""

    has_glass = False

    def __init__(self, malignant: bool):
        self.malignant = malignant

    def tissue_sdf(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray | None:
        return None

    def tissue_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(x), bool)

    def malignant_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.full(np.shape(x), self.malignant, bool)

    def is_glass(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        return False


class _SlideLayout:
    """Tissue blobs on glass, with benign and malignant regions, from low-resolution fields.

    Both fields are approximate signed distances in level-0 pixels (positive inside), held on a
    grid of at most ``grid`` cells per side and interpolated bilinearly.
    """

    has_glass = True

    def __init__(
        self,
        width: int,
        height: int,
        seed: int,
        style: _Style,
        tissue_fraction: float,
        malignant_fraction: float,
        label: int | None,
        grid: int = 256,
    ):
        rng = np.random.default_rng([seed, 11])
        self.step = max(width, height) / grid
        ny = max(8, math.ceil(height / self.step))
        nx = max(8, math.ceil(width / self.step))
        self.edge_wobble = 40.0 * style.scale
        tissue = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), grid / 11, mode="reflect")
        tissue += 0.45 * ndimage.gaussian_filter(rng.standard_normal((ny, nx)), grid / 30)
        tissue = tissue / tissue.std()
        # keep the tissue off the slide's edges
        yy = np.minimum(np.arange(ny), ny - 1 - np.arange(ny))[:, None]
        xx = np.minimum(np.arange(nx), nx - 1 - np.arange(nx))[None, :]
        border = np.minimum(yy, xx) / (0.06 * grid)
        tissue -= 4.0 * np.clip(1.0 - border, 0, 1) ** 2
        threshold = np.quantile(tissue, 1.0 - tissue_fraction)
        self.tissue_grid = self._as_distance(tissue - threshold)
        inside = self.tissue_grid > 0
        if label is None:
            malignancy = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), grid / 14)
            values = malignancy[inside] if inside.any() else malignancy.ravel()
            cut = np.quantile(values, 1.0 - malignant_fraction)
            self.malignant_grid = self._as_distance(malignancy - cut)
        else:
            sign = 1.0 if label == 1 else -1.0
            self.malignant_grid = np.full((ny, nx), sign * 1e6, np.float32)

    def _as_distance(self, field: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(field)
        slope = float(np.median(np.hypot(gx, gy))) or 1.0
        return (field / slope * self.step).astype(np.float32)

    def _interp(self, grid: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        rows = ys / self.step - 0.5
        cols = xs / self.step - 0.5
        r0 = np.clip(np.floor(rows).astype(np.int64), 0, grid.shape[0] - 2)
        c0 = np.clip(np.floor(cols).astype(np.int64), 0, grid.shape[1] - 2)
        fr = np.clip(rows - r0, 0, 1).astype(np.float32)
        fc = np.clip(cols - c0, 0, 1).astype(np.float32)
        return r0, c0, fr, fc

    def _grid_window(self, grid: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of ``grid`` on the pixel grid ``ys x xs`` (separable)."""
        r0, _, fr, _ = self._interp(grid, xs[:1], ys)
        _, c0, _, fc = self._interp(grid, xs, ys[:1])
        first, last = int(r0.min()), int(r0.max()) + 2
        band = grid[first:last]
        # interpolate along x on the few grid rows involved, then along y per pixel row
        along_x = band[:, c0] * (1 - fc)[None, :] + band[:, c0 + 1] * fc[None, :]
        rows = r0 - first
        out = np.take(along_x, rows, axis=0)
        out *= (1 - fr)[:, None]
        out += np.take(along_x, rows + 1, axis=0) * fr[:, None]
        return out

    def _grid_points(self, grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r0, c0, fr, fc = self._interp(grid, np.asarray(x, np.float32), np.asarray(y, np.float32))
        return (
            grid[r0, c0] * (1 - fr) * (1 - fc)
            + grid[r0, c0 + 1] * (1 - fr) * fc
            + grid[r0 + 1, c0] * fr * (1 - fc)
            + grid[r0 + 1, c0 + 1] * fr * fc
        )

    def tissue_sdf(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return self._grid_window(self.tissue_grid, xs, ys)

    def malignant_sdf(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return self._grid_window(self.malignant_grid, xs, ys)

    def tissue_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._grid_points(self.tissue_grid, x, y) > 0.5 * self.edge_wobble

    def malignant_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._grid_points(self.malignant_grid, x, y) > 0

    def is_glass(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether the box is surely clear of tissue."""
        g = self.tissue_grid
        r0 = max(0, int(y0 / self.step) - 2)
        r1 = min(g.shape[0], int(y1 / self.step) + 3)
        c0 = max(0, int(x0 / self.step) - 2)
        c1 = min(g.shape[1], int(x1 / self.step) + 3)
        if r1 <= r0 or c1 <= c0:
            return True
        return float(g[r0:r1, c0:c1].max()) < -3.5 * self.edge_wobble


# ---------------------------------------------------------------------------------------------
# Glands


_GLAND_KEYS = ("cx", "cy", "a", "b", "cos", "sin", "thick", "size", "malignant", "ex", "ey")

#: How far (in grid spacings) a gland may reach from its grid cell.
_REACH = {False: 1.0, True: 2.8}


def _glands_in_block(
    layout, style: _Style, seed: int, x0: float, y0: float, x1: float, y1: float
) -> dict[str, np.ndarray]:
    """The gland ellipses of the grid cells whose corner lies in ``[x0, x1) x [y0, y1)``.

    Every cell belongs to exactly one block, so blocks can be cached and combined. Keys:
    ``cx, cy`` centre, ``a, b`` semi-axes, ``cos, sin`` orientation, ``thick`` epithelium
    thickness, ``size`` (the gland's minor semi-axis, for its lumen), ``malignant`` (0 or 1),
    ``ex, ey`` half extents of the bounding box.
    """
    parts: list[dict[str, np.ndarray]] = []
    for malignant in (False, True):
        spacing = style.malignant_spacing if malignant else style.benign_spacing
        channel = 1000 if malignant else 2000
        gx = np.arange(math.ceil(x0 / spacing), math.ceil(x1 / spacing))
        gy = np.arange(math.ceil(y0 / spacing), math.ceil(y1 / spacing))
        ix, iy = np.meshgrid(gx, gy)
        ix, iy = ix.ravel(), iy.ravel()

        def u(k: int, ix=ix, iy=iy, channel=channel) -> np.ndarray:
            return _hash_uniform(ix, iy, seed, channel + k)

        jitter = 0.55 if malignant else 0.14
        cx = (ix + 0.5 + jitter * (u(0) - 0.5)) * spacing
        cy = (iy + 0.5 + jitter * (u(1) - 0.5)) * spacing
        keep = layout.malignant_at(cx, cy) == malignant
        keep &= layout.tissue_at(cx, cy)
        keep &= u(2) < (0.93 if malignant else 0.96)
        if not keep.any():
            continue
        sel = np.flatnonzero(keep)
        cx, cy = cx[sel], cy[sel]
        ix, iy = ix[sel], iy[sel]
        theta = u(3)[sel] * np.float32(math.pi)
        if malignant:
            b = spacing * (0.15 + 0.17 * u(4)[sel] ** 1.2)
            a = b * (1.3 + 2.4 * u(5)[sel])
            thick_frac = 0.55 + 0.3 * u(6)[sel]
        else:
            size = spacing * (0.35 + 0.03 * u(4)[sel])
            elong = 1.05 + 0.25 * u(5)[sel]
            a = size * np.sqrt(elong)
            b = size / np.sqrt(elong)
            thick_frac = 0.36 + 0.04 * u(6)[sel]
        thick = thick_frac * b
        ellipses = [(cx, cy, a, b, theta, thick, b)]
        if malignant:
            # branches budding from either end of the main axis
            for k, side in ((0, 1.0), (1, -1.0)):
                has = u(10 + 4 * k)[sel] < (0.6 if k == 0 else 0.35)
                turn = (0.5 + 0.8 * u(11 + 4 * k)[sel]) * np.where(
                    u(12 + 4 * k)[sel] < 0.5, -1.0, 1.0
                )
                bt = theta + turn.astype(np.float32)
                ba = a * (0.5 + 0.4 * u(13 + 4 * k)[sel])
                bb = b * 0.85
                ex = cx + side * np.cos(theta) * 0.75 * a + side * np.cos(bt) * 0.7 * ba
                ey = cy + side * np.sin(theta) * 0.75 * a + side * np.sin(bt) * 0.7 * ba
                ellipses.append(
                    tuple(v[has] for v in (ex, ey, ba, bb, bt, thick_frac * bb, b))
                )
        for ecx, ecy, ea, eb, et, eth, esize in ellipses:
            cos_t, sin_t = np.cos(et), np.sin(et)
            parts.append(
                {
                    "cx": ecx,
                    "cy": ecy,
                    "a": ea,
                    "b": eb,
                    "cos": cos_t,
                    "sin": sin_t,
                    "thick": eth,
                    "size": esize,
                    "malignant": np.full(ecx.shape, float(malignant)),
                    "ex": np.sqrt((ea * cos_t) ** 2 + (eb * sin_t) ** 2),
                    "ey": np.sqrt((ea * sin_t) ** 2 + (eb * cos_t) ** 2),
                }
            )
    if not parts:
        return {k: np.zeros(0, np.float32) for k in _GLAND_KEYS}
    return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in _GLAND_KEYS}


class _GlandCache:
    """Glands by square blocks of the canvas, computed once and kept (least recently used)."""

    def __init__(self, layout, style: _Style, seed: int, block: float, capacity: int = 256):
        self.layout, self.style, self.seed = layout, style, seed
        self.block = float(block)
        self.capacity = capacity
        self._blocks: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self.reach = max(
            _REACH[False] * style.benign_spacing, _REACH[True] * style.malignant_spacing
        )

    def _get(self, bx: int, by: int) -> dict[str, np.ndarray]:
        key = (bx, by)
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return self._blocks[key]
        b = self.block
        glands = _glands_in_block(
            self.layout, self.style, self.seed, bx * b, by * b, (bx + 1) * b, (by + 1) * b
        )
        self._blocks[key] = glands
        if len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return glands

    def query(self, x0: float, y0: float, x1: float, y1: float, margin: float) -> dict:
        """The glands whose bounding box, grown by ``margin``, meets the box."""
        r, b = self.reach, self.block
        parts = [
            self._get(bx, by)
            for by in range(math.floor((y0 - r) / b), math.floor((y1 + r) / b) + 1)
            for bx in range(math.floor((x0 - r) / b), math.floor((x1 + r) / b) + 1)
        ]
        glands = {k: np.concatenate([p[k] for p in parts]) for k in _GLAND_KEYS}
        hit = (
            (glands["cx"] + glands["ex"] + margin >= x0)
            & (glands["cx"] - glands["ex"] - margin <= x1)
            & (glands["cy"] + glands["ey"] + margin >= y0)
            & (glands["cy"] - glands["ey"] - margin <= y1)
        )
        return {k: v[hit] for k, v in glands.items()}





def _gland_fields(
    glands: dict[str, np.ndarray], xs: np.ndarray, ys: np.ndarray, margin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance to the union of gland ellipses (negative inside) on a pixel grid.

    Returns ``(sdf, thick, size, malignant)``; farther than ``margin`` from every gland
    ``sdf`` is large and the other fields are those of no gland (zeros).
    """
    shape = (ys.size, xs.size)
    sdf = np.full(shape, _FAR, np.float32)
    thick = np.zeros(shape, np.float32)
    size = np.zeros(shape, np.float32)
    malignant = np.zeros(shape, np.float32)
    step = float(xs[1] - xs[0]) if xs.size > 1 else 1.0
    x_first, y_first = float(xs[0]), float(ys[0])
    columns = zip(*(glands[k].tolist() for k in _GLAND_KEYS))
    for cx, cy, a, b, c, s, g_thick, g_size, g_malignant, ex, ey in columns:
        c0 = max(0, math.floor((cx - ex - margin - x_first) / step))
        c1 = min(xs.size, math.ceil((cx + ex + margin - x_first) / step) + 1)
        r0 = max(0, math.floor((cy - ey - margin - y_first) / step))
        r1 = min(ys.size, math.ceil((cy + ey + margin - y_first) / step) + 1)
        if c1 <= c0 or r1 <= r0:
            continue
        dx = xs[c0:c1] - cx
        dy = (ys[r0:r1] - cy)[:, None]
        # normalised coordinates along the axes
        ua = (dx * (c / a))[None, :] + dy * (s / a)
        vb = dy * (c / b) - (dx * (s / b))[None, :]
        q = np.sqrt(ua * ua + vb * vb)
        grad = np.sqrt((ua * (1 / a)) ** 2 + (vb * (1 / b)) ** 2)
        grad += 1e-6
        # first-order distance (q - 1) / |grad q|, exact on the axes, no deeper than the minor
        # semi-axis inside; outside, the conservative (q - 1) b
        qm1 = q - 1.0
        d = qm1 * q / grad
        np.minimum(d, qm1 * b, out=d)
        np.maximum(d, -b, out=d)
        window = (slice(r0, r1), slice(c0, c1))
        closer = d < sdf[window]
        np.copyto(sdf[window], d, where=closer)
        np.copyto(thick[window], g_thick, where=closer)
        np.copyto(size[window], g_size, where=closer)
        np.copyto(malignant[window], g_malignant, where=closer)
    return sdf, thick, size, malignant


#: "Far from every gland" in the signed distance field.
_FAR = np.float32(1e4)

#: Stain concentrations are quantised to these many levels for the colour look-up table.
_LUT_H_LEVELS, _LUT_H_MAX = 160, 3.2
_LUT_E_LEVELS, _LUT_E_MAX = 96, 1.9


def _stain_lut(hematoxylin: float, eosin: float) -> np.ndarray:
    """RGB of every quantised (hematoxylin, eosin) pair, flattened: ``(H * E, 3)`` uint8."""
    h = np.linspace(0, _LUT_H_MAX, _LUT_H_LEVELS, dtype=np.float32)[:, None, None]
    e = np.linspace(0, _LUT_E_MAX, _LUT_E_LEVELS, dtype=np.float32)[None, :, None]
    od = h * hematoxylin * HEMATOXYLIN_OD + e * eosin * EOSIN_OD
    rgb = np.exp(-od) * (255.0 * GLASS_BRIGHTNESS)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8).reshape(-1, 3)


class _Renderer:
    """Renders windows of the canvas at one downsample, into RGB and a gland mask."""

    def __init__(
        self,
        layout,
        style: _Style,
        seed: int,
        base: dict[str, np.ndarray],
        downsample: int,
        glands: _GlandCache | None = None,
    ):
        self.layout = layout
        self.style = style
        self.seed = seed
        self.downsample = downsample
        self.textures = _Textures(base, style, seed, downsample)
        self.glands = glands or _GlandCache(layout, style, seed, 1024 * style.scale)
        self.lut = _stain_lut(style.hematoxylin, style.eosin)
        rng = np.random.default_rng([seed, 13])
        glass = 255.0 * GLASS_BRIGHTNESS + rng.standard_normal((64, 64)) * 0.8
        self.glass_tile = np.clip(glass + 0.5, 0, 255).astype(np.uint8)

    def coordinates(self, row0: int, col0: int, n_rows: int, n_cols: int):
        ds = self.downsample
        xs = ((np.arange(n_cols, dtype=np.float32) + col0 + 0.5) * ds).astype(np.float32)
        ys = ((np.arange(n_rows, dtype=np.float32) + row0 + 0.5) * ds).astype(np.float32)
        return xs, ys

    def is_glass(self, row0: int, col0: int, n_rows: int, n_cols: int) -> bool:
        ds = self.downsample
        x0, y0 = col0 * ds, row0 * ds
        return self.layout.is_glass(x0, y0, x0 + n_cols * ds, y0 + n_rows * ds)

    def glass(self, n_rows: int, n_cols: int) -> np.ndarray:
        """A window of clear glass."""
        plane = np.resize(self.glass_tile, (n_rows, n_cols))
        return np.repeat(plane[..., None], 3, axis=2)

    def fields(self, row0: int, col0: int, n_rows: int, n_cols: int):
        """Tissue coverage, gland signed distance and gland attributes of a window."""
        st, ds = self.style, self.downsample
        xs, ys = self.coordinates(row0, col0, n_rows, n_cols)
        tex = self.textures
        warp = tex.sample("warp", row0, col0, n_rows, n_cols)
        tissue_sdf = self.layout.tissue_sdf(xs, ys)
        if tissue_sdf is not None:
            blob = tex.sample("blob", row0, col0, n_rows, n_cols)
            tissue_sdf += self.layout.edge_wobble * (0.8 * blob + 0.15 * warp)
            tissue_sdf *= 1.0 / ds
            tissue_sdf += 0.5
            tissue = np.clip(tissue_sdf, 0, 1, out=tissue_sdf)
        else:
            tissue = None
        margin = 12 * st.scale + 2 * ds
        glands = self.glands.query(xs[0] - ds, ys[0] - ds, xs[-1] + ds, ys[-1] + ds, margin)
        sdf, thick, size, malignant = _gland_fields(glands, xs, ys, margin)
        if glands["cx"].size:
            wobble = (0.05 + 0.07 * malignant) * size + st.scale
            wobble *= warp
            sdf += wobble
        return xs, ys, tissue, sdf, thick, size, malignant

    def render(
        self, row0: int, col0: int, n_rows: int, n_cols: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 ``(n_rows, n_cols, 3)`` and gland mask of a window of this level."""
        st, ds, tex = self.style, self.downsample, self.textures
        xs, ys, tissue, sdf, thick, size, malignant = self.fields(row0, col0, n_rows, n_cols)

        def t(name: str) -> np.ndarray:
            return tex.sample(name, row0, col0, n_rows, n_cols)

        inv_aa = np.float32(1.0 / (0.8 * max(1.0, ds)))
        r = st.nucleus_radius
        e = t("e_stroma").copy()
        h = t("h_stroma").copy()
        near_glands = float(sdf.min()) < 6 * st.scale + ds
        if near_glands:
            # retraction clefts: thin white gaps around some glands
            cleft = np.abs(sdf - 2.5 * st.scale)
            cleft *= -1.0 / (1.8 * st.scale + ds)
            cleft += 1.0
            np.clip(cleft, 0, 1, out=cleft)
            cleft *= t("cleft_gate")
            keep = 1.0 - cleft
            e *= keep
            h *= keep
            depth = -sdf
            in_gland = np.clip(depth * inv_aa + 0.5, 0, 1)
            lumen_edge = thick * (1.0 + 0.08 * t("warp2") + (0.22 * malignant) * t("warp"))
            in_lumen = np.clip((depth - lumen_edge) * inv_aa + 0.5, 0, 1)
            in_lumen *= in_gland
            in_epi = in_gland - in_lumen
            # epithelium cytoplasm: purple-pink, darker and more eosinophilic when malignant
            e_epi = 0.62 + 0.3 * malignant
            h_epi = 0.30 + 0.10 * malignant
            # lumen: benign glands are full of goblet cells around a narrow central lumen;
            # malignant lumens are empty with some debris
            central = np.clip((depth - 0.78 * size) * inv_aa + 0.5, 0, 1)
            benign = 1.0 - malignant
            if tex.detailed:
                e_goblet, h_goblet = t("e_goblet"), t("h_goblet")
            else:
                e_goblet, h_goblet = np.float32(0.2), np.float32(0.26)
            e_goblet = e_goblet + central * (0.03 - e_goblet)
            h_goblet = h_goblet + central * (0.02 - h_goblet)
            e_void, h_void = t("e_void"), t("h_void")
            e_lumen = e_void + benign * (e_goblet - e_void)
            h_lumen = h_void + benign * (h_goblet - h_void)
            e += in_epi * (e_epi - e) + in_lumen * (e_lumen - e)
            h += in_epi * (h_epi - h) + in_lumen * (h_lumen - h)

        # nuclei: a palisade along the base of benign epithelium; crowded, larger and stratified
        # through malignant epithelium; sparse in the stroma
        grain = t("grain")
        if tex.detailed:
            r1, radius = t("nuc_r1"), t("nuc_radius")
            if near_glands:
                # judge each nucleus by the depth of its centre (first-order), so none is cut
                gy, gx = np.gradient(depth)
                center_depth = depth + gx * t("nuc_ox") + gy * t("nuc_oy")
                rel = center_depth / np.maximum(thick, 1e-3)
                stroma_zone = center_depth < -0.5 * r
                band = (rel > 0.06 - 0.02 * malignant) & (rel < 0.62 + 0.28 * malignant)
                present = band & (r1 < 0.97 - 0.12 * malignant)
                present |= stroma_zone & (r1 < t("inflamed"))
                present |= (rel >= 1.0) & (r1 < 0.03)
                grow = malignant * t("nuc_boost")
                grow += 1.0
                grow[stroma_zone] = 0.75
                radius = radius * grow
                h_nucleus = 1.75 - 0.2 * malignant + (0.25 + 0.2 * malignant) * grain
            else:
                present = r1 < t("inflamed")
                radius = radius * 0.75
                h_nucleus = 1.75 + 0.25 * grain
            cover = radius - t("nuc_d")
            cover *= 1.0 / (0.6 * ds + 0.4)
            cover += 0.5
            np.clip(cover, 0, 1, out=cover)
            cover *= present
        else:
            area = math.pi * r * r / st.nucleus_cell**2
            if near_glands:
                cover = area * (
                    0.2 * (1.0 - in_gland) + (0.9 + 0.5 * malignant) * in_epi + 0.02 * in_lumen
                )
                h_nucleus = 1.6 - 0.1 * malignant
            else:
                cover = np.full(sdf.shape, 0.2 * area, np.float32)
                h_nucleus = np.float32(1.6)
        h += cover * (h_nucleus - h)
        e += cover * (0.18 - e)
        if tissue is not None:
            h *= tissue
            e *= tissue
        return self._colour(h, e, grain, row0, col0), self._mask(sdf, tissue)

    def _colour(self, h, e, grain, row0: int, col0: int) -> np.ndarray:
        """Stain concentrations to RGB through the look-up table, dithered."""
        dither = self.textures.sample("dither", row0, col0, *h.shape)
        hq = h * ((_LUT_H_LEVELS - 1) / _LUT_H_MAX)
        hq += dither
        hq += 0.6 * grain
        np.clip(hq, 0, _LUT_H_LEVELS - 1, out=hq)
        eq = e * ((_LUT_E_LEVELS - 1) / _LUT_E_MAX)
        eq += dither
        np.clip(eq, 0, _LUT_E_LEVELS - 1, out=eq)
        index = hq.astype(np.intp)
        index *= _LUT_E_LEVELS
        index += eq.astype(np.intp)
        return np.take(self.lut, index, axis=0)

    @staticmethod
    def _mask(sdf: np.ndarray, tissue: np.ndarray | None) -> np.ndarray:
        mask = sdf < 0
        if tissue is not None:
            mask &= tissue > 0.5
        return mask

    def gland_mask(self, row0: int, col0: int, n_rows: int, n_cols: int) -> np.ndarray:
        """The gland mask of a window, without rendering colours."""
        _, _, tissue, sdf, *_ = self.fields(row0, col0, n_rows, n_cols)
        return self._mask(sdf, tissue)


def _as_label(label) -> int:
    if isinstance(label, str):
        try:
            return CLASS_NAMES.index(label.strip().lower())
        except ValueError:
            raise ValueError(f"label must be one of {CLASS_NAMES} or 0/1, got {label!r}") from None
    if label in (0, 1):
        return int(label)
    raise ValueError(f"label must be one of {CLASS_NAMES} or 0/1, got {label!r}")


def _stain_style(scale: float, rng: np.random.Generator) -> _Style:
    return _Style(
        scale=scale,
        hematoxylin=float(rng.uniform(0.88, 1.12)),
        eosin=float(rng.uniform(0.85, 1.15)),
    )


def _seed_value(seed: int | None) -> int:
    if seed is None:
        return int(np.random.default_rng().integers(0, 2**31))
    return int(seed)


def synthetic_he_image(
    shape: tuple[int, int] = (256, 256),
    label: str | int = "benign",
    seed: int | None = None,
    *,
    gland_scale: float = 1.0,
) -> SyntheticSample:
    """A synthetic H&E patch of benign or malignant colon-like tissue, with its gland mask.

    Benign patches show regular, round-to-oval glands of similar size, evenly spaced, each a
    ring of epithelium with a palisade of dark basal nuclei around goblet cells and a narrow
    lumen. Malignant patches show crowded, irregular, elongated or branched glands of varied
    size, with a thicker, disordered epithelium full of larger nuclei and empty lumens.

    Parameters
    ----------
    shape : (int, int)
        ``(height, width)`` in pixels.
    label : {"benign", "malignant"} or {0, 1}
        The class to draw.
    seed : int, optional
        Same seed, same image. None draws a random one.
    gland_scale : float
        Multiplies every size (glands, nuclei, textures); 1.0 looks like about 1 um per pixel
        (10x), 2.0 like 0.5 um per pixel (20x).

    Returns
    -------
    SyntheticSample
    """
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    if not gland_scale > 0:
        raise ValueError(f"gland_scale must be positive, got {gland_scale!r}")
    label_index = _as_label(label)
    seed = _seed_value(seed)
    rng = np.random.default_rng([seed, label_index, 3])
    style = _stain_style(float(gland_scale), rng)
    period = (max(height, 32), max(width, 32))
    base = _base_textures(period, style, seed)
    renderer = _Renderer(_UniformLayout(bool(label_index)), style, seed, base, 1)
    # a random place on the canvas, so that seeds do not share the same gland lattice phase
    offset = rng.integers(0, 10_000, size=2)
    row0, col0 = int(offset[0]), int(offset[1])
    renderer.textures = _ShiftedTextures(renderer.textures, row0, col0)
    image, mask = renderer.render(row0, col0, height, width)
    return SyntheticSample(
        image=image, gland_mask=mask, label=label_index, class_name=CLASS_NAMES[label_index]
    )


class _ShiftedTextures:
    """Textures whose origin is moved to a window's corner (so a one-period texture fits)."""

    def __init__(self, textures: _Textures, row0: int, col0: int):
        self._textures = textures
        self._row0, self._col0 = row0, col0
        self.detailed = textures.detailed

    def sample(self, name: str, row0: int, col0: int, n_rows: int, n_cols: int) -> np.ndarray:
        return self._textures.sample(name, row0 - self._row0, col0 - self._col0, n_rows, n_cols)


# ---------------------------------------------------------------------------------------------
# Pyramidal slides


def truth_path_for(slide_path: str | os.PathLike) -> Path:
    """Where the ground truth of a synthetic slide lives: ``<stem>.truth.npz`` beside it."""
    path = Path(slide_path)
    return path.with_name(path.stem + ".truth.npz")


def read_slide_truth(slide_path: str | os.PathLike) -> SlideTruth:
    """Read the ground truth written by :func:`write_synthetic_slide` for a slide.

    Raises
    ------
    DatasetError
        When there is no truth file beside the slide.
    """
    path = truth_path_for(slide_path)
    if not path.is_file():
        raise DatasetError(
            "no ground truth beside this slide",
            path=path,
            hint="only slides written by write_synthetic_slide or `napari-wsl-al make-sample` "
            "have one",
        )
    with np.load(path) as data:
        return SlideTruth(
            tissue=data["tissue"].astype(bool),
            malignant=data["malignant"].astype(bool),
            gland=data["gland"].astype(bool),
            downsample=float(data["downsample"]),
            mpp=float(data["mpp"]),
        )


def _level_sizes(width: int, height: int, smallest: int) -> list[tuple[int, int]]:
    sizes = [(width, height)]
    while max(sizes[-1]) > smallest and min(sizes[-1]) >= 2:
        w, h = sizes[-1]
        sizes.append((w // 2, h // 2))
    return sizes


def write_synthetic_slide(
    path: str | os.PathLike,
    width: int,
    height: int,
    *,
    mpp: float = 0.5,
    tile: int = 256,
    seed: int = 0,
    label: str | int | None = None,
    quality: int = 90,
    tissue_fraction: float = 0.35,
    malignant_fraction: float = 0.4,
    smallest_level: int = 1024,
    truth_downsample: int | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Path:
    """Write a synthetic H&E whole-slide image as a pyramidal, tiled, JPEG-compressed TIFF.

    The file is a generic tiled TIFF that OpenSlide opens (``openslide.vendor ==
    "generic-tiff"``): one page per level, each half the size of the one before, down to
    ``smallest_level`` pixels; the resolution tags (pixels per centimetre) give OpenSlide its
    ``openslide.mpp-x/y``. Tiles are rendered one at a time, so memory does not grow with the
    slide size. The ground truth is written beside it (:func:`truth_path_for`).

    Parameters
    ----------
    path : str or Path
        The ``.tif`` file to write (replaced atomically when it exists).
    width, height : int
        Level-0 size in pixels.
    mpp : float
        Microns per pixel at level 0; gland and nucleus sizes follow it (scale ``1 / mpp``).
    tile : int
        Tile side, a multiple of 16.
    seed : int
        Same seed, same slide.
    label : {"benign", "malignant", 0, 1}, optional
        Make all tissue of one class; by default it mixes benign and malignant regions.
    quality : int
        JPEG quality (1-100).
    tissue_fraction : float
        Fraction of the slide covered by tissue, in (0, 1).
    malignant_fraction : float
        Fraction of the tissue that is malignant when ``label`` is None.
    smallest_level : int
        Levels are added until both sides are at most this.
    truth_downsample : int, optional
        Level-0 pixels per ground-truth pixel; by default the power of two that keeps the truth
        within 2048 pixels per side.
    progress : callable, optional
        Called with a :class:`~napari_wsl_al.core.progress.Progress` after every row of tiles.

    Returns
    -------
    Path
        The slide written.
    """
    import tifffile

    path = Path(path)
    width, height, tile = int(width), int(height), int(tile)
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp!r}")
    if not 0 < tissue_fraction < 1:
        raise ValueError(f"tissue_fraction must be in (0, 1), got {tissue_fraction!r}")
    if not 0 < malignant_fraction < 1:
        raise ValueError(f"malignant_fraction must be in (0, 1), got {malignant_fraction!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality!r}")
    label_index = None if label is None else _as_label(label)
    if not path.parent.is_dir():
        raise SlideError("the folder to write into does not exist", path=path.parent)

    rng = np.random.default_rng([seed, 5])
    style = _stain_style(1.0 / mpp, rng)
    layout = _SlideLayout(
        width, height, seed, style, tissue_fraction, malignant_fraction, label_index
    )
    # textures repeat every `period_side` level-0 pixels; glands and tissue never repeat
    period_side = 1 << math.ceil(math.log2(max(1024.0, 512.0 * style.scale)))
    base = _base_textures((period_side, period_side), style, seed)
    glands = _GlandCache(layout, style, seed, 1024 * style.scale)
    sizes = _level_sizes(width, height, smallest_level)
    tiles_per_level = [math.ceil(w / tile) * math.ceil(h / tile) for w, h in sizes]
    total = sum(tiles_per_level)
    done = 0

    def report(message: str) -> None:
        if progress is not None:
            progress(Progress(step=done, total=total, message=message))

    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    bigtiff = width * height * 3 * 4 / 3 > 2**31
    try:
        with tifffile.TiffWriter(partial, bigtiff=bigtiff) as writer:
            for level, (lw, lh) in enumerate(sizes):
                renderer = _Renderer(layout, style, seed, base, 2**level, glands)
                n_rows, n_cols = math.ceil(lh / tile), math.ceil(lw / tile)

                def tiles(renderer=renderer, n_rows=n_rows, n_cols=n_cols, level=level):
                    nonlocal done
                    for tr in range(n_rows):
                        if tr:
                            done += n_cols
                            report(f"level {level}: {lw}x{lh}")
                        for tc in range(n_cols):
                            r0, c0 = tr * tile, tc * tile
                            if renderer.is_glass(r0, c0, tile, tile):
                                yield renderer.glass(tile, tile)
                            else:
                                yield renderer.render(r0, c0, tile, tile)[0]

                pixels_per_cm = 1e4 / (mpp * 2**level)
                writer.write(
                    tiles(),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": int(quality)},
                    resolution=(pixels_per_cm, pixels_per_cm),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if level else 0,
                    software="napari-wsl-al synthetic",
                    description=f"napari-wsl-al synthetic H&E slide, seed {seed}",
                    metadata=None,
                    maxworkers=1,
                )
                del renderer
                done = sum(tiles_per_level[: level + 1])
                report(f"level {level}: {lw}x{lh}")
        _write_truth(path, glands, style, seed, base, width, height, mpp, truth_downsample)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


def _write_truth(
    slide_path: Path,
    glands: _GlandCache,
    style: _Style,
    seed: int,
    base: dict[str, np.ndarray],
    width: int,
    height: int,
    mpp: float,
    downsample: int | None,
) -> Path:
    if downsample is None:
        downsample = 1 << max(0, math.ceil(math.log2(max(width, height) / 2048)))
    downsample = int(downsample)
    tw, th = max(1, width // downsample), max(1, height // downsample)
    tissue = np.zeros((th, tw), bool)
    malignant = np.zeros((th, tw), bool)
    gland = np.zeros((th, tw), bool)
    layout = glands.layout
    renderer = _Renderer(layout, style, seed, base, downsample, glands)
    block = 512
    for r0 in range(0, th, block):
        for c0 in range(0, tw, block):
            nr, nc = min(block, th - r0), min(block, tw - c0)
            xs, ys, tissue_cover, sdf, *_ = renderer.fields(r0, c0, nr, nc)
            inside = tissue_cover > 0.5
            tissue[r0 : r0 + nr, c0 : c0 + nc] = inside
            malignant[r0 : r0 + nr, c0 : c0 + nc] = inside & (layout.malignant_sdf(xs, ys) > 0)
            gland[r0 : r0 + nr, c0 : c0 + nc] = inside & (sdf < 0)
    target = truth_path_for(slide_path)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part.npz")
    np.savez_compressed(
        partial,
        tissue=tissue,
        malignant=malignant,
        gland=gland,
        downsample=np.float64(downsample),
        mpp=np.float64(mpp),
        class_names=np.array(CLASS_NAMES),
    )
    os.replace(partial, target)
    return target


# ---------------------------------------------------------------------------------------------
# Patch sets in the GlaS layout

#: Columns of GlaS's ``grade.csv`` (the header of the real file has spaces after the commas).
GRADE_CSV_HEADER = ("name", "patient ID", " grade (GlaS)", " grade (Sirinukunwattana et al. 2015)")

_SUBGRADES = {
    0: ("healthy", "adenomatous"),
    1: ("moderately differentiated", "poorly differentiated"),
}


def write_synthetic_patch_set(
    root: str | os.PathLike,
    n_per_class: int = 10,
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    *,
    gland_scale: float = 1.0,
    progress: Callable[[Progress], None] | None = None,
) -> Path:
    """Write synthetic patches in the GlaS layout: images, gland masks and ``grade.csv``.

    Layout::

        root/images/synth_<k>.png     RGB
        root/masks/synth_<k>.png      0 background, 255 gland
        root/grade.csv                name, patient ID, grade (GlaS), grade (Sirinukunwattana ...)

    Patches alternate benign and malignant; the class is column 3 (`` benign`` /
    `` malignant``, with GlaS's leading space).

    Parameters
    ----------
    root : str or Path
        Folder to create or fill.
    n_per_class : int
        Patches per class.
    shape : (int, int)
        ``(height, width)`` of every patch.
    seed : int
        Patch ``k`` uses seed ``seed * 100003 + k``.
    gland_scale : float
        See :func:`synthetic_he_image`.
    progress : callable, optional
        Called with a :class:`~napari_wsl_al.core.progress.Progress` after every patch.

    Returns
    -------
    Path
        ``root``.
    """
    from skimage.io import imsave

    root = Path(root)
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class!r}")
    if root.exists() and not root.is_dir():
        raise DatasetError("exists and is not a folder", path=root, hint="choose another path")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(2 * n_per_class):
        label = k % 2
        name = f"synth_{k + 1}"
        sample = synthetic_he_image(
            shape, label, seed=seed * 100003 + k, gland_scale=gland_scale
        )
        imsave(root / "images" / f"{name}.png", sample.image, check_contrast=False)
        imsave(
            root / "masks" / f"{name}.png",
            sample.gland_mask.astype(np.uint8) * 255,
            check_contrast=False,
        )
        patient = 1 + (k // 2) % 8
        subgrade = _SUBGRADES[label][(k // 2) % 2]
        rows.append((name, str(patient), f" {CLASS_NAMES[label]}", f" {subgrade}"))
        if progress is not None:
            progress(Progress(step=k + 1, total=2 * n_per_class, message=f"patch {name}"))
    grade = root / "grade.csv"
    partial = grade.with_name(grade.name + ".part")
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(GRADE_CSV_HEADER)
        writer.writerows(rows)
    os.replace(partial, grade)
    return root
