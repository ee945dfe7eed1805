"""Tiled whole-slide inference as a generator: prefetching reader, batched model, blended maps on disk.

:func:`infer_slide` is the one job behind the GUI worker, the CLI and the tests. It reads tiles
in a thread pool, one task per tile (the slide backends release the GIL), while the model runs
on the previous batch, hands each batch's outputs to a writer thread (which, on the CPU, also
brings them to the map grid, then stores them in :class:`MapStore`; a queue of up to
:data:`WRITE_QUEUE_BATCHES` batches or :data:`WRITE_QUEUE_BYTES`) and yields a
:class:`~napari_wsl_al.core.progress.Progress` per batch. The model's thread thus does little
but run the model. Stopping the iteration (``close()``, a napari worker's ``quit()``) stops the
reader, lets the writer finish the batches already computed and leaves a store that resumes
where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..device import resolve_device
from ..io.base import SlideReader
from ..models.base import WslModel
from ..progress import Progress
from .errors import InferenceError
from .store import MapHandle, MapSpec, MapStore
from .tiling import TileGrid, TissueLike, tile_grid

log = logging.getLogger(__name__)

#: Maps that :class:`InferenceConfig` can ask for (``"uncertainty"`` names the whole family).
#: ``seg`` is the segmentation head's class probabilities (joint models, e.g. round checkpoints).
MAP_CHOICES = ("cam", "fg", "bg", "probs", "seg", "entropy", "margin", "ovr_entropy",
               "mc_variance")

#: What ``"uncertainty"`` stands for in :attr:`InferenceConfig.maps`.
UNCERTAINTY_MAPS = ("entropy", "margin", "ovr_entropy")

_OOM_ERRORS = tuple(
    error for error in (getattr(torch, "OutOfMemoryError", None),
                        getattr(torch.cuda, "OutOfMemoryError", None)) if error is not None
)


#: Map pixel side (target pixels) used by default when the model's output stride is coarser.
FINEST_DEFAULT_MAP_STRIDE = 16

#: Largest default map pixel, in microns at the model's resolution: at least 5 map pixels
#: across a 50 µm gland, whatever resolution the model reads slides at.
LARGEST_DEFAULT_MAP_PIXEL_UM = 10.0

#: Batches of outputs that may wait for the writer thread before the model waits for it: enough
#: to ride out a blend or a pyramid update ...
WRITE_QUEUE_BATCHES = 8

#: ... as long as they hold at most this many bytes (two batches may always wait).
WRITE_QUEUE_BYTES = 64 << 20


@dataclass(frozen=True)
class InferenceConfig:
    """Parameters of a tiled slide inference (saved with the maps).

    Attributes
    ----------
    mpp : float or None
        Target resolution in microns per pixel. With neither ``mpp`` nor ``level``, the
        model's training resolution is used when both it and the slide's are known, else
        level 0.
    level : int or None
        Read this slide level as is (instead of ``mpp``).
    tile_size : int
        Tile side in target pixels; a multiple of the model's output stride and of the map
        stride.
    overlap : int
        Pixels shared by neighbouring tiles (rounded down to a multiple of the output stride
        and of the map stride).
    map_stride : int or None
        Side of a map pixel, in target pixels; None: the model's output stride, or
        :data:`FINEST_DEFAULT_MAP_STRIDE` when that is finer, halved until a map pixel is at
        most :data:`LARGEST_DEFAULT_MAP_PIXEL_UM` at the model's resolution (a model reading
        slides at 2.48 µm/px gets 4-pixel map pixels, 9.9 µm). The model's outputs are brought
        to this grid by area means when it is coarser than them and by bilinear interpolation
        when finer. For a stride-32 model the default is 16: Max-Min's foreground (made at the
        input resolution) and a joint model's segmentation keep twice the detail per side that
        32-pixel blocks would, and a 50 µm gland at 0.62 µm/px spans 5 map pixels instead of
        2.5; CAMs and class probabilities, computed at the output stride, are only smoothed.
        Such maps take four times the disk space of stride-32 maps.
    batch_size : int
        Tiles per forward pass (halved automatically on CUDA out-of-memory).
    device : str
        ``"auto"`` (cuda, then mps, then cpu), or a torch device name.
    amp : bool
        Mixed precision (float16 autocast); used on CUDA only.
    maps : tuple of str
        Maps to write: names of :data:`MAP_CHOICES`, or ``"uncertainty"`` for entropy, margin
        and one-vs-rest entropy (plus ``mc_variance`` when ``mc_passes >= 2``).
    mc_passes : int
        MC-dropout passes T for the ``mc_variance`` map (0: none).
    tissue_threshold : float
        Least tissue fraction of a processed tile (0: every tile, no tissue mask).
    prefetch : int
        Batches read ahead of the model.
    readers : int
        Reader threads.
    cam_normalisation : {"softmax", "sigmoid", "none"}
        How raw CAM scores become maps: softmax over classes at each location (a per-location
        class posterior in [0, 1], independent of the tile, hence seam-free), a per-class
        sigmoid, or the raw scores.
    dtype : {"float32", "float16"}
        Storage type of the maps and of the raw tile outputs they are blended from: with
        float16 the tile outputs are rounded to float16 before blending (the maps are the
        same whether a tile was just computed or read back from the store).
    tissue_gate : bool
        Multiply the foreground probability and the normalised CAMs by the fraction of tissue
        under each map pixel (HSV saturation above the tissue mask's threshold), so that glass
        is never foreground nor any class, whatever the model makes of it (a model trained on
        glands with white lumens may call white glass foreground). For a folder of patches,
        the fraction of the patch's own tissue mask instead, which keeps lumens as tissue.

    Notes
    -----
    Foreground normalisation. A Max-Min model scales its continuous mask to ``[0, 1]`` before
    the sigmoid: with its calibrated ``fg_range`` when the checkpoint has one, else from the
    mask's own minimum and maximum over the image it sees. So that no tile is scaled on its
    own, a slide is normalised per slide: without ``fg_range``, :func:`infer_slide` measures
    the slide's range once before the tiles, from a sample of tissue tiles (the medians of
    each tile's smallest and largest mask value, the statistic of
    :func:`~napari_wsl_al.core.models.maxmin.calibrate_foreground`), records it in the map
    store's spec (``fg_range``) and uses it for every tile. A folder of patches is normalised
    per patch: each patch is one whole image, seen by the model as in training.
    """

    mpp: float | None = None
    level: int | None = None
    tile_size: int = 512
    overlap: int = 128
    map_stride: int | None = None
    batch_size: int = 8
    device: str = "auto"
    amp: bool = True
    maps: tuple[str, ...] = ("cam", "fg", "bg", "probs", "seg", "uncertainty")
    mc_passes: int = 0
    tissue_threshold: float = 0.05
    prefetch: int = 2
    readers: int = 2
    cam_normalisation: str = "softmax"
    dtype: str = "float32"
    tissue_gate: bool = True

    def __post_init__(self):
        object.__setattr__(self, "maps", tuple(self.maps))
        if self.mpp is not None and self.level is not None:
            raise ValueError("give mpp or level, not both")
        if self.map_stride is not None and (isinstance(self.map_stride, bool)
                                            or int(self.map_stride) != self.map_stride
                                            or self.map_stride < 1):
            raise ValueError(f"map_stride must be a positive integer or None, "
                             f"got {self.map_stride!r}")
        if self.batch_size < 1 or self.prefetch < 0 or self.readers < 1:
            raise ValueError("batch_size and readers must be >= 1, prefetch >= 0")
        if self.cam_normalisation not in ("softmax", "sigmoid", "none"):
            raise ValueError(f"unknown cam_normalisation {self.cam_normalisation!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype!r}")
        unknown = set(self.maps) - set(MAP_CHOICES) - {"uncertainty"}
        if unknown:
            raise ValueError(f"unknown maps {sorted(unknown)}; choose from "
                             f"{MAP_CHOICES + ('uncertainty',)}")
        if "mc_variance" in self.maps and self.mc_passes < 2:
            raise ValueError("the mc_variance map needs mc_passes >= 2")

    def expanded_maps(self) -> tuple[str, ...]:
        """The individual maps asked for, ``"uncertainty"`` expanded, in a fixed order."""
        wanted = set(self.maps)
        if "uncertainty" in wanted:
            wanted |= set(UNCERTAINTY_MAPS)
            if self.mc_passes >= 2:
                wanted.add("mc_variance")
        return tuple(name for name in MAP_CHOICES if name in wanted)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["maps"] = list(self.maps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceConfig:
        """Inverse of :meth:`to_dict` (unknown keys refused)."""
        return cls(**{**data, "maps": tuple(data.get("maps", cls.maps))})

    def replace(self, **changes: Any) -> InferenceConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class InferenceResult:
    """What :func:`infer_slide` returns.

    Attributes
    ----------
    path : Path
        The map store.
    maps : dict of str to MapHandle
        The maps, ready for napari layers.
    tiles_total : int
        Tiles of the requested region with tissue (patches, for a folder of patches).
    tiles_computed : int
        Tiles computed by this run (the others were done before).
    seconds : float
        Wall time of this run.
    grid : TileGrid or None
        The tiles; None for a folder of patches (one tile per patch).
    device : str
        The device the model ran on at the end (after any fallback).
    warnings : list of str
        What happened on the way (out-of-memory fallbacks).
    patches : list of PatchPrediction
        For a folder of patches: the image-level class of every finished patch
        (:class:`~napari_wsl_al.core.infer.patches.PatchPrediction`); empty for a slide.
    patches_csv : Path or None
        For a folder of patches: the CSV of ``patches`` beside the maps.
    """

    path: Path
    maps: dict[str, MapHandle]
    tiles_total: int
    tiles_computed: int
    seconds: float
    grid: TileGrid | None
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    patches: list[Any] = field(default_factory=list)
    patches_csv: Path | None = None


# ---------------------------------------------------------------------- model outputs
def _to_map_size(x: torch.Tensor, n: int) -> torch.Tensor:
    """Resample ``(B, C, h, w)`` to ``(B, C, n, n)``: area mean when shrinking, else bilinear."""
    if tuple(x.shape[-2:]) == (n, n):
        return x
    if x.shape[-2] >= n and x.shape[-1] >= n:
        return F.adaptive_avg_pool2d(x, n)
    return F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class _Layout:
    """Channels of the raw tile outputs and the maps derived from them."""

    tile_channels: dict[str, tuple[int, int]]
    maps: list[MapSpec]
    class_names: tuple[str, ...]
    prob_names: tuple[str, ...]
    has_fg: bool
    has_seg: bool

    @property
    def channel_total(self) -> int:
        return max(stop for _, stop in self.tile_channels.values())


#: Maps multiplied by the tissue fraction under each map pixel when the tissue gate is on.
GATED_MAPS = ("cam", "fg", "bg", *UNCERTAINTY_MAPS, "mc_variance")


def gated(wanted) -> bool:
    """Whether any of the maps ``wanted`` is gated by tissue (:data:`GATED_MAPS`)."""
    return bool(set(GATED_MAPS) & set(wanted))


def _layout(model: WslModel, probe: dict[str, torch.Tensor], wanted: tuple[str, ...],
            gate: bool = False) -> _Layout:
    classes = tuple(model.classes) or tuple(f"class_{i}" for i in range(probe["logits"].shape[1]))
    has_seg = "seg_logits" in probe
    if has_seg:
        k = probe["seg_logits"].shape[1]
        seg_names = tuple(getattr(model, "seg_classes", ()) or ())
        prob_names = seg_names if len(seg_names) == k else tuple(f"seg_{i}" for i in range(k))
    else:
        prob_names = classes
    channels: dict[str, tuple[int, int]] = {}
    cursor = 0

    def add(key: str, count: int) -> None:
        nonlocal cursor
        channels[key] = (cursor, cursor + count)
        cursor += count

    if "cam" in wanted:
        add("cam", len(classes))
    if "fg" in wanted or "bg" in wanted:
        add("fg", 1)
    if not has_seg:
        wanted = tuple(name for name in wanted if name != "seg")
    if set(wanted) & {"probs", "seg", "entropy", "margin", "ovr_entropy"}:
        add("probs", len(prob_names))
    if "mc_variance" in wanted:
        add("mc_variance", 1)
    if gate and set(wanted) & {*UNCERTAINTY_MAPS, "mc_variance"}:
        add("tissue", 1)  # the uncertainty maps are derived after blending: gated then
    maps = []
    for name in wanted:
        if name == "cam":
            maps.append(MapSpec("cam", classes, "cam"))
        elif name in ("fg", "bg"):
            maps.append(MapSpec(name, None, name))
        elif name == "probs":
            maps.append(MapSpec("probs", prob_names, "probs"))
        elif name == "seg":
            maps.append(MapSpec("seg", prob_names, "seg"))
        elif name == "ovr_entropy":
            maps.append(MapSpec("uncertainty/ovr_entropy", prob_names, "uncertainty"))
            maps.append(MapSpec("uncertainty/ovr_entropy_max", None, "uncertainty"))
        else:
            maps.append(MapSpec(f"uncertainty/{name}", None, "uncertainty"))
    return _Layout(channels, maps, classes, prob_names, "fg" in probe, has_seg)


def model_fingerprint(model: WslModel) -> str:
    """A short hash of a model's type, classes, weights and foreground class (a store's maps
    belong to one model)."""
    digest = hashlib.sha1()
    digest.update(type(model).__qualname__.encode())
    digest.update(repr((tuple(model.classes), model.output_stride, model.mean, model.std)).encode())
    if getattr(model, "fg_index", None) is not None:  # the same weights, another foreground
        digest.update(f"fg_class {model.fg_index}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64]
        digest.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _Forward:
    """A micro-batch's model outputs, before they become raw tile outputs (see
    :meth:`_ModelRunner.run`)."""

    output: dict[str, torch.Tensor]
    input_size: tuple[int, int]
    tissue: torch.Tensor | None
    mc_variance: torch.Tensor | None


class _ModelRunner:
    """Runs the model on batches: AMP on CUDA, out-of-memory recovery, outputs at map size."""

    def __init__(self, model: WslModel, device: torch.device, config: InferenceConfig,
                 layout: _Layout | None, map_size: int, tile_size: int):
        self.model = model
        self.device = device
        self.config = config
        self.layout = layout
        self.map_size = map_size
        self.tile_size = tile_size
        self.micro_batch = config.batch_size
        self.messages: list[str] = []

    @property
    def autocast(self) -> bool:
        return bool(self.config.amp and self.device.type == "cuda")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
            output = self.model(images)
        return {key: value.float() for key, value in output.items()}

    def _probs(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        n = self.map_size
        if "seg_logits" in output:
            return _to_map_size(torch.softmax(output["seg_logits"], dim=1), n)
        probs = torch.softmax(output["logits"], dim=1)
        return probs[:, :, None, None].expand(-1, -1, n, n)

    def tile_outputs(self, images: torch.Tensor, tissue: torch.Tensor | None = None) -> np.ndarray:
        """``(B, channels, n, n)`` float32 raw tile outputs of a batch (with OOM recovery).

        ``tissue`` is the ``(B, 1, n, n)`` tissue fraction under each map pixel, when the
        foreground is gated by tissue.
        """
        return self.finish(self.run(images, tissue))

    def run(self, images: torch.Tensor, tissue: torch.Tensor | None = None) -> list[Any]:
        """The model's part of :meth:`tile_outputs`: forward passes, with OOM recovery.

        Returns what :meth:`finish` turns into the raw tile outputs. On the CPU that is the
        model's outputs, so that resampling them to the map grid, normalising and copying
        (a tenth of a small model's time) can run in another thread than the model's; on an
        accelerator they are finished here, where an out-of-memory error can be recovered.
        """
        parts, start = [], 0
        while start < images.shape[0]:
            chunk = images[start : start + self.micro_batch]
            chunk_tissue = None if tissue is None else tissue[start : start + self.micro_batch]
            try:
                part = self._forward(chunk, chunk_tissue)
                if self.device.type != "cpu":
                    part = self._finish(part)
            except _OOM_ERRORS as error:
                self._recover_from_oom(error)
                continue
            parts.append(part)
            start += chunk.shape[0]
        return parts

    def finish(self, parts: list[Any]) -> np.ndarray:
        """``(B, channels, n, n)`` float32 raw tile outputs from what :meth:`run` returned
        (from any thread; the model is not called)."""
        with torch.inference_mode():
            return np.concatenate([part if isinstance(part, np.ndarray) else self._finish(part)
                                   for part in parts], axis=0)

    def _recover_from_oom(self, error: BaseException) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.micro_batch > 1:
            self.micro_batch = max(1, self.micro_batch // 2)
            message = f"out of memory on {self.device}; batch size reduced to {self.micro_batch}"
        elif self.device.type != "cpu":
            self.device = torch.device("cpu")
            self.model.to(self.device)
            self.micro_batch = self.config.batch_size
            message = "out of memory even with one tile per batch; continuing on the CPU"
        else:
            raise error
        self.messages.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _forward(self, images: torch.Tensor, tissue: torch.Tensor | None) -> _Forward:
        images = images.to(self.device, non_blocking=True)
        output = self.forward(images)
        variance = (self._mc_variance(images) if "mc_variance" in self.layout.tile_channels
                    else None)
        return _Forward(output, tuple(images.shape[-2:]), tissue, variance)

    def _finish(self, part: _Forward) -> np.ndarray:
        layout, n = self.layout, self.map_size
        output, tissue = part.output, part.tissue
        parts: list[torch.Tensor] = []
        channels = layout.tile_channels
        if "cam" in channels:
            cams = _to_map_size(output["cams"], n)
            if self.config.cam_normalisation == "softmax":
                cams = torch.softmax(cams, dim=1)
            elif self.config.cam_normalisation == "sigmoid":
                cams = torch.sigmoid(cams)
            if tissue is not None and self.config.cam_normalisation != "none":
                cams = cams * tissue.to(cams.device)
            parts.append(cams)
        if "fg" in channels:
            if "fg" in output:
                fg = _to_map_size(output["fg"], n)
            else:
                fg = _to_map_size(self.model.localize(output, part.input_size), n)
            fg = fg.clamp(0.0, 1.0)
            if tissue is not None:
                fg = fg * tissue.to(fg.device)
            parts.append(fg)
        if "probs" in channels:
            parts.append(self._probs(output))
        if part.mc_variance is not None:
            parts.append(part.mc_variance)
        if "tissue" in channels:
            parts.append(tissue.to(parts[0].device).float())
        return torch.cat(parts, dim=1).float().cpu().numpy()

    def _mc_variance(self, images: torch.Tensor, probs_of=None) -> torch.Tensor:
        """Variance of the class probabilities over T dropout passes, averaged over classes.

        ``probs_of`` turns a forward pass's output into probabilities (:meth:`_probs` by
        default)."""
        from ..models.backbones import enable_mc_dropout

        probs_of = probs_of or self._probs
        enable_mc_dropout(self.model)
        try:
            passes = torch.stack([probs_of(self.forward(images))
                                  for _ in range(self.config.mc_passes)])
        finally:
            self.model.eval()
        return passes.var(dim=0, unbiased=False).mean(dim=1, keepdim=True)


# ---------------------------------------------------------------------- reading tiles
def _tissue_table(saturation_threshold: float) -> np.ndarray:
    """``(256 * 256,)`` float32: 1 where a pixel whose largest and smallest RGB values are
    ``high`` and ``low`` (index ``high * 256 + low``) counts as tissue.

    Tissue is an HSV saturation ``(high - low) / max(high, 1)`` above the threshold, computed
    here once for every pair with the same float32 operations as per pixel, so that looking it
    up gives exactly the per-pixel result.
    """
    values = torch.arange(256, dtype=torch.float32)
    high, low = values[:, None].expand(256, 256), values[None, :].expand(256, 256)
    saturation = (high - low) / high.clamp_min(1.0)
    return (saturation > saturation_threshold).float().reshape(-1).numpy()


class _TileReader:
    """Reads and normalises batches of tiles (called from the reader threads).

    :meth:`submit` spreads a batch's tiles over the reader threads, so that even the first
    batch, which nothing overlaps, is read by all of them; :meth:`__call__` reads one batch in
    the calling thread.
    """

    def __init__(self, reader: SlideReader, grid: TileGrid, model: WslModel, pin: bool,
                 saturation_threshold: float | None = None, map_size: int = 1,
                 colour_source=None):
        self.reader = reader
        self.grid = grid
        self.model = model
        self.pin = pin
        self.colour_source = colour_source
        self.saturation_threshold = saturation_threshold
        self.map_size = map_size
        self._tissue_table = (None if saturation_threshold is None
                              else _tissue_table(saturation_threshold))

    def tissue_fraction(self, pixels: np.ndarray) -> torch.Tensor:
        """``(B, 1, n, n)`` fraction of tissue pixels (saturation above threshold) per map pixel."""
        red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        high = np.maximum(np.maximum(red, green), blue)
        low = np.minimum(np.minimum(red, green), blue)
        index = high.astype(np.uint16) << 8
        index |= low
        tissue = torch.from_numpy(self._tissue_table[index])[:, None]
        return F.adaptive_avg_pool2d(tissue, self.map_size)

    def read_tile(self, row: int, col: int) -> np.ndarray:
        grid, res = self.grid, self.grid.resolution
        x, y = grid.position(row, col)
        size = grid.tile_size
        if res.level_scale == 1.0:
            return self.reader.read_level(res.level, x, y, size, size)
        f = res.level_scale
        window = self.reader.read_level(res.level, int(round(x * f)), int(round(y * f)),
                                        int(math.ceil(size * f)), int(math.ceil(size * f)))
        tensor = torch.from_numpy(window).permute(2, 0, 1)[None].float()
        tensor = F.interpolate(tensor, size=(size, size), mode="area")
        return tensor[0].round_().clamp_(0, 255).byte().permute(1, 2, 0).numpy()

    def _read_one(self, row: int, col: int) -> tuple[np.ndarray, torch.Tensor | None]:
        """One tile's pixels and, when gated, its ``(1, 1, n, n)`` tissue fraction."""
        with torch.inference_mode():
            pixels = self.read_tile(row, col)
            tissue = (None if self.saturation_threshold is None
                      else self.tissue_fraction(pixels[None]))
        return pixels, tissue

    def _assemble(self, tiles: np.ndarray, pixels: list[np.ndarray],
                  tissue: list[torch.Tensor | None]) -> tuple[np.ndarray, torch.Tensor,
                                                             torch.Tensor | None]:
        """The batch from its tiles: normalised images (pinned for CUDA), tissue fractions."""
        with torch.inference_mode():
            images = self.model.normalize(torch.from_numpy(np.stack(pixels)),
                                          colour_source=self.colour_source)
            if self.pin:
                images = images.pin_memory()
            fractions = None if self.saturation_threshold is None else torch.cat(tissue)
        return tiles, images, fractions

    def __call__(self, tiles: np.ndarray) -> tuple[np.ndarray, torch.Tensor,
                                                   torch.Tensor | None]:
        read = [self._read_one(int(r), int(c)) for r, c in tiles]
        return self._assemble(tiles, [p for p, _ in read], [t for _, t in read])

    def submit(self, pool: ThreadPoolExecutor, tiles: np.ndarray) -> _BatchRead:
        """Read a batch on ``pool``, one task per tile; its :meth:`_BatchRead.result` gives
        what :meth:`__call__` returns.

        The task that reads the batch's last tile assembles it (stacking, normalisation), so
        no reader thread ever waits for another.
        """
        return _BatchRead(self, pool, tiles)


