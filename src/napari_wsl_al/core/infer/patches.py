"""Inference over a folder of patches: each patch is one image, with its own maps and class.

A folder of patches (:class:`~napari_wsl_al.core.io.image_backend.PatchFolderReader`) is shown
as a mosaic of equal cells, each patch in the top-left corner of its cell. Tiling that mosaic
like a slide would run tiles and maps across patch borders and over the white padding, and give
no patch a class of its own. :func:`infer_patches` instead runs the model on each whole patch:

- the patch is read at the model's resolution (as slides are), padded at the bottom and right
  only up to a multiple of the output stride, by reflection (as whole images are evaluated in
  training), never with its neighbours or the mosaic's white;
- the model's own per-image normalisation applies (Max-Min's min-max of the mask on the whole
  patch, or its calibrated ``fg_range`` when the checkpoint has one);
- its maps are written on its own cell of the map store (:class:`MapStore`, the same OME-Zarr
  pyramid as slides): one "tile" per cell, no overlap, so the blend window is flat and nothing
  crosses a cell border. A cell is ``n x n`` map pixels,
  ``n = ceil(max(cell side) / (map stride * downsample))``; a map pixel is therefore
  ``cell width / n`` by ``cell height / n`` level-0 pixels (not square when the cells are not), and ``scale``/``translate`` say so. The
  model's outputs are brought to the cell as slides' tiles are (:func:`resample_weights`):
  along an axis where an output pixel is no longer than a map pixel, a map pixel is the exact
  area mean of the outputs over the patch pixels under it; where it is longer (CAMs and class
  probabilities at a stride-32 model's output stride, under 16-pixel map pixels), the outputs
  are interpolated bilinearly at the map pixel's centre, from this patch's outputs only
  (clamped at its edges, never reaching a neighbour). The foreground is always area-averaged.
  Map pixels whose centre lies outside the patch (the cell's padding) stay 0 (``bg``, being
  ``1 - fg``, is 1 there);
- with the tissue gate, the foreground and CAMs are multiplied by the fraction of the patch's
  own tissue mask (:func:`~napari_wsl_al.core.data.tissue.tissue_mask_from_rgb`) under each map
  pixel: glass is never foreground, while lumens and other small bright holes in tissue, which
  that mask keeps as tissue, are left to the model; a patch cut inside tissue is all tissue;
- every patch gets its image-level class probabilities (softmax of the model's image logits on
  the whole patch), kept in the store (``_patch_probs``, NaN until computed) and written as
  ``maps/<slide>.patches.csv`` beside the maps (:func:`patch_table_path`).

Resuming works per patch (the store's done bitmap). Patches larger than
:data:`MAX_PATCH_SIDE` pixels a side at the model's resolution are refused with an
:class:`InferenceError` asking to open the image as a slide, which is tiled.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..device import resolve_device
from ..io.base import SlideReader, resize_rgb
from ..models.base import WslModel
from ..progress import Progress
from .engine import (
    _OOM_ERRORS,
    InferenceConfig,
    InferenceResult,
    _Layout,
    _layout,
    _ModelRunner,
    _resolve_target,
    gated,
    map_stride_for,
    model_fingerprint,
    run_batches,
)
from .errors import InferenceError, MapStoreError
from .store import MapStore
from .tiling import Resolution, resolve_resolution

#: Longest side, in pixels at the model's resolution, of a patch inferred as one image.
MAX_PATCH_SIDE = 4096

#: Least tissue-mask pixels per map pixel side when gating a patch's foreground.
GATE_SAMPLES_PER_MAP_PIXEL = 8

#: Name of the per-patch class probability array inside the map store.
PATCH_PROBS = "_patch_probs"


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class PatchPrediction:
    """The image-level class of one patch of a folder.

    Attributes
    ----------
    index : int
        Position of the patch in the mosaic (row-major, sorted by file name).
    name : str
        File name of the patch.
    box : (int, int, int, int)
        ``(x, y, width, height)`` of the patch in the mosaic, level-0 pixels.
    classes : tuple of str
        Class names, in the order of ``probabilities``.
    probabilities : tuple of float
        Softmax of the model's image-level logits on the whole patch.
    """

    index: int
    name: str
    box: tuple[int, int, int, int]
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]

    @property
    def prediction(self) -> str:
        """The most probable class."""
        return self.classes[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        """The probability of the predicted class."""
        return float(max(self.probabilities))


def patch_table_path(store_path: str | Path) -> Path:
    """``maps/<slide>.patches.csv``: the per-patch classes beside the map store ``<slide>.zarr``."""
    store_path = Path(store_path)
    stem = store_path.name.removesuffix(".zarr")
    return store_path.with_name(f"{stem}.patches.csv")


def write_patch_table(path: str | Path, predictions: list[PatchPrediction],
                      classes: tuple[str, ...]) -> Path:
    """Write the per-patch classes as CSV, atomically (temporary file, then rename).

    Columns: ``patch`` (file name), ``prediction``, ``confidence``, then ``p_<class>`` for
    every class.
    """

    def write(stream) -> None:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["patch", "prediction", "confidence", *(f"p_{c}" for c in classes)])
        for row in predictions:
            writer.writerow([row.name, row.prediction, f"{row.confidence:.6f}",
                             *(f"{p:.6f}" for p in row.probabilities)])

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, write)


def read_patch_predictions(store_path: str | Path) -> list[PatchPrediction]:
    """The per-patch classes kept in a patch folder's map store (finished patches only).

    Returns an empty list for a store of a slide, or when there is no store.

    Raises
    ------
    MapStoreError
        When the store cannot be read.
    """
    import zarr

    store = MapStore(store_path)
    info = store.read_info()
    spec = (info or {}).get("spec") or {}
    patches = spec.get("patches")
    if not patches:
        return []
    try:
        group = zarr.open_group(str(store.path), mode="r", zarr_format=2)
        if PATCH_PROBS not in group:
            return []
        probs = np.asarray(group[PATCH_PROBS][...], dtype=np.float64)
        done = np.asarray(group["_done"][...]).astype(bool)
    except (OSError, ValueError, KeyError) as error:
        raise MapStoreError(f"cannot read the patch classes: {error}", path=store.path) from error
    return _predictions(patches, tuple(spec["classes"]), probs, done)


def _predictions(patches: dict[str, Any], classes: tuple[str, ...], probs: np.ndarray,
                 done: np.ndarray) -> list[PatchPrediction]:
    columns = int(patches["columns"])
    out = []
    for index, (name, box) in enumerate(zip(patches["names"], patches["boxes"])):
        row, col = divmod(index, columns)
        values = probs[row, col]
        if not done[row, col] or not np.isfinite(values).all():
            continue
        out.append(PatchPrediction(index, name, tuple(int(v) for v in box), classes,
                                   tuple(float(v) for v in values)))
    return out


# ---------------------------------------------------------------------- geometry
def area_weights(source_count: int, source_pixel: float, target_count: int,
                 target_pixel: float, extent: float) -> np.ndarray:
    """Weights that average a 1-D signal over the target pixels, within ``[0, extent)``.

    Source pixel ``k`` covers ``[k a, (k + 1) a)``, target pixel ``i`` covers
    ``[i b, (i + 1) b)`` (``a``, ``b`` the pixel lengths, in the same unit as ``extent``).
    Row ``i`` holds the overlaps of target pixel ``i`` with every source pixel, inside the
    extent, divided by their sum: the exact area mean over the part of the pixel inside the
    extent. Rows of target pixels whose centre lies outside the extent are zero.

    Returns
    -------
    ndarray
        ``(target_count, source_count)`` float32.
    """
    s0 = np.arange(source_count, dtype=np.float64) * source_pixel
    t0 = np.arange(target_count, dtype=np.float64) * target_pixel
    low = np.maximum(s0[None, :], t0[:, None])
    high = np.minimum(np.minimum(s0[None, :] + source_pixel, t0[:, None] + target_pixel), extent)
    overlap = np.clip(high - low, 0.0, None)
    inside = t0 + target_pixel / 2 < extent
    total = overlap.sum(axis=1, keepdims=True)
    weights = np.where(inside[:, None] & (total > 0), overlap / np.where(total > 0, total, 1.0), 0.0)
    return weights.astype(np.float32)


def bilinear_weights(source_count: int, source_pixel: float, target_count: int,
                     target_pixel: float, extent: float) -> np.ndarray:
    """Weights that interpolate a 1-D signal linearly at the target pixels' centres.

    Source pixel ``k`` covers ``[k a, (k + 1) a)`` and holds its value at its centre
    ``(k + 1/2) a``; target pixel ``i`` takes the value at its centre ``c = (i + 1/2) b``, at
    source position ``u = c / a - 1/2`` clamped to ``[0, source_count - 1]``: the mean of
    sources ``floor(u)`` and ``floor(u) + 1`` weighted by ``1 - (u - floor(u))`` and
    ``u - floor(u)``. That is :func:`torch.nn.functional.interpolate`'s ``bilinear`` with
    ``align_corners=False``, which slides' tiles use. Rows of target pixels whose centre lies
    outside ``[0, extent)`` are zero.

    Returns
    -------
    ndarray
        ``(target_count, source_count)`` float32.
    """
    centre = (np.arange(target_count, dtype=np.float64) + 0.5) * target_pixel
    position = np.clip(centre / source_pixel - 0.5, 0.0, source_count - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, source_count - 1)
    fraction = position - low
    weights = np.zeros((target_count, source_count), np.float64)
    rows = np.arange(target_count)
    np.add.at(weights, (rows, low), 1.0 - fraction)
    np.add.at(weights, (rows, high), fraction)
    weights[centre >= extent] = 0.0
    return weights.astype(np.float32)


def resample_weights(source_count: int, source_pixel: float, target_count: int,
                     target_pixel: float, extent: float) -> np.ndarray:
    """:func:`area_weights` when a source pixel is no longer than a target pixel, else
    :func:`bilinear_weights`: the rule by which slides' tiles are brought to the map grid
    (area mean when shrinking, bilinear when enlarging), along one axis."""
    choose = area_weights if source_pixel <= target_pixel else bilinear_weights
    return choose(source_count, source_pixel, target_count, target_pixel, extent)


@dataclass
class _PatchGeometry:
    """Where one patch's pixels go: read size, padded size, and its cell of the map."""

    index: int
    size: tuple[int, int]  # (height, width) at the model's resolution
    padded: tuple[int, int]  # (height, width) after padding to the stride
    extent: tuple[float, float]  # (height, width) of the patch, level-0 pixels
    pixel: tuple[float, float]  # (y, x) size of a map pixel, level-0 pixels
    cells: int  # map pixels per cell side
    _cache: dict[tuple[int, int, bool], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict)

    def weights(self, rows: int, cols: int,
                interpolate: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(Wy, Wx)`` taking an output of ``rows x cols`` over the padded patch to the cell.

        With ``interpolate``, :func:`resample_weights` (bilinear along an axis where an output
        pixel is longer than a map pixel); without, :func:`area_weights` on both axes.
        """
        key = (rows, cols, interpolate)
        if key not in self._cache:
            weights = resample_weights if interpolate else area_weights
            per_y = self.padded[0] / rows * self.extent[0] / self.size[0]
            per_x = self.padded[1] / cols * self.extent[1] / self.size[1]
            self._cache[key] = (
                weights(rows, per_y, self.cells, self.pixel[0], self.extent[0]),
                weights(cols, per_x, self.cells, self.pixel[1], self.extent[1]),
            )
        return self._cache[key]


@dataclass(frozen=True)
class _FolderGeometry:
    """The map grid of a patch folder: one ``cells x cells`` block of map pixels per cell."""

    resolution: Resolution
    cells: int
    pixel: tuple[float, float]
    map_shape: tuple[int, int]
    scale: tuple[float, float]
    translate: tuple[float, float]
    unit: str | None

    def patch(self, reader: SlideReader, index: int, stride: int) -> _PatchGeometry:
        _, _, w, h = reader.patch_boxes[index]
        height, width = target_size(w, h, self.resolution.downsample)
        padded = (height + (-height) % stride, width + (-width) % stride)
        return _PatchGeometry(index, (height, width), padded, (float(h), float(w)), self.pixel,
                              self.cells)


def target_size(width: int, height: int, downsample: float) -> tuple[int, int]:
    """``(height, width)`` of a level-0 ``width x height`` patch at ``downsample``."""
    if downsample == 1.0:
        return int(height), int(width)
    return max(1, round(height / downsample)), max(1, round(width / downsample))


def _folder_geometry(reader: SlideReader, resolution: Resolution,
                     map_stride: int) -> _FolderGeometry:
    cw, ch = reader.cell_size
    cells = max(1, math.ceil(max(cw, ch) / (map_stride * resolution.downsample)))
    pixel = (ch / cells, cw / cells)
    map_shape = (reader.rows * cells, reader.columns * cells)
    if reader.mpp is None:
        unit_y, unit_x, unit = 1.0, 1.0, None
    else:
        unit_x, unit_y, unit = reader.mpp[0], reader.mpp[1], "micrometer"
    # Map pixel j covers level-0 pixels [j p, (j + 1) p): its centre is at j p + (p - 1) / 2.
    scale = (pixel[0] * unit_y, pixel[1] * unit_x)
    translate = ((pixel[0] - 1) / 2 * unit_y, (pixel[1] - 1) / 2 * unit_x)
    return _FolderGeometry(resolution, cells, pixel, map_shape, scale, translate, unit)


def _patches_in(reader: SlideReader, region: tuple[int, int, int, int] | None) -> list[int]:
    """Indices of the patches touching a level-0 box (all of them without a box)."""
    boxes = reader.patch_boxes
    if region is None:
        return list(range(len(boxes)))
    rx, ry, rw, rh = (float(v) for v in region)
    chosen = [i for i, (x, y, w, h) in enumerate(boxes)
              if x < rx + rw and rx < x + w and y < ry + rh and ry < y + h]
    if not chosen:
        raise InferenceError(f"the region {tuple(region)} touches no patch of the folder",
                             path=reader.path, hint="choose a region over the patches")
    return chosen


def _check_sizes(reader: SlideReader, indices: list[int], downsample: float) -> None:
    for index in indices:
        _, _, w, h = reader.patch_boxes[index]
        height, width = target_size(w, h, downsample)
        if max(height, width) > MAX_PATCH_SIDE:
            raise InferenceError(
                f"the patch {reader.patch_names[index]} is {width} x {height} pixels at the "
                f"model's resolution, more than {MAX_PATCH_SIDE} a side to infer as one image",
                path=reader.path,
                hint=f"open {reader.patch_names[index]} itself as a slide, so that it is tiled",
            )


def reflect_pad(image: np.ndarray, multiple: int) -> np.ndarray:
    """Pad ``(H, W, 3)`` at the bottom and right to a multiple, by reflection.

    Symmetric (edge-repeating) reflection when the padding is as large as the image, as
    :func:`~napari_wsl_al.core.data.patches.pad_to_multiple` does for whole training images.
    """
    height, width = image.shape[:2]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "symmetric"
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


# ---------------------------------------------------------------------- reading
@dataclass
class _PatchBatch:
    """A batch of patches of one padded size, ready for the model."""

    indices: list[int]
    images: torch.Tensor
    geometry: list[_PatchGeometry]
    tissue: list[np.ndarray | None]  # per patch, (cells, cells) tissue fraction, or None

    def part(self, start: int, stop: int) -> _PatchBatch:
        return _PatchBatch(self.indices[start:stop], self.images[start:stop],
                           self.geometry[start:stop], self.tissue[start:stop])


class _PatchReader:
    """Reads, resizes, pads and normalises a batch of patches (called from reader threads)."""

    def __init__(self, reader: SlideReader, folder: _FolderGeometry, model: WslModel,
                 stride: int, pin: bool, gate: bool):
        self.reader = reader
        self.folder = folder
        self.model = model
        self.stride = stride
        self.pin = pin
        self.gate = gate

    def pixels(self, index: int) -> np.ndarray:
        """Patch ``index`` at the model's resolution, ``(h, w, 3)`` uint8."""
        pixels = self.reader.read_patch(index)
        height, width = target_size(pixels.shape[1], pixels.shape[0],
                                    self.folder.resolution.downsample)
        return resize_rgb(pixels, (width, height))

    def __call__(self, indices: list[int]) -> _PatchBatch:
        with torch.inference_mode():
            geometry, padded, tissue = [], [], []
            for index in indices:
                g = self.folder.patch(self.reader, index, self.stride)
                pixels = self.pixels(index)
                padded.append(reflect_pad(pixels, self.stride))
                tissue.append(self._gate(pixels, g) if self.gate else None)
                geometry.append(g)
            images = self.model.normalize(torch.from_numpy(np.stack(padded)))
            if self.pin:
                images = images.pin_memory()
        return _PatchBatch(list(indices), images, geometry, tissue)

    def _gate(self, pixels: np.ndarray, geometry: _PatchGeometry) -> np.ndarray:
        return cell_tissue_fraction(pixels, geometry.extent, geometry.pixel, geometry.cells,
                                    self.folder.resolution.mpp)


def cell_tissue_fraction(pixels: np.ndarray, extent: tuple[float, float],
                         pixel: tuple[float, float], cells: int,
                         mpp: float | None) -> np.ndarray:
    """Fraction of a patch's tissue mask under each map pixel of its cell.

    The mask (:func:`~napari_wsl_al.core.data.tissue.tissue_mask_from_rgb`) is computed on
    the patch shrunk so that a map pixel still spans at least
    :data:`GATE_SAMPLES_PER_MAP_PIXEL` mask pixels a side: the fraction stays exact enough
    and the mask costs milliseconds instead of a large part of a second.

    Parameters
    ----------
    pixels : ndarray
        ``(h, w, 3)`` uint8 patch at the model's resolution.
    extent : (float, float)
        ``(height, width)`` of the patch in level-0 pixels.
    pixel : (float, float)
        ``(y, x)`` size of a map pixel in level-0 pixels.
    cells : int
        Map pixels per cell side.
    mpp : float or None
        Microns per pixel of ``pixels`` (the tissue mask's areas), when known.

    Returns
    -------
    ndarray
        ``(cells, cells)`` float32 in ``[0, 1]``; 0 outside the patch.
    """
    from ..data.tissue import DEFAULT_MPP, tissue_mask_from_rgb

    height, width = pixels.shape[:2]
    per_map_pixel = min(pixel[0] * height / extent[0], pixel[1] * width / extent[1])
    shrink = max(1, int(per_map_pixel // GATE_SAMPLES_PER_MAP_PIXEL))
    small = pixels
    if shrink > 1:
        small = resize_rgb(pixels, (max(1, width // shrink), max(1, height // shrink)))
    pixel_um = (DEFAULT_MPP if mpp is None else float(mpp)) * width / small.shape[1]
    mask = tissue_mask_from_rgb(small, pixel_um=pixel_um).mask.astype(np.float32)
    rows, cols = mask.shape
    wy = area_weights(rows, extent[0] / rows, cells, pixel[0], extent[0])
    wx = area_weights(cols, extent[1] / cols, cells, pixel[1], extent[1])
    return wy @ mask @ wx.T


# ---------------------------------------------------------------------- the model
class _PatchRunner(_ModelRunner):
    """Runs the model on whole patches; outputs resampled onto each patch's cell of the map."""

    def __init__(self, model: WslModel, device: torch.device, config: InferenceConfig,
                 layout: _Layout, cells: int):
        super().__init__(model, device, config, layout, cells, 0)

    def patch_outputs(self, batch: _PatchBatch) -> tuple[np.ndarray, np.ndarray]:
        """``(B, channels, n, n)`` cell outputs and ``(B, C)`` image-level probabilities."""
        maps, probs, start = [], [], 0
        count = len(batch.indices)
        while start < count:
            part = batch.part(start, start + self.micro_batch)
            try:
                cell_maps, image_probs = self._patch_outputs(part)
            except _OOM_ERRORS as error:
                self._recover_from_oom(error)
                continue
            maps.append(cell_maps)
            probs.append(image_probs)
            start += len(part.indices)
        return np.concatenate(maps, axis=0), np.concatenate(probs, axis=0)

    def _to_cells(self, values: torch.Tensor, batch: _PatchBatch,
                  interpolate: bool = True) -> torch.Tensor:
        """``(B, C, r, c)`` outputs over the padded patches -> ``(B, C, n, n)`` cell values.

        Area means, or bilinear interpolation along an axis where an output pixel is longer
        than a map pixel when ``interpolate`` (see :meth:`_PatchGeometry.weights`).
        """
        rows, cols = values.shape[-2:]
        pairs = [g.weights(rows, cols, interpolate) for g in batch.geometry]
        wy = torch.from_numpy(np.stack([p[0] for p in pairs])).to(values.device)
        wx = torch.from_numpy(np.stack([p[1] for p in pairs])).to(values.device)
        return wy[:, None] @ values.float() @ wx[:, None].transpose(-1, -2)

    def _image_probs(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class probabilities as a map: the segmentation head's, else the image's (1 x 1)."""
        if "seg_logits" in output:
            return torch.softmax(output["seg_logits"], dim=1)
        return torch.softmax(output["logits"], dim=1)[:, :, None, None]

    def _patch_outputs(self, batch: _PatchBatch) -> tuple[np.ndarray, np.ndarray]:
        layout = self.layout
        images = batch.images.to(self.device, non_blocking=True)
        output = self.forward(images)
        tissue = None
        if batch.tissue[0] is not None:
            tissue = torch.from_numpy(np.stack(batch.tissue))[:, None].to(self.device)
        parts: list[torch.Tensor] = []
        channels = layout.tile_channels
        if "cam" in channels:
            cams = output["cams"]
            if self.config.cam_normalisation == "softmax":
                cams = torch.softmax(cams, dim=1)
            elif self.config.cam_normalisation == "sigmoid":
                cams = torch.sigmoid(cams)
            cams = self._to_cells(cams, batch)
            if tissue is not None and self.config.cam_normalisation != "none":
                cams = cams * tissue
            parts.append(cams)
        if "fg" in channels:
            if "fg" in output:
                fg = output["fg"]
            else:
                fg = self.model.localize(output, tuple(images.shape[-2:]))
            fg = self._to_cells(fg.clamp(0.0, 1.0), batch, interpolate=False)
            if tissue is not None:
                fg = fg * tissue
            parts.append(fg)
        if "probs" in channels:
            parts.append(self._to_cells(self._image_probs(output), batch))
        if "mc_variance" in channels:
            parts.append(self._to_cells(self._mc_variance(images, self._image_probs), batch))
        if "tissue" in channels:
            parts.append(tissue.float())
        image_probs = torch.softmax(output["logits"], dim=1)
        return (torch.cat(parts, dim=1).float().cpu().numpy(),
                image_probs.float().cpu().numpy())



# ---------------------------------------------------------------------- the store
def _probs_array(store: MapStore, grid_shape: tuple[int, int], class_count: int):
    """The store's ``(rows, cols, classes)`` array of patch probabilities (created NaN)."""
    import zarr

    group = zarr.open_group(str(store.path), mode="r+", zarr_format=2)
    if PATCH_PROBS not in group:
        rows, cols = grid_shape
        group.create_array(PATCH_PROBS, shape=(rows, cols, class_count), dtype="float32",
                           fill_value=float("nan"), chunks=(rows, cols, class_count))
    return group[PATCH_PROBS]


def _batches(indices: list[int], sizes: dict[int, tuple[int, int]], budget: int) -> list[list[int]]:
    """Patches grouped by padded size, at most ``budget`` pixels (and one patch) per batch."""
    order = sorted(indices, key=lambda i: (sizes[i], i))
    batches: list[list[int]] = []
    for index in order:
        h, w = sizes[index]
        last = batches[-1] if batches else None
        if (last is not None and sizes[last[0]] == (h, w)
                and (len(last) + 1) * h * w <= budget):
            last.append(index)
        else:
            batches.append([index])
    return batches


# ---------------------------------------------------------------------- the job
def infer_patches(reader: SlideReader, model: WslModel, config: InferenceConfig,
                  output: MapStore, region: tuple[int, int, int, int] | None = None):
    """Infer every patch of a folder as its own image (see the module docstring).

    Called by :func:`~napari_wsl_al.core.infer.engine.infer_slide` for patch folders; same
    parameters, progress and result. ``config.tile_size`` and ``overlap`` play no part in
    the maps (a patch is one tile); ``batch_size`` patches of ``tile_size`` squared pixels
    make the pixel budget of a forward pass (at least one patch). ``tissue_threshold`` skips
    no patch: every patch gets its class.

    Returns
    -------
    InferenceResult
        ``tiles_total``/``tiles_computed`` count patches; ``patches`` holds the class of
        every finished patch, also written to ``patches_csv``; ``grid`` is None.

    Raises
    ------
    InferenceError
        A patch is larger than :data:`MAX_PATCH_SIDE` at the model's resolution, or the
        region touches no patch.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    was_training = model.training
    model.eval()
    model.to(device)
    stride = int(model.output_stride)
    mpp, level = _resolve_target(reader, model, config)
    resolution = resolve_resolution(reader, mpp=mpp, level=level)
    map_stride = map_stride_for(model, config)
    folder = _folder_geometry(reader, resolution, map_stride)
    indices = _patches_in(reader, region)
    _check_sizes(reader, indices, resolution.downsample)
    wanted = config.expanded_maps()
    gate = bool(config.tissue_gate and gated(wanted))
    classes = tuple(model.classes)
    patches_info = {
        "count": len(reader.patch_names),
        "columns": int(reader.columns),
        "rows": int(reader.rows),
        "cell_size": [int(v) for v in reader.cell_size],
        "names": list(reader.patch_names),
        "boxes": [[int(v) for v in box] for box in reader.patch_boxes],
    }
    spec = {
        "patches": patches_info,
        "resolution": {"level": resolution.level, "downsample": resolution.downsample,
                       "mpp": resolution.mpp},
        "cells": folder.cells,
        "output_stride": stride,
        "map_stride": map_stride,
        "model": model_fingerprint(model),
        "model_type": type(model).__name__,
        "classes": list(classes),
        "maps": list(wanted),
        "cam_normalisation": config.cam_normalisation,
        "mc_passes": config.mc_passes if "mc_variance" in wanted else 0,
        "dtype": config.dtype,
        "tissue_gate": "patch tissue mask" if gate else None,
        "slide": {"name": reader.name, "path": None if reader.path is None else str(reader.path),
                  "mpp": None if reader.mpp is None else list(reader.mpp)},
    }
    grid_shape = (int(reader.rows), int(reader.columns))
    cells = np.array([divmod(i, reader.columns) for i in indices], dtype=np.int64).reshape(-1, 2)
    total = len(indices)
    table = patch_table_path(output.path)

    def result(computed: int, messages: list[str], device_name: str) -> InferenceResult:
        predictions = read_patch_predictions(output.path)
        return InferenceResult(output.path, output.handles(), total, computed,
                               time.perf_counter() - started, None, device_name,
                               list(messages), predictions, table)

    if output.is_complete(spec, cells):
        predictions = read_patch_predictions(output.path)
        if len({p.index for p in predictions} & set(indices)) == total:
            if not table.exists():
                write_patch_table(table, predictions, classes)
            yield Progress(total, total, f"{total}/{total} patches (already computed)",
                           {"tiles_per_s": 0.0, "batch": 0, "computed": 0})
            model.train(was_training)
            return result(0, [], str(device))
    with torch.inference_mode():
        probe_input = torch.zeros(1, 3, config.tile_size, config.tile_size, device=device)
        with torch.autocast("cuda", dtype=torch.float16,
                            enabled=bool(config.amp and device.type == "cuda")):
            probe = model(probe_input)
    layout = _layout(model, probe, wanted, gate=gate)
    done = output.prepare(spec, layout.maps, layout.tile_channels, grid_shape, folder.cells,
                          folder.cells, folder.map_shape, folder.scale, folder.translate,
                          folder.unit, config.dtype)
    probs_array = output._guard(lambda: _probs_array(output, grid_shape, len(classes)))
    known = np.isfinite(np.asarray(probs_array[...])).all(axis=-1)
    todo = [i for i, (r, c) in zip(indices, cells) if not (done[r, c] and known[r, c])]
    finished = total - len(todo)
    runner = _PatchRunner(model, device, config, layout, folder.cells)
    if not todo:
        yield Progress(total, total, f"{total}/{total} patches (already computed)",
                       {"tiles_per_s": 0.0, "batch": 0, "computed": 0})
        model.train(was_training)
        write_patch_table(table, read_patch_predictions(output.path), classes)
        return result(0, [], str(device))

    sizes = {i: folder.patch(reader, i, stride).padded for i in todo}
    batches = _batches(todo, sizes, config.batch_size * config.tile_size ** 2)
    patch_reader = _PatchReader(reader, folder, model, stride, pin=device.type == "cuda",
                                gate=gate)

    def write(batch_cells: np.ndarray, outputs: np.ndarray, image_probs: np.ndarray) -> None:
        # The class first: a patch marked done by the maps always has its class.
        def store_probs():
            values = np.asarray(probs_array[...])
            values[batch_cells[:, 0], batch_cells[:, 1]] = image_probs
            probs_array[...] = values

        output._guard(store_probs)
        output.write_tiles(batch_cells, outputs)

    def compute(batch):
        with torch.inference_mode():
            outputs, image_probs = runner.patch_outputs(batch)
        batch_cells = np.array([divmod(i, reader.columns) for i in batch.indices],
                               dtype=np.int64).reshape(-1, 2)
        return (len(batch.indices), (batch_cells, outputs, image_probs),
                outputs.nbytes + image_probs.nbytes)

    def finish():
        # What was computed, and its rows in the table, also when cancelled.
        output.flush()
        write_patch_table(table, read_patch_predictions(output.path), classes)

    try:
        computed = yield from run_batches(
            batches, lambda executor, batch: executor.submit(patch_reader, batch), compute,
            write, finish, config, finished, total, "patches")
    finally:
        model.train(was_training)
    return result(computed, runner.messages, str(runner.device))


__all__ = ["MAX_PATCH_SIDE", "PatchPrediction", "area_weights", "bilinear_weights",
           "infer_patches", "patch_table_path", "read_patch_predictions", "resample_weights",
           "write_patch_table"]
