"""Self-supervised pre-training of the ResNet backbone (SimSiam) on tissue crops of images and slides.

SimSiam (Chen & He, "Exploring simple Siamese representation learning", CVPR 2021): two
augmented views ``x1, x2`` of one tissue window go through the backbone (global average
pooled), a projection MLP ``f`` (``z = f(x)``) and a prediction MLP ``h`` (``p = h(z)``); the
loss is the symmetric negative cosine similarity with a stop-gradient on the target branch,
``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` with ``D(p, z) = -<p/|p|, z/|z|>``. It needs no
labels and no negative pairs, and it trains with small batches, which suits a CPU.

Crops come from a list of :class:`ImageCropSource` (images held in memory at the target
resolution: a GlaS-layout folder or any folder of images) and :class:`SlideCropSource`
(slides read lazily at the target resolution with
:meth:`~napari_wsl_al.core.io.base.SlideReader.read_region_mpp`). Each source knows its tissue
from :mod:`napari_wsl_al.core.data.tissue`: a window is centred on a random tissue pixel, and
sources are drawn in proportion to their tissue area. Each view of the window gets a random
resized crop, flips and 90-degree turns, strong colour and H&E stain jitter
(:func:`~napari_wsl_al.core.data.patches.stain_jitter`), sometimes grey levels, and a Gaussian
blur. Every draw comes from a generator seeded by ``(seed, epoch, index)``.

:func:`train_ssl` is a generator like :func:`~napari_wsl_al.core.wsl.train.train_wsl`: it yields
one :class:`~napari_wsl_al.core.progress.Progress` per batch (close it to stop between two
batches) and one per epoch, and returns an :class:`SslResult`. :func:`save_ssl_backbone` writes
the backbone's state dict with torchvision names (plus the run's parameters and loss history),
which :func:`~napari_wsl_al.core.models.backbones.load_backbone_weights` reads, e.g. through
``napari-wsl-al train-wsl --pretrained``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn

from ..atomic import atomic_write
from ..data.glas import IMAGE_EXTENSIONS, load_glas
from ..data.patches import AugmentConfig, read_rgb, stain_jitter
from ..data.tissue import DEFAULT_MPP, TissueMask, tissue_mask, tissue_mask_from_rgb
from ..device import resolve_device
from ..errors import DatasetError, SlideError, TrainingError
from ..io.base import SlideReader, resize_rgb
from ..models.backbones import ResNet, resnet
from ..models.base import IMAGENET_MEAN, IMAGENET_STD
from ..progress import Progress

logger = logging.getLogger(__name__)

#: Colour augmentation of the views: SimSiam's strengths (0.4 / 0.4 / 0.4 / 0.1) plus HED jitter.
STRONG_COLOUR = AugmentConfig(
    flips=True, rotate90=True, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, hed=0.2
)


@dataclass(frozen=True)
class SslConfig:
    """Parameters of :func:`train_ssl`.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs.
    crops_per_epoch : int
        Tissue windows drawn per epoch (each gives two views).
    batch_size : int
        Windows per batch (at least 2, for batch norm).
    crop_size : int
        Side of the views fed to the network (pixels at the target resolution).
    window_size : int or None
        Side of the tissue window the two views are cut from (default: ``crop_size``).
    min_scale : float
        Smallest fraction of the window's area a view covers (random resized crop); the view
        is then resized to ``crop_size``, so the zoom is at most ``1 / sqrt(min_scale)``.
    augment : AugmentConfig
        Flips, 90-degree turns and colour / stain jitter of each view.
    colour_probability : float
        Probability that a view gets the colour jitter of ``augment``.
    grey_probability : float
        Probability that a view is turned into grey levels (repeated on the three channels).
    blur_probability : float
        Probability of a Gaussian blur with a standard deviation drawn in ``blur_sigma``.
    blur_sigma : (float, float)
        Range of the blur's standard deviation, in pixels.
    projection_dim : int
        Width of the projection MLP (three layers, batch norm, the last without affine).
    prediction_dim : int
        Hidden width of the prediction MLP (a bottleneck, as in SimSiam).
    lr : float
        Learning rate of SGD for a batch of 256, scaled by ``batch_size / 256`` (SimSiam's
        rule), with a cosine decay to 0; the predictor keeps the base rate.
    momentum, weight_decay : float
        SGD momentum and L2 penalty.
    max_minutes : float or None
        Wall-time bound: training stops after the batch that reaches it (at least one batch
        is taken, and the epoch is recorded and saved), and the cosine
        schedule follows the larger of the fraction of steps and the fraction of time done.
    seed : int
        Seed of the windows, the views, the network's initial weights and the batch order.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    num_threads : int or None
        ``torch.set_num_threads`` for the run (restored afterwards).
    num_workers : int
        Data-loading worker processes (0: in the training process).
    mean, std : tuple of float
        Input normalisation of images scaled to ``[0, 1]``: the WSL models' (ImageNet's).
    """

    epochs: int = 100
    crops_per_epoch: int = 512
    batch_size: int = 32
    crop_size: int = 192
    window_size: int | None = None
    min_scale: float = 0.25
    augment: AugmentConfig = field(default_factory=lambda: STRONG_COLOUR)
    colour_probability: float = 0.8
    grey_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    projection_dim: int = 512
    prediction_dim: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    num_workers: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if self.crops_per_epoch < self.batch_size:
            raise ValueError(
                f"crops_per_epoch ({self.crops_per_epoch}) must be at least batch_size "
                f"({self.batch_size})"
            )
        if self.crop_size < 32:
            raise ValueError(f"crop_size must be >= 32, got {self.crop_size}")
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")
        for name in ("colour_probability", "grey_probability", "blur_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def window(self) -> int:
        """Side of the tissue windows."""
        return int(self.window_size or self.crop_size)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per epoch (the last partial batch is dropped)."""
        return self.crops_per_epoch // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy of the parameters."""
        values = asdict(self)
        values["blur_sigma"] = list(self.blur_sigma)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values