class _BatchRead:
    """A batch being read tile by tile (see :meth:`_TileReader.submit`).

    Each task of the pool reads the next tile that no one has started; so does the thread
    waiting for the batch (:meth:`result`), which would otherwise sit idle: the first batch,
    which nothing overlaps, is read by every thread at hand.
    """

    def __init__(self, tile_reader: _TileReader, pool: ThreadPoolExecutor, tiles: np.ndarray):
        self.tile_reader = tile_reader
        self.tiles = tiles
        self.future: Future = Future()
        self.pixels: list[np.ndarray | None] = [None] * len(tiles)
        self.tissue: list[torch.Tensor | None] = [None] * len(tiles)
        self.started = 0
        self.left = len(tiles)
        self.lock = threading.Lock()
        for _ in range(len(tiles)):
            pool.submit(self._read_next)

    def result(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        """The batch, once read; the calling thread reads the tiles no one has started."""
        while not self.future.done() and self._read_next():
            pass
        return self.future.result()

    def cancel(self) -> None:
        """Stop: tiles not started are not read (the batch never completes)."""
        self.future.cancel()

    def _read_next(self) -> bool:
        """Read the next tile no one has started; False when there was none."""
        with self.lock:
            if self.future.done() or self.started == len(self.tiles):
                return False  # all started, cancelled, or another tile failed
            index = self.started
            self.started += 1
        try:
            row, col = self.tiles[index]
            pixels, tissue = self.tile_reader._read_one(int(row), int(col))
            with self.lock:
                self.pixels[index], self.tissue[index] = pixels, tissue
                self.left -= 1
                last = self.left == 0
            if last:
                self._resolve(result=self.tile_reader._assemble(self.tiles, self.pixels,
                                                                self.tissue))
        except BaseException as error:  # noqa: BLE001 - handed to the loop, which raises it
            self._resolve(error=error)
        return True

    def _resolve(self, result=None, error: BaseException | None = None) -> None:
        try:
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)
        except InvalidStateError:  # cancelled by the loop, or another tile failed first
            pass


