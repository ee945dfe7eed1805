"""Torch data set over patch records: image reading, stain and geometric augmentation, eval padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from skimage import color

from ..errors import DatasetError
from .glas import PatchDataset, PatchRecord

#: Mask value of pixels without ground truth (no mask, or padding); metrics ignore them.
IGNORE_INDEX = -1


def read_rgb(path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Grayscale is repeated over the three channels, alpha is dropped (composited on white),
    palette images are expanded and 16-bit images are scaled to 8 bits.

    Raises
    ------
    DatasetError
        The file is missing or is not a readable image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.asarray(image, dtype=np.float64)
                scale = 65535.0 if values.max() > 255 else 255.0
                gray = np.clip(values / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            if image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info
            ):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError as error:
        raise DatasetError("image file not found", path, hint="check the data set") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(
            f"cannot read the image ({error})", path, hint="replace the file or remove it"
        ) from error


def read_mask(path) -> np.ndarray:
    """Read a foreground mask file as ``(H, W)`` uint8 with 0 = background, 1 = foreground.

    Any non-zero value (255, instance ids) is foreground; colour masks use their maximum channel.
    """
    try:
        with Image.open(path) as image:
            values = np.asarray(image)
    except FileNotFoundError as error:
        raise DatasetError("mask file not found", path, hint="check the data set") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(f"cannot read the mask ({error})", path) from error
    if values.ndim == 3:
        values = values[..., :3].max(axis=2)
    return (values > 0).astype(np.uint8)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation.

    Attributes
    ----------
    flips : bool
        Random horizontal and vertical flips.
    rotate90 : bool
        Random rotation by a multiple of 90 degrees.
    brightness, contrast, saturation : float
        Maximum relative change (a factor drawn in ``[1 - x, 1 + x]``).
    hue : float
        Maximum hue shift, as a fraction of the hue circle.
    hed : float
        Maximum relative perturbation of the haematoxylin / eosin / DAB optical densities
        (stain augmentation in HED space, a factor in ``[1 - x, 1 + x]`` and a shift in
        ``[-x, x]`` of each channel's range).
    scale : float
        Multi-scale crops: the side of a training crop is the crop size times a factor drawn
        log-uniformly in ``[1 / (1 + x), 1 + x]`` (at most the image's shorter side, and never
        below the crop size on that account), and the crop is resized to the crop size. 0: off.
    """

    flips: bool = True
    rotate90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    hed: float = 0.03
    scale: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.scale <= 1.0:
            raise ValueError(f"scale must be in [0, 1], got {self.scale}")

    @property
    def jitters_colour(self) -> bool:
        """True when any colour perturbation is on."""
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue, self.hed))


#: No augmentation at all.
NO_AUGMENTATION = AugmentConfig(False, False, 0.0, 0.0, 0.0, 0.0, 0.0)


def stain_jitter(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Small random colour perturbation of an ``(H, W, 3)`` uint8 H&E image.

    HED optical densities are scaled and shifted per stain, then brightness, contrast,
    saturation and hue are changed in HSV. Returns uint8.
    """
    rgb = image.astype(np.float64) / 255.0
    if config.hed > 0:
        hed = color.rgb2hed(rgb)
        alpha = rng.uniform(1.0 - config.hed, 1.0 + config.hed, size=3)
        span = hed.reshape(-1, 3).max(axis=0) - hed.reshape(-1, 3).min(axis=0)
        beta = rng.uniform(-config.hed, config.hed, size=3) * span
        rgb = np.clip(color.hed2rgb(hed * alpha + beta), 0.0, 1.0)
    if config.brightness > 0:
        rgb = rgb * rng.uniform(1.0 - config.brightness, 1.0 + config.brightness)
    if config.contrast > 0:
        mean = rgb.mean()
        rgb = (rgb - mean) * rng.uniform(1.0 - config.contrast, 1.0 + config.contrast) + mean
    rgb = np.clip(rgb, 0.0, 1.0)
    if config.saturation > 0 or config.hue > 0:
        hsv = color.rgb2hsv(rgb)
        if config.hue > 0:
            hsv[..., 0] = (hsv[..., 0] + rng.uniform(-config.hue, config.hue)) % 1.0
        if config.saturation > 0:
            factor = rng.uniform(1.0 - config.saturation, 1.0 + config.saturation)
            hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
        rgb = color.hsv2rgb(hsv)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def pad_to_multiple(
    image: np.ndarray, mask: np.ndarray, multiple: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Pad image (reflect) and mask (:data:`IGNORE_INDEX`) at the bottom/right to a multiple."""
    height, width = image.shape[:2]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return image, mask
    mode = "reflect" if pad_h < height and pad_w < width else "symmetric"
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
    mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image, mask


def _pad_to_size(image: np.ndarray, mask: np.ndarray, size: int):
    height, width = image.shape[:2]
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h == 0 and pad_w == 0:
        return image, mask
    image = np.pad(
        image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
        mode="symmetric",
    )
    mask = np.pad(
        mask, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)),
        constant_values=IGNORE_INDEX,
    )
    return image, mask


