"""Colour normalisation of H&E images (Reinhard et al. 2001, in CIE L*a*b*).

Each image's tissue (pixels darker than glass, L* < :data:`TISSUE_MAX_L`) is given the mean
and spread of L*, a* and b* of a target, the average of the training images: the stain of a
lab, a scanner or a patient stops being a cue the model can learn. A model trained this way
carries its target (``ModelConfig.colour_target``) and normalises every image it is given the
same way (:meth:`~napari_wsl_al.core.models.base.WslModel.normalize`).

The conversions are sRGB (D65) to CIE L*a*b* and back, as ``skimage.color`` computes them,
in torch, so that training, inference and active learning share one implementation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
import torch

#: Pixels with L* at or above this are glass (or background), not tissue.
TISSUE_MAX_L = 88.0

#: Below this many tissue pixels, an image's statistics are taken over all its pixels.
MIN_TISSUE_PIXELS = 100

#: sRGB (linear) to XYZ, D65, and the D65 white point (those of ``skimage.color``).
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_EPSILON = 0.008856  # (6/29)^3
_KAPPA = 7.787  # (29/6)^2 / 3


def _batch_of(image: np.ndarray) -> torch.Tensor:
    """An ``(H, W, 3)`` image as a ``(1, 3, H, W)`` float64 tensor of 0-255 values (a copy)."""
    return torch.from_numpy(np.array(image, dtype=np.float64)).permute(2, 0, 1)[None]


def _working(x: torch.Tensor) -> torch.Tensor:
    """float32 stays float32 (tiles during inference); anything else becomes float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float64)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` sRGB in ``[0, 1]`` to L*a*b* (L* in ``[0, 100]``), in the input's
    float precision."""
    x = _working(rgb)
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(x.device, x.dtype), linear)
    xyz = xyz / _WHITE.to(x.device, x.dtype).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPSILON, xyz.clamp(min=0) ** (1.0 / 3.0), _KAPPA * xyz + 16.0 / 116.0)
    lightness = 116.0 * f[:, 1] - 16.0
    a = 500.0 * (f[:, 0] - f[:, 1])
    b = 200.0 * (f[:, 1] - f[:, 2])
    return torch.stack([lightness, a, b], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`, clipped to ``[0, 1]``."""
    lab = _working(lab)
    fy = (lab[:, 0] + 16.0) / 116.0
    fx = lab[:, 1] / 500.0 + fy
    fz = fy - lab[:, 2] / 200.0
    f = torch.stack([fx, fy, fz], dim=1)
    xyz = torch.where(f**3 > _EPSILON, f**3, (f - 16.0 / 116.0) / _KAPPA)
    xyz = xyz.clamp(min=0) * _WHITE.to(lab.device, lab.dtype).view(1, 3, 1, 1)
    linear = torch.einsum("ij,bjhw->bihw", _XYZ_TO_RGB.to(lab.device, lab.dtype), xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0) ** (1.0 / 2.4) - 0.055,
                      12.92 * linear)
    return rgb.clamp(0.0, 1.0)


def tissue_stats(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation ``(B, 3)`` of L*, a*, b* over each image's tissue (all its
    pixels when it has fewer than :data:`MIN_TISSUE_PIXELS` tissue pixels)."""
    tissue = lab[:, :1] < TISSUE_MAX_L  # (B, 1, H, W)
    few = tissue.flatten(1).sum(dim=1) < MIN_TISSUE_PIXELS
    tissue = tissue | few.view(-1, 1, 1, 1)
    weight = tissue.to(lab.dtype)
    count = weight.flatten(1).sum(dim=1).clamp(min=1).view(-1, 1)
    mean = (lab * weight).flatten(2).sum(dim=2) / count
    spread = (((lab - mean.view(-1, 3, 1, 1)) ** 2) * weight).flatten(2).sum(dim=2) / count
    return mean, spread.sqrt()


def reinhard(images: torch.Tensor, target: Sequence[float],
             source: Sequence[float] | None = None) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in ``[0, 255]`` with each image's tissue colour statistics matched
    to ``target`` (L*, a*, b* means, then their standard deviations); ``[0, 255]``, the dtype
    of ``images`` (float). With ``source`` (six numbers, as ``target``), every image is moved
    from those statistics instead of its own: the tiles of one slide, from the slide's."""
    lab = rgb_to_lab(_working(images) / 255.0)
    target_t = torch.as_tensor(tuple(target), dtype=lab.dtype, device=images.device)
    if source is None:
        mean, spread = tissue_stats(lab)
    else:
        source_t = torch.as_tensor(tuple(source), dtype=lab.dtype, device=images.device)
        mean = source_t[:3].view(1, 3).expand(lab.shape[0], 3)
        spread = source_t[3:].view(1, 3).expand(lab.shape[0], 3)
    scale = target_t[3:].view(1, 3) / spread.clamp(min=1e-6)
    lab = (lab - mean.view(-1, 3, 1, 1)) * scale.view(-1, 3, 1, 1) + target_t[:3].view(1, 3, 1, 1)
    return (lab_to_rgb(lab) * 255.0).to(images.dtype)