# ---------------------------------------------------------------------- the job
def _nbytes(parts: list[Any]) -> int:
    """Bytes held by what :meth:`_ModelRunner.run` returned."""
    total = 0
    for part in parts:
        arrays = [part] if isinstance(part, np.ndarray) else [
            *part.output.values(), part.tissue, part.mc_variance]
        total += sum(int(array.nbytes) for array in arrays if array is not None)
    return total


def _finish_and_write(runner: _ModelRunner, output: MapStore, tiles: np.ndarray,
                      forwards: list[Any]) -> None:
    """(Writer thread) a batch's raw tile outputs from the model's, into the store."""
    output.write_tiles(tiles, runner.finish(forwards))


def is_patch_folder(reader: SlideReader) -> bool:
    """Whether ``reader`` is a folder of patches (a mosaic of separate images)."""
    return hasattr(reader, "patch_boxes") and hasattr(reader, "read_patch")


def _resolve_target(reader: SlideReader, model: WslModel,
                    config: InferenceConfig) -> tuple[float | None, int | None]:
    if config.mpp is not None or config.level is not None:
        return config.mpp, config.level
    if model.mpp is not None and reader.mpp is not None:
        return float(model.mpp), None
    return None, 0


#: Tiles sampled over a slide's tissue to set its foreground range (see :func:`infer_slide`).
FG_RANGE_SAMPLE_TILES = 24