class PatchTorchDataset(torch.utils.data.Dataset):
    """Torch data set of ``(image, label, mask)`` over the records of a :class:`PatchDataset`.

    ``image`` is a normalised float tensor ``(3, h, w)``, ``label`` an int64 scalar and
    ``mask`` an int64 ``(h, w)`` tensor with 0 = background, 1 = foreground and
    :data:`IGNORE_INDEX` where there is no ground truth (no mask file, or padding).

    Training (``train=True``): optional rescaling to ``target_mpp``, a random ``crop_size``
    crop (images smaller than that are padded), flips, 90-degree rotations and stain jitter.
    Evaluation: rescaling, then a center crop to ``crop_size``, or with ``crop_size=None`` the
    full image padded at the bottom/right to a multiple of ``pad_multiple``.

    Random draws come from a generator seeded by ``(seed, epoch, index)``, so an item is the
    same whichever worker loads it; call :meth:`set_epoch` before each epoch.

    Parameters
    ----------
    dataset : PatchDataset or sequence of PatchRecord
        The images.
    mean, std : sequence of float
        Per-channel normalisation of images scaled to ``[0, 1]`` (the model's).
    train : bool
        Random augmentation (True) or the deterministic evaluation transform.
    crop_size : int or None
        Side of the square crops; ``None`` keeps full images (evaluation only).
    augment : AugmentConfig
        Training augmentation.
    source_mpp, target_mpp : float, optional
        Resolution of the files and wanted resolution; rescaled when both are given.
    pad_multiple : int
        Full images are padded to a multiple of this (the model's output stride).
    seed : int
        Base seed of the random augmentation.
    cache : bool
        Keep decoded (and rescaled) images in memory.
    colour_target : tuple of 6 float, optional
        Colour-normalise each whole image to this target (the model's ``colour_target``,
        :func:`~napari_wsl_al.core.models.colour.normalise_image`) after rescaling, before
        any crop.
    """

    def __init__(
        self,
        dataset: PatchDataset | Sequence[PatchRecord],
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        crop_size: int | None = 224,
        augment: AugmentConfig = AugmentConfig(),
        source_mpp: float | None = None,
        target_mpp: float | None = None,
        pad_multiple: int = 32,
        seed: int = 0,
        cache: bool = True,
        colour_target: Sequence[float] | None = None,
    ):
        if train and crop_size is None:
            raise ValueError("training needs a crop_size")
        self.records = tuple(dataset.records if isinstance(dataset, PatchDataset) else dataset)
        if source_mpp is None and isinstance(dataset, PatchDataset):
            source_mpp = dataset.mpp
        self.mean = torch.tensor(tuple(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(tuple(std), dtype=torch.float32).view(3, 1, 1)
        self.train = train
        self.crop_size = crop_size
        self.augment = augment
        self.scale = 1.0
        if source_mpp and target_mpp:
            self.scale = float(source_mpp) / float(target_mpp)
        self.pad_multiple = pad_multiple
        self.seed = seed
        self.epoch = 0
        self.cache = cache
        self.colour_target = None if colour_target is None else tuple(colour_target)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of epoch ``epoch`` from now on."""
        self.epoch = int(epoch)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``(H, W, 3)`` uint8 image and ``(H, W)`` int8 mask of a record, rescaled (and
        colour-normalised with a ``colour_target``)."""
        if index in self._cache:
            return self._cache[index]
        record = self.records[index]
        image = read_rgb(record.image_path)
        if record.mask_path is not None:
            mask = read_mask(record.mask_path).astype(np.int8)
            if mask.shape != image.shape[:2]:
                raise DatasetError(
                    f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                    f"{image.shape[1]}x{image.shape[0]}",
                    record.mask_path,
                    hint="masks must have the size of their image",
                )
        else:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.int8)
        if abs(self.scale - 1.0) > 1e-3:
            height, width = image.shape[:2]
            size = (
                max(1, int(width * self.scale + 0.5)), max(1, int(height * self.scale + 0.5))
            )
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            mask = np.asarray(
                Image.fromarray(mask.astype(np.uint8)).resize(size, Image.NEAREST)
            ).astype(np.int8)  # 255 -> -1 again
        if self.colour_target is not None:
            from ..models.colour import normalise_image

            image = normalise_image(image, self.colour_target)
        if self.cache:
            self._cache[index] = (image, mask)
        return image, mask

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask = self._random_transform(image, mask, rng)
        elif self.crop_size is not None:
            image, mask = _pad_to_size(image, mask, self.crop_size)
            height, width = image.shape[:2]
            top = (height - self.crop_size) // 2
            left = (width - self.crop_size) // 2
            image = image[top : top + self.crop_size, left : left + self.crop_size]
            mask = mask[top : top + self.crop_size, left : left + self.crop_size]
        else:
            image, mask = pad_to_multiple(image, mask, self.pad_multiple)
        pixels = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only arrays
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        tensor = (tensor - self.mean) / self.std
        label = torch.tensor(self.records[index].label, dtype=torch.int64)
        return tensor, label, torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))

    def _random_transform(self, image, mask, rng):
        size = side = self.crop_size
        augment = self.augment
        if augment.scale > 0:
            span = np.log1p(augment.scale)
            side = round(size * float(np.exp(rng.uniform(-span, span))))
            side = max(1, min(side, max(size, min(image.shape[:2]))))
        image, mask = _pad_to_size(image, mask, side)
        height, width = image.shape[:2]
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        image = image[top : top + side, left : left + side]
        mask = mask[top : top + side, left : left + side]
        if side != size:
            image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
                (size, size), Image.BILINEAR))
            mask = np.asarray(Image.fromarray(np.ascontiguousarray(mask).astype(np.uint8)).resize(
                (size, size), Image.NEAREST)).astype(np.int8)
        if augment.flips:
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if rng.random() < 0.5:
                image, mask = image[::-1], mask[::-1]
        if augment.rotate90:
            turns = int(rng.integers(0, 4))
            image, mask = np.rot90(image, turns), np.rot90(mask, turns)
        if augment.jitters_colour:
            image = stain_jitter(image, rng, augment)
        return image, mask


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of data loaders: seeds numpy and ``random`` from torch's worker seed."""
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