# ---------------------------------------------------------------------------------- sources
class ImageCropSource:
    """An image held in memory at the target resolution, with its tissue mask.

    Parameters
    ----------
    image : ndarray
        ``(H, W, 3)`` uint8 RGB at the target resolution.
    name : str
        Shown in messages.
    mpp : float or None
        Microns per pixel of ``image`` (areas of the tissue mask's parameters).
    """

    def __init__(self, image: np.ndarray, name: str = "image", mpp: float | None = None):
        image = np.ascontiguousarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{name}: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        self.image = image
        self.name = name
        # Dust is at most a quarter of the image: a small patch full of tissue stays tissue.
        area_um2 = image.shape[0] * image.shape[1] * (mpp or DEFAULT_MPP) ** 2
        self.mask = tissue_mask_from_rgb(
            image, pixel_um=mpp, min_object_um2=min(5000.0, area_um2 / 4)
        ).mask
        self._tissue = np.flatnonzero(self.mask)

    @property
    def tissue_pixels(self) -> float:
        """Tissue area in pixels of the target resolution."""
        return float(self._tissue.size)

    def window(self, rng: np.random.Generator, side: int) -> np.ndarray:
        """A ``(side, side, 3)`` window centred (as far as the borders allow) on a random
        tissue pixel; images smaller than ``side`` are mirrored at their borders."""
        image = self.image
        height, width = image.shape[:2]
        pad_h, pad_w = max(0, side - height), max(0, side - width)
        centre = int(self._tissue[rng.integers(self._tissue.size)])
        row, col = divmod(centre, width)
        if pad_h or pad_w:
            image = np.pad(
                image,
                ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                mode="symmetric",
            )
            row, col = row + pad_h // 2, col + pad_w // 2
            height, width = image.shape[:2]
        top = min(max(0, row - side // 2), height - side)
        left = min(max(0, col - side // 2), width - side)
        return image[top : top + side, left : left + side]


class SlideCropSource:
    """A slide read lazily at the target resolution, with its tissue mask.

    Parameters
    ----------
    reader : SlideReader
        The slide (kept open; close it when done).
    target_mpp : float or None
        Microns per pixel of the windows; None reads level 0.

    Raises
    ------
    SlideError
        ``target_mpp`` is given but the slide's resolution is unknown.
    """

    def __init__(self, reader: SlideReader, target_mpp: float | None = None):
        if target_mpp is not None and reader.mpp is None:
            raise SlideError(
                "the slide's microns per pixel are unknown, so it cannot be read at "
                f"{target_mpp} um/px",
                path=reader.path,
                hint="leave this slide out, or convert it to a format that records its resolution",
            )
        self.reader = reader
        self.name = reader.name
        #: Level-0 pixels per target pixel.
        self.scale = 1.0 if target_mpp is None else float(target_mpp) / float(reader.mpp[0])
        self.target_mpp = target_mpp
        self.tissue: TissueMask = tissue_mask(reader)
        self._tissue = np.flatnonzero(self.tissue.mask)

    @property
    def tissue_pixels(self) -> float:
        """Tissue area in pixels of the target resolution."""
        return float(self._tissue.size) * (self.tissue.downsample / self.scale) ** 2

    def window(self, rng: np.random.Generator, side: int) -> np.ndarray:
        """A ``(side, side, 3)`` window at the target resolution centred on a random tissue
        pixel of the mask (anywhere inside that mask pixel)."""
        row, col = divmod(int(self._tissue[rng.integers(self._tissue.size)]),
                          self.tissue.mask.shape[1])
        jitter = rng.random(2)
        d = self.tissue.downsample
        centre_x, centre_y = (col + jitter[0]) * d, (row + jitter[1]) * d
        span = side * self.scale  # level-0 pixels
        location = (round(centre_x - span / 2), round(centre_y - span / 2))
        if self.target_mpp is None:
            return self.reader.read_region(location, 0, (side, side))
        if self.scale >= 1.0:
            return self.reader.read_region_mpp(location, self.target_mpp, (side, side))
        native = max(1, math.ceil(span))  # finer than the slide: read level 0, enlarge
        return resize_rgb(self.reader.read_region(location, 0, (native, native)), (side, side))


def _rescaled(image: np.ndarray, factor: float) -> np.ndarray:
    if abs(factor - 1.0) <= 1e-3:
        return image
    height, width = image.shape[:2]
    size = (max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def image_files(folder: str | Path) -> list[Path]:
    """The image files of a folder for pre-training: ``images/`` of a GlaS layout, else every
    image file under the folder (class folders included), in sorted order.

    Raises
    ------
    DatasetError
        The folder is missing or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError("not a folder", root, hint="pass a folder of images (or GlaS layout)")
    if (root / "grade.csv").exists():
        files = [record.image_path for record in load_glas(root, mpp=None)]
    else:
        base = root / "images" if (root / "images").is_dir() else root
        files = sorted(
            p for p in base.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            and "masks" not in p.relative_to(base).parts
        )
    if not files:
        raise DatasetError(
            "no image found", root, hint=f"the folder must hold {', '.join(IMAGE_EXTENSIONS)} files"
        )
    return files


def load_crop_sources(
    images: Sequence[str | Path] | str | Path | None = None,
    slides: Sequence[str | Path | SlideReader] = (),
    target_mpp: float | None = None,
    image_mpp: float | None = None,
) -> list[ImageCropSource | SlideCropSource]:
    """Crop sources from image files (or a folder of them) and slides.

    Parameters
    ----------
    images : folder, or sequence of files, optional
        A GlaS-layout folder, a folder of images, or image files.
    slides : sequence of paths or SlideReader
        Slides opened with :func:`~napari_wsl_al.core.io.open_slide` (paths) or already open.
    target_mpp : float, optional
        Resolution of the crops; None keeps the images and slides as stored.
    image_mpp : float, optional
        Resolution of the image files; needed with ``target_mpp`` (for a GlaS-layout folder
        it defaults to :data:`~napari_wsl_al.core.data.glas.GLAS_MPP`).

    Returns
    -------
    list
        One source per image or slide with tissue (those without are left out, with a
        warning).

    Raises
    ------
    DatasetError
        No source has tissue, ``target_mpp`` is given without ``image_mpp`` for images, or an
        image cannot be read (the error names the file).
    SlideError
        A slide cannot be opened or has no resolution while ``target_mpp`` is given.
    """
    from ..data.glas import GLAS_MPP
    from ..io import open_slide

    files: list[Path] = []
    if images is not None:
        if isinstance(images, (str, Path)) and Path(images).is_file():
            files = [Path(images)]
        elif isinstance(images, (str, Path)):
            folder = Path(images)
            files = image_files(folder)
            if image_mpp is None and (folder / "grade.csv").exists():
                image_mpp = GLAS_MPP
        else:
            files = [Path(p) for p in images]
    if files and target_mpp is not None and image_mpp is None:
        raise DatasetError(
            f"the images' resolution is unknown, so they cannot be read at {target_mpp} um/px",
            files[0].parent,
            hint="give the microns per pixel of the images (--mpp)",
        )
    sources: list[ImageCropSource | SlideCropSource] = []
    factor = 1.0 if target_mpp is None else float(image_mpp) / float(target_mpp)
    for path in files:
        image = _rescaled(read_rgb(path), factor)
        source = ImageCropSource(image, name=path.name, mpp=target_mpp or image_mpp)
        if source.tissue_pixels:
            sources.append(source)
        else:
            logger.warning("%s: no tissue found; left out of pre-training", path)
    for slide in slides:
        reader = slide if isinstance(slide, SlideReader) else open_slide(slide)
        source = SlideCropSource(reader, target_mpp)
        if source.tissue_pixels:
            sources.append(source)
        else:
            logger.warning("%s: no tissue found; left out of pre-training", reader.path)
    if not sources:
        where = images if images is not None else ", ".join(str(s) for s in slides)
        raise DatasetError(
            "no tissue to pre-train on", where, hint="pass images or slides that show tissue"
        )
    return sources


# ---------------------------------------------------------------------------------- views
def random_resized_crop(
    window: np.ndarray, size: int, rng: np.random.Generator, min_scale: float
) -> np.ndarray:
    """A random box of the window (area fraction in ``[min_scale, 1]``, aspect ratio
    log-uniform in ``[3/4, 4/3]``) resized to ``size x size`` (bilinear)."""
    height, width = window.shape[:2]
    area = height * width
    box_h, box_w = height, width
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            box_h, box_w = h, w
            break
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    box = np.ascontiguousarray(window[top : top + box_h, left : left + box_w])
    if box.shape[:2] == (size, size):
        return box
    return np.asarray(Image.fromarray(box).resize((size, size), Image.BILINEAR))


def augment_view(window: np.ndarray, rng: np.random.Generator, config: SslConfig) -> np.ndarray:
    """One augmented view ``(crop_size, crop_size, 3)`` uint8 of a tissue window."""
    view = random_resized_crop(window, config.crop_size, rng, config.min_scale)
    augment = config.augment
    if augment.flips:
        if rng.random() < 0.5:
            view = view[:, ::-1]
        if rng.random() < 0.5:
            view = view[::-1]
    if augment.rotate90:
        view = np.rot90(view, int(rng.integers(0, 4)))
    view = np.ascontiguousarray(view)
    if augment.jitters_colour and rng.random() < config.colour_probability:
        view = stain_jitter(view, rng, augment)
    if rng.random() < config.grey_probability:
        grey = view.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        view = np.repeat(np.clip(grey + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if rng.random() < config.blur_probability:
        sigma = float(rng.uniform(*config.blur_sigma))
        view = np.asarray(Image.fromarray(view).filter(ImageFilter.GaussianBlur(radius=sigma)))
    return view


class SslCropDataset(torch.utils.data.Dataset):
    """Pairs of augmented views of random tissue windows: items ``(view1, view2)``, each a
    normalised float tensor ``(3, crop_size, crop_size)``.

    Item ``index`` of epoch ``e`` is drawn from ``numpy.random.default_rng([seed, e, index])``:
    the same whichever worker reads it. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, sources: Sequence[ImageCropSource | SlideCropSource], config: SslConfig):
        if not sources:
            raise ValueError("no crop source")
        self.sources = list(sources)
        self.config = config
        area = np.array([s.tissue_pixels for s in self.sources], dtype=np.float64)
        self.weights = area / area.sum()
        self.mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
        self.epoch = 0

    def __len__(self) -> int:
        return self.config.crops_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw the windows and views of epoch ``epoch`` from now on."""
        self.epoch = int(epoch)

    def _tensor(self, view: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(view, dtype=np.uint8)).permute(2, 0, 1).float()
        return (tensor.div_(255.0) - self.mean) / self.std

    def views(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The two uint8 views of item ``index`` of the current epoch."""
        rng = np.random.default_rng([self.config.seed, self.epoch, int(index)])
        source = self.sources[int(rng.choice(len(self.sources), p=self.weights))]
        window = source.window(rng, self.config.window)
        return augment_view(window, rng, self.config), augment_view(window, rng, self.config)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = self.views(index)
        return self._tensor(first), self._tensor(second)


# ---------------------------------------------------------------------------------- model
def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimSiam's ``D(p, z)``: minus the cosine similarity of each row, averaged over the batch,
    with a stop-gradient on ``target`` (no gradient flows into it)."""
    prediction = F.normalize(prediction, dim=1)
    target = F.normalize(target.detach(), dim=1)
    return -(prediction * target).sum(dim=1).mean()


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """Symmetric SimSiam loss ``D(p1, z2) / 2 + D(p2, z1) / 2`` (in ``[-1, 1]``; -1 is
    perfect agreement)."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


class SimSiam(nn.Module):
    """Backbone, global average pooling, projection MLP and prediction MLP.

    Parameters
    ----------
    backbone : ResNet
        The trunk being pre-trained (its parameters keep their torchvision names under
        ``backbone.``).
    projection_dim : int
        Width of the three-layer projection MLP (``Linear-BN-ReLU`` twice, then
        ``Linear-BN`` without affine parameters).
    prediction_dim : int
        Hidden width of the two-layer prediction MLP (``Linear-BN-ReLU-Linear``).
    """

    def __init__(self, backbone: ResNet, projection_dim: int = 512, prediction_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        channels = backbone.out_channels
        self.projector = nn.Sequential(
            nn.Linear(channels, projection_dim, bias=False),
            nn.BatchNorm1d(projection_dim),
            nn.ReLU(inplace=True),
            nn.Linear(projection_dim, projection_dim, bias=False),
            nn.BatchNorm1d(projection_dim),
            nn.ReLU(inplace=True),
            nn.Linear(projection_dim, projection_dim, bias=False),
            nn.BatchNorm1d(projection_dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(projection_dim, prediction_dim, bias=False),
            nn.BatchNorm1d(prediction_dim),
            nn.ReLU(inplace=True),
            nn.Linear(prediction_dim, projection_dim),
        )

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """``z``: the projection of the pooled backbone features, ``(B, projection_dim)``."""
        features = self.backbone.features(images).mean(dim=(2, 3))
        return self.projector(features)

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(p1, p2, z1, z2)`` of two batches of views."""
        z1, z2 = self.project(view1), self.project(view2)
        return self.predictor(z1), self.predictor(z2), z1, z2


def embedding_spread(z: torch.Tensor) -> float:
    """Standard deviation over the batch of the L2-normalised embeddings, averaged over the
    dimensions and multiplied by ``sqrt(dim)``: about 1 for spread-out embeddings, 0 when the
    representation has collapsed to a constant (SimSiam's collapse check)."""
    normalised = F.normalize(z.detach().float(), dim=1)
    return float(normalised.std(dim=0).mean() * math.sqrt(z.shape[1]))


# ---------------------------------------------------------------------------------- training
@dataclass
class SslResult:
    """Outcome of :func:`train_ssl`.

    Attributes
    ----------
    history : list of dict
        One record per epoch: ``epoch``, ``loss`` (mean over its batches), ``spread``
        (:func:`embedding_spread` averaged over its batches), ``lr``, ``batches``, ``seconds``.
    steps : int
        Optimizer steps taken.
    stopped : str
        ``"epochs"`` or ``"time-limit"``.
    seconds : float
        Wall time of the run.
    """

    history: list[dict[str, Any]]
    steps: int
    stopped: str
    seconds: float


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def train_ssl(
    backbone: ResNet,
    sources: Sequence[ImageCropSource | SlideCropSource] | torch.utils.data.Dataset,
    config: SslConfig = SslConfig(),
    checkpoint_path: str | Path | None = None,
) -> Generator[Progress, None, SslResult]:
    """Pre-train ``backbone`` in place with SimSiam on tissue crops.

    Parameters
    ----------
    backbone : ResNet
        The trunk to train (e.g. ``resnet(18, width=0.25)``); it holds the new weights as soon
        as each step is taken, so a closed (cancelled) run leaves it as after its last batch.
    sources : sequence of crop sources, or a torch Dataset
        Where the windows come from (:func:`load_crop_sources`), or any data set of
        ``(view1, view2)`` pairs of normalised tensors.
    config : SslConfig
        Parameters.
    checkpoint_path : str or Path, optional
        Where :func:`save_ssl_backbone` writes the backbone after every epoch (atomically),
        so that a long run killed midway still leaves its last epoch.

    Yields
    ------
    Progress
        One after every batch (``metrics``: ``epoch``, ``batch``, ``batches``, ``loss``,
        ``mean_loss`` of the epoch so far, ``spread``, ``lr``) and one after every epoch
        (``metrics``: that epoch's history record, with no ``batch`` key). ``step`` counts
        batches over the run.

    Returns
    -------
    SslResult

    Raises
    ------
    TrainingError
        The loss is not finite.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    try:
        torch.manual_seed(config.seed)
        data = (sources if isinstance(sources, torch.utils.data.Dataset)
                else SslCropDataset(sources, config))
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )
        batches = len(loader)
        if batches == 0:
            raise ValueError(f"fewer items ({len(data)}) than one batch ({config.batch_size})")
        model = SimSiam(backbone, config.projection_dim, config.prediction_dim).to(device)
        base_lr = config.lr * config.batch_size / 256.0
        optimizer = torch.optim.SGD(
            [
                {"params": list(model.backbone.parameters()) + list(model.projector.parameters()),
                 "fixed": False},
                {"params": list(model.predictor.parameters()), "fixed": True},
            ],
            lr=base_lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        total_steps = config.epochs * batches
        limit = None if config.max_minutes is None else config.max_minutes * 60.0
        history: list[dict[str, Any]] = []
        steps, stopped = 0, "epochs"
        model.train()
        for epoch in range(config.epochs):
            epoch_started = time.perf_counter()
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            loss_sum, spread_sum, done, lr = 0.0, 0.0, 0, base_lr
            for view1, view2 in loader:
                progress = steps / total_steps
                if limit is not None:
                    progress = max(progress, (time.perf_counter() - started) / limit)
                lr = base_lr * _cosine(progress)
                for group in optimizer.param_groups:
                    group["lr"] = base_lr if group["fixed"] else lr
                view1 = view1.to(device, non_blocking=True)
                view2 = view2.to(device, non_blocking=True)
                p1, p2, z1, z2 = model(view1, view2)
                loss = simsiam_loss(p1, p2, z1, z2)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the self-supervised loss is {float(loss)} at epoch {epoch}",
                        hint="lower the learning rate (--lr)",
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                done += 1
                value = float(loss.detach())
                spread = 0.5 * (embedding_spread(z1) + embedding_spread(z2))
                loss_sum += value
                spread_sum += spread
                yield Progress(
                    step=steps,
                    total=total_steps,
                    message=f"epoch {epoch + 1}/{config.epochs} batch {done}/{batches} "
                            f"loss {loss_sum / done:.4f}",
                    metrics={"epoch": epoch, "batch": done, "batches": batches, "loss": value,
                             "mean_loss": loss_sum / done, "spread": spread, "lr": lr},
                )
                if limit is not None and time.perf_counter() - started >= limit:
                    stopped = "time-limit"
                    break
            record = {
                "epoch": epoch,
                "loss": loss_sum / max(1, done),
                "spread": spread_sum / max(1, done),
                "lr": lr,
                "batches": done,
                "seconds": time.perf_counter() - epoch_started,
            }
            history.append(record)
            if checkpoint_path is not None:
                save_ssl_backbone(checkpoint_path, backbone, config, history)
            yield Progress(
                step=steps,
                total=total_steps,
                message=f"epoch {epoch + 1}/{config.epochs} loss {record['loss']:.4f} "
                        f"spread {record['spread']:.3f}",
                metrics=dict(record),
            )
            if stopped == "time-limit":
                break
        backbone.to("cpu")
        return SslResult(history=history, steps=steps, stopped=stopped,
                         seconds=time.perf_counter() - started)
    finally:
        if config.num_threads:
            torch.set_num_threads(previous_threads)


def save_ssl_backbone(
    path: str | Path,
    backbone: ResNet,
    config: SslConfig | None = None,
    history: Sequence[dict[str, Any]] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the backbone's weights for :func:`~napari_wsl_al.core.models.backbones.load_backbone_weights`.

    The file holds ``{"state_dict": <backbone state dict, torchvision names>, "ssl": {...}}``
    (``ssl``: depth, width, the :class:`SslConfig`, the loss history and ``extra``), readable
    with ``torch.load(path, weights_only=True)``. Written atomically (temporary file, then
    rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().clone() for key, value in backbone.state_dict().items()}
    meta = {
        "method": "simsiam",
        "depth": int(backbone.depth),
        "width": float(backbone.width),
        "config": config.to_dict() if config is not None else None,
        "history": [dict(record) for record in history],
        "extra": dict(extra or {}),
    }
    return atomic_write(path, lambda stream: torch.save({"state_dict": state, "ssl": meta}, stream),
                        binary=True)


def read_ssl_metadata(path: str | Path) -> dict[str, Any]:
    """The ``ssl`` record of a file written by :func:`save_ssl_backbone` (empty for other
    weight files)."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    return dict(payload.get("ssl") or {}) if isinstance(payload, dict) else {}


def new_backbone(depth: int = 18, width: float = 0.25, seed: int = 0) -> ResNet:
    """A freshly initialised backbone (seeded) to pre-train."""
    torch.manual_seed(seed)
    return resnet(depth=depth, width=width)