#: Least tissue fraction of a tile sampled for the foreground range.
FG_RANGE_TISSUE_FRACTION = 0.5


def needs_slide_fg_range(model: WslModel) -> bool:
    """Whether a slide's foreground range must be measured: a model with ``raw_mask`` (Max-Min,
    the CAM models) without a calibrated ``fg_range``."""
    return callable(getattr(model, "raw_mask", None)) and getattr(model, "fg_range", 0) is None


#: Spec entries computed from the slide itself (a sample of its tiles), in the order they are
#: added: a store keeps them, so a resumed or reused run does not read the sample again.
SLIDE_SPEC_VALUES = ("colour_source", "fg_range")


def _stored_slide_value(output: MapStore, spec: dict[str, Any], key: str):
    """The slide value ``key`` kept in the store when the rest of its spec, up to ``key``,
    matches ``spec``; None otherwise."""
    info = output.read_info()
    stored = dict((info or {}).get("spec") or {})
    kept = stored.pop(key, None)
    later = SLIDE_SPEC_VALUES[SLIDE_SPEC_VALUES.index(key) + 1:]
    for name in later:
        stored.pop(name, None)
    return kept if kept is not None and stored == spec else None


def _sample_tiles(reader: SlideReader, config: InferenceConfig, grid: TileGrid, region,
                  tissue, mpp, level, overlap: int) -> tuple[TileGrid, np.ndarray]:
    """Up to :data:`FG_RANGE_SAMPLE_TILES` tiles spread evenly, in raster order, over the
    whole slide's tiles holding at least :data:`FG_RANGE_TISSUE_FRACTION` tissue (whatever the
    region asked for, so that every region of a slide gets the same statistics); the tiles of
    the run when no tile holds that much. Returns their grid and ``(row, col)`` pairs."""
    from .errors import NoTissueError

    sample_grid = grid
    if region is not None or tissue is not None:
        try:
            sample_grid = tile_grid(reader, config.tile_size, overlap, mpp=mpp, level=level,
                                    tissue=tissue, tissue_threshold=FG_RANGE_TISSUE_FRACTION)
        except NoTissueError:
            sample_grid = grid
    count = min(FG_RANGE_SAMPLE_TILES, len(sample_grid))
    picks = np.unique(np.linspace(0, len(sample_grid) - 1, count).round().astype(np.int64))
    return sample_grid, sample_grid.tiles[picks]