def _colour_codes(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 images to ``(B, H, W)`` int32 codes ``R << 16 | G << 8 | B``."""
    x = images.to(torch.int32)
    return (x[:, 0] << 16) | (x[:, 1] << 8) | x[:, 2]


def _colours_of(codes: torch.Tensor) -> torch.Tensor:
    """``(N,)`` colour codes to ``(1, 3, N, 1)`` float32 RGB in ``[0, 255]``."""
    rgb = torch.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255])
    return rgb.to(torch.float32)[None, :, :, None]


class ColourTable:
    """:func:`reinhard` from fixed ``source`` statistics to ``target`` as a table of the 2^24
    RGB colours, filled as colours are met: each entry is the normalised colour rounded to
    whole levels (as :func:`normalise_image` rounds the training images) and coded as the
    colours are, ``R << 16 | G << 8 | B``, or -1 while not computed (64 MiB).

    After the first tiles of a slide nearly every colour is in the table, and a batch costs
    a gather instead of two Lab conversions. Safe to share between threads (an entry is one
    32-bit word, written once its value is known).
    """

    SIZE = 1 << 24

    def __init__(self, target: Sequence[float], source: Sequence[float]):
        self.target = tuple(float(v) for v in target)
        self.source = tuple(float(v) for v in source)
        self.values = torch.full((self.SIZE,), -1, dtype=torch.int32)
        self._lock = threading.Lock()

    def fill(self, codes: torch.Tensor) -> int:
        """Compute the colours of ``codes`` not yet in the table; returns how many were new."""
        with self._lock:
            missing = torch.unique(codes.reshape(-1))
            missing = missing[self.values.index_select(0, missing) < 0]  # not since filled
            if missing.numel() == 0:
                return 0
            moved = reinhard(_colours_of(missing), self.target, self.source)[0, :, :, 0]
            levels = (moved + 0.5).to(torch.int32)  # (3, N); moved is in [0, 255]
            self.values[missing.long()] = (levels[0] << 16) | (levels[1] << 8) | levels[2]
            return int(missing.numel())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 images, normalised: float32 ``(B, 3, H, W)`` in ``[0, 255]``."""
        if images.dtype != torch.uint8:
            raise TypeError(f"a colour table takes uint8 images, not {images.dtype}")
        batch, _, height, width = images.shape
        codes = _colour_codes(images).reshape(-1)
        moved = self.values.index_select(0, codes)
        unknown = moved < 0
        if bool(unknown.any()):
            self.fill(codes[unknown])
            moved = self.values.index_select(0, codes)
        moved = moved.view(batch, height, width)
        out = torch.empty((batch, 3, height, width), dtype=torch.float32)
        for channel, shift in enumerate((16, 8, 0)):
            out[:, channel] = (moved >> shift) & 255
        return out


#: Tables of the latest (target, source) pairs: one per slide being read, at most two.
_TABLES: OrderedDict[tuple, ColourTable] = OrderedDict()
_TABLES_LOCK = threading.Lock()
MAX_TABLES = 2


def colour_table(target: Sequence[float], source: Sequence[float]) -> ColourTable:
    """The shared :class:`ColourTable` of ``(target, source)`` (made on first use; the least
    recently used of more than :data:`MAX_TABLES` is dropped)."""
    key = (tuple(float(v) for v in target), tuple(float(v) for v in source))
    with _TABLES_LOCK:
        table = _TABLES.get(key)
        if table is None:
            table = _TABLES[key] = ColourTable(*key)
            while len(_TABLES) > MAX_TABLES:
                _TABLES.popitem(last=False)
        _TABLES.move_to_end(key)
        return table


def reinhard_colours(images: torch.Tensor, target: Sequence[float],
                     source: Sequence[float]) -> torch.Tensor:
    """:func:`reinhard` of ``(B, 3, H, W)`` uint8 images from fixed ``source`` statistics, as
    float32 in ``[0, 255]``, rounded to whole levels, through the shared
    :class:`ColourTable` of ``(target, source)``.

    With fixed statistics the normalisation is a function of each pixel's colour alone, so a
    colour is converted once per slide; the result is :func:`reinhard`'s, rounded (within
    half a level).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"reinhard_colours takes uint8 images, not {images.dtype}")
    return colour_table(target, source)(images.cpu()).to(images.device)


def normalise_image(image: np.ndarray, target: Sequence[float]) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 image through :func:`reinhard`, uint8 again (rounded)."""
    out = reinhard(_batch_of(image), target)[0].permute(1, 2, 0).numpy()
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def pooled_tissue_stats(images: Iterable[np.ndarray]) -> tuple[float, ...] | None:
    """Mean and standard deviation of L*, a*, b* over the tissue pixels of all the ``(H, W,
    3)`` uint8 images together (six numbers, as a target): a slide's statistics from a sample
    of its tiles. None when none of them holds a tissue pixel."""
    count, total, squares = 0, np.zeros(3), np.zeros(3)
    for image in images:
        # converted in float32 (half the time of float64; the sums are float64)
        rgb = torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8)).permute(2, 0, 1)
        lab = rgb_to_lab(rgb[None].to(torch.float32) / 255.0)[0].reshape(3, -1)
        pixels = lab[:, lab[0] < TISSUE_MAX_L].to(torch.float64).numpy()
        count += pixels.shape[1]
        total += pixels.sum(axis=1)
        squares += (pixels**2).sum(axis=1)
    if count == 0:
        return None
    mean = total / count
    spread = np.sqrt(np.maximum(squares / count - mean**2, 0.0)) + 1e-6
    return tuple(float(v) for v in np.concatenate([mean, spread]))


def colour_target(images: Iterable[np.ndarray]) -> tuple[float, ...]:
    """The target of a set of ``(H, W, 3)`` uint8 images: the average of their tissue means
    and of their tissue standard deviations of L*, a*, b* (six numbers)."""
    means, spreads = [], []
    for image in images:
        mean, spread = tissue_stats(rgb_to_lab(_batch_of(image) / 255.0))
        means.append(mean[0])
        spreads.append(spread[0])
    if not means:
        raise ValueError("a colour target needs at least one image")
    return tuple(float(v) for v in torch.cat([torch.stack(means).mean(0),
                                              torch.stack(spreads).mean(0)]))