class _SlideSample:
    """The tiles of :func:`_sample_tiles`, read at the model's resolution once, on first use,
    for every slide statistic that needs them (colour statistics, foreground range)."""

    def __init__(self, reader: SlideReader, model: WslModel, config: InferenceConfig,
                 grid: TileGrid, region, tissue, mpp, level, overlap: int):
        sample_grid, self.tiles = _sample_tiles(reader, config, grid, region, tissue, mpp,
                                                level, overlap)
        self._tile_reader = _TileReader(reader, sample_grid, model, pin=False)
        self._pixels: list[np.ndarray] | None = None

    @property
    def pixels(self) -> list[np.ndarray]:
        """The sample tiles' ``(size, size, 3)`` uint8 pixels."""
        if self._pixels is None:
            self._pixels = [self._tile_reader.read_tile(int(row), int(col))
                            for row, col in self.tiles]
        return self._pixels


def _slide_colour_source(sample: _SlideSample) -> list[float] | None:
    """The slide's tissue colour statistics (six numbers, as a colour target) over the
    sample tiles; None without tissue."""
    from ..models.colour import pooled_tissue_stats

    stats = pooled_tissue_stats(sample.pixels)
    return None if stats is None else list(stats)


def _slide_fg_range(sample: _SlideSample, model: WslModel, config: InferenceConfig,
                    device: torch.device, colour_source=None) -> list[float]:
    """``[low, high]``: medians over the sample tiles of each tile's smallest and largest
    continuous mask value (``raw_mask``), the statistic of
    :func:`~napari_wsl_al.core.models.maxmin.calibrate_foreground`; the tiles are normalised
    as the run normalises them (``colour_source``)."""
    lows: list[float] = []
    highs: list[float] = []
    pixels = sample.pixels
    with torch.inference_mode():
        for start in range(0, len(pixels), config.batch_size):
            batch = torch.from_numpy(np.stack(pixels[start : start + config.batch_size]))
            images = model.normalize(batch, colour_source=colour_source)
            with torch.autocast("cuda", dtype=torch.float16,
                                enabled=bool(config.amp and device.type == "cuda")):
                _, _, mask = model.raw_mask(images.to(device))
            mask = mask.float().flatten(1)
            lows.extend(mask.amin(dim=1).tolist())
            highs.extend(mask.amax(dim=1).tolist())
    low, high = float(np.median(lows)), float(np.median(highs))
    if not high > low:
        high = low + 1e-6
    return [low, high]


def map_stride_for(model: WslModel, config: InferenceConfig) -> int:
    """Side of a map pixel in target pixels (see ``InferenceConfig.map_stride``)."""
    if config.map_stride is not None:
        return int(config.map_stride)
    stride = min(int(model.output_stride), FINEST_DEFAULT_MAP_STRIDE)
    mpp = getattr(model, "mpp", None)
    if mpp:  # halving keeps the stride a divisor of the output stride, hence of tile sizes
        while stride > 1 and stride * float(mpp) > LARGEST_DEFAULT_MAP_PIXEL_UM:
            stride //= 2
    return stride


def _geometry(reader: SlideReader, grid: TileGrid, stride: int):
    factor = stride * grid.resolution.downsample
    map_shape = (max(1, math.ceil(grid.height / stride)), max(1, math.ceil(grid.width / stride)))
    if reader.mpp is None:
        unit_x, unit_y, unit = 1.0, 1.0, None
    else:
        unit_x, unit_y, unit = reader.mpp[0], reader.mpp[1], "micrometer"
    scale = (factor * unit_y, factor * unit_x)
    translate = ((factor - 1) / 2 * unit_y, (factor - 1) / 2 * unit_x)
    return map_shape, scale, translate, unit


def infer_slide(
    reader: SlideReader,
    model: WslModel,
    config: InferenceConfig,
    output: MapStore,
    region: tuple[int, int, int, int] | None = None,
    tissue: TissueLike | None = None,
):
    """Run a model over a slide's tissue, tile by tile, writing blended maps to ``output``.

    A folder of patches (a reader with ``patch_boxes``, such as
    :class:`~napari_wsl_al.core.io.image_backend.PatchFolderReader`) is inferred patch by
    patch instead: each patch is one image, whose maps fill its own cell of the mosaic and
    whose image-level class goes to the result and to ``maps/<slide>.patches.csv`` (see
    :func:`~napari_wsl_al.core.infer.patches.infer_patches`).

    The foreground of a Max-Min model without a calibrated range is normalised once per
    slide, from a sample of tissue tiles, never per tile (see :class:`InferenceConfig`).

    Parameters
    ----------
    reader : SlideReader
        The slide.
    model : WslModel
        The model; put in eval mode and moved to the device (it stays there; on a CUDA
        out-of-memory with one tile per batch it is moved to the CPU).
    config : InferenceConfig
        Resolution, tiles, batches, device, maps.
    output : MapStore
        Where the maps go. Tiles already done there with the same settings are skipped
        (resume); maps computed with other settings are replaced.
    region : (x, y, w, h), optional
        Level-0 box to process (the current view, a drawn rectangle); whole tissue by default.
    tissue : TissueMask, optional
        Tissue mask; computed with :func:`~napari_wsl_al.core.data.tissue.tissue_mask` when
        ``config.tissue_threshold > 0`` and none is given.

    Yields
    ------
    Progress
        After every batch: ``step`` tiles done of ``total``; ``metrics`` has ``tiles_per_s``,
        ``batch`` and ``computed`` (tiles computed by this run).

    Returns
    -------
    InferenceResult
        With the map handles (via ``StopIteration.value``, or from
        :func:`~napari_wsl_al.core.progress.run_to_end`).

    Raises
    ------
    NoTissueError
        No tile of the slide or region holds enough tissue.
    DiskFullError
        The disk filled up; finished tiles are kept and a new run resumes.
    MapStoreError
        Another run kept writing the same store for as long as this one waited for it
        (``output.lock_timeout`` seconds, yielding progress records that say so).
    """
    if is_patch_folder(reader):
        from .patches import infer_patches

        job = infer_patches(reader, model, config, output, region=region)
    else:
        job = _infer_tiles(reader, model, config, output, region, tissue)
    # One run writes a store at a time: the lock covers prepare to the last flush.
    return (yield from output.writing(job, reader.name))


def run_batches(batches: list, submit_read: Callable, compute: Callable, write: Callable,
                finish: Callable[[], None], config: InferenceConfig, finished: int, total: int,
                unit: str):
    """The read -> model -> write pipeline of slides and patch folders (a generator).

    ``submit_read(executor, batch)`` starts reading a batch in the reader threads (up to
    ``config.prefetch`` batches ahead) and returns something with ``result()`` and
    ``cancel()``; ``compute(read)`` runs the model on the calling thread and returns
    ``(items, write_arguments, bytes)``; ``write(*write_arguments)`` runs on the one writer
    thread, with up to :data:`WRITE_QUEUE_BATCHES` batches or :data:`WRITE_QUEUE_BYTES` queued;
    ``finish()`` runs after the last write, and also when the job is cancelled or fails (after
    the writes of computed batches; its errors are then logged, not raised over the original).

    Yields a :class:`Progress` after every batch (``finished`` items were done before) and
    returns the number of items computed.
    """
    reading = ThreadPoolExecutor(max_workers=config.readers, thread_name_prefix="wslal-read")
    writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wslal-write")
    pending_reads: deque[Any] = deque()
    pending_writes: deque[Future] = deque()
    queued_bytes: deque[int] = deque()
    computed = 0
    next_batch = 0
    loop_started = time.perf_counter()
    completed = False
    try:
        while next_batch < len(batches) and len(pending_reads) <= config.prefetch:
            pending_reads.append(submit_read(reading, batches[next_batch]))
            next_batch += 1
        for index in range(len(batches)):
            read = pending_reads.popleft().result()
            if next_batch < len(batches):
                pending_reads.append(submit_read(reading, batches[next_batch]))
                next_batch += 1
            items, arguments, size = compute(read)
            pending_writes.append(writing.submit(write, *arguments))
            queued_bytes.append(size)
            while pending_writes and (
                    len(pending_writes) > WRITE_QUEUE_BATCHES or pending_writes[0].done()
                    or (len(pending_writes) > 2 and sum(queued_bytes) > WRITE_QUEUE_BYTES)):
                queued_bytes.popleft()
                pending_writes.popleft().result()
            computed += items
            elapsed = time.perf_counter() - loop_started
            yield Progress(
                finished + computed, total, f"{finished + computed}/{total} {unit}",
                {"tiles_per_s": computed / max(elapsed, 1e-9), "batch": index + 1,
                 "computed": computed},
            )
        while pending_writes:
            pending_writes.popleft().result()
        finish()
        completed = True
    finally:
        for future in pending_reads:
            future.cancel()
        reading.shutdown(wait=True, cancel_futures=True)
        if not completed:
            # Cancelled or failed: finish the writes of computed batches, keep the store sane.
            for future in pending_writes:
                try:
                    future.result()
                except Exception as error:  # already failing or closing: log, don't mask
                    log.warning("while stopping inference: %s", error)
            try:
                finish()
            except Exception as error:  # the original error (if any) matters more
                log.warning("while stopping inference: %s", error)
        writing.shutdown(wait=True)
    return computed


def _infer_tiles(reader: SlideReader, model: WslModel, config: InferenceConfig,
                 output: MapStore, region: tuple[int, int, int, int] | None,
                 tissue: TissueLike | None):
    """:func:`infer_slide` on a slide: overlapping tiles blended into the maps."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    was_training = model.training
    model.eval()
    model.to(device)
    stride = int(model.output_stride)
    if config.tile_size % stride:
        raise InferenceError(f"the tile size {config.tile_size} is not a multiple of the "
                             f"model's output stride {stride}")
    map_stride = map_stride_for(model, config)
    if config.tile_size % map_stride:
        raise InferenceError(f"the tile size {config.tile_size} is not a multiple of the map "
                             f"stride {map_stride}")
    unit = math.lcm(stride, map_stride)
    overlap = (config.overlap // unit) * unit
    if 2 * overlap >= config.tile_size:
        raise InferenceError(f"overlap {config.overlap} must be less than half the tile size")
    mpp, level = _resolve_target(reader, model, config)
    if tissue is None and config.tissue_threshold > 0:
        from ..data.tissue import tissue_mask

        tissue = tissue_mask(reader)
    grid = tile_grid(reader, config.tile_size, overlap, mpp=mpp, level=level, region=region,
                     tissue=tissue, tissue_threshold=config.tissue_threshold)
    saturation_threshold = None
    if config.tissue_gate and gated(config.expanded_maps()):
        if tissue is None:
            from ..data.tissue import tissue_mask

            tissue = tissue_mask(reader)
        saturation_threshold = float(getattr(tissue, "threshold", 0.05))
    map_size = config.tile_size // map_stride
    wanted = config.expanded_maps()
    map_shape, scale, translate, unit = _geometry(reader, grid, map_stride)
    spec = {
        "grid": grid.describe(),
        "output_stride": stride,
        "map_stride": map_stride,
        "model": model_fingerprint(model),
        "model_type": type(model).__name__,
        "maps": list(wanted),
        "cam_normalisation": config.cam_normalisation,
        "mc_passes": config.mc_passes if "mc_variance" in wanted else 0,
        "dtype": config.dtype,
        "tissue_gate": saturation_threshold,
        "slide": {"name": reader.name, "path": None if reader.path is None else str(reader.path),
                  "mpp": None if reader.mpp is None else list(reader.mpp)},
    }
    sample = None  # the slide's sample tiles, read once when a statistic needs them
    if getattr(model, "colour_target", None) is not None:
        # One set of colour statistics for the whole slide (every tile is moved from them to
        # the model's target), kept with the maps, like the foreground range below.
        spec["colour_source"] = _stored_slide_value(output, spec, "colour_source")
        if spec["colour_source"] is None:
            sample = _SlideSample(reader, model, config, grid, region, tissue, mpp, level,
                                  overlap)
            spec["colour_source"] = _slide_colour_source(sample)
    if needs_slide_fg_range(model):
        # One foreground range for the whole slide, kept with the maps (a resumed run and a
        # run over another region of the slide use the same one).
        spec["fg_range"] = _stored_slide_value(output, spec, "fg_range")
        if spec["fg_range"] is None:
            sample = sample or _SlideSample(reader, model, config, grid, region, tissue, mpp,
                                            level, overlap)
            spec["fg_range"] = _slide_fg_range(sample, model, config, device,
                                               colour_source=spec.get("colour_source"))
    total = len(grid)
    if output.is_complete(spec, grid.tiles):
        # Finished maps reopen without running the model at all.
        yield Progress(total, total, f"{total}/{total} tiles (already computed)",
                       {"tiles_per_s": 0.0, "batch": 0, "computed": 0})
        model.train(was_training)
        return InferenceResult(output.path, output.handles(), total, 0,
                               time.perf_counter() - started, grid, str(device))
    with torch.inference_mode():
        probe_input = torch.zeros(1, 3, config.tile_size, config.tile_size, device=device)
        with torch.autocast("cuda", dtype=torch.float16,
                            enabled=bool(config.amp and device.type == "cuda")):
            probe = model(probe_input)
    layout = _layout(model, probe, wanted, gate=saturation_threshold is not None)
    done = output.prepare(spec, layout.maps, layout.tile_channels, (grid.rows, grid.cols),
                          map_size, (config.tile_size - overlap) // map_stride, map_shape, scale,
                          translate, unit, config.dtype)
    todo = np.array([t for t in grid.tiles if not done[t[0], t[1]]], dtype=np.int64).reshape(-1, 2)
    finished = total - len(todo)
    runner = _ModelRunner(model, device, config, layout, map_size, config.tile_size)
    if len(todo) == 0:
        yield Progress(total, total, f"{total}/{total} tiles (already computed)",
                       {"tiles_per_s": 0.0, "batch": 0, "computed": 0})
        model.train(was_training)
        return InferenceResult(output.path, output.handles(), total, 0,
                               time.perf_counter() - started, grid, str(device))

    batches = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    tile_reader = _TileReader(reader, grid, model, pin=device.type == "cuda",
                              saturation_threshold=saturation_threshold, map_size=map_size,
                              colour_source=spec.get("colour_source"))
    own_fg_range = getattr(model, "fg_range", None)
    if spec.get("fg_range") is not None:
        model.fg_range = tuple(spec["fg_range"])

    def compute(read):
        tiles, images, tissue_fraction = read
        with torch.inference_mode():
            forwards = runner.run(images, tissue_fraction)
        return len(tiles), (runner, output, tiles, forwards), _nbytes(forwards)

    try:
        computed = yield from run_batches(
            batches, tile_reader.submit, compute, _finish_and_write, output.flush,
            config, finished, total, "tiles")
    finally:
        if spec.get("fg_range") is not None:
            model.fg_range = own_fg_range
        model.train(was_training)
    return InferenceResult(output.path, output.handles(), total, computed,
                           time.perf_counter() - started, grid, str(runner.device),
                           list(runner.messages))


__all__ = [
    "MAP_CHOICES",
    "InferenceConfig",
    "InferenceResult",
    "infer_slide",
    "model_fingerprint",
]
