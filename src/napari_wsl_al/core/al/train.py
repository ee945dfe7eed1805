"""Training the joint model's segmentation head from region labels (stage 1), stage-2 pseudo labels, prediction.

The model is :class:`~napari_wsl_al.core.models.joint.JointModel` (WACV'21, Fig. 3): a ResNet
backbone with a WILDCAT classification head, started from a weakly-supervised checkpoint (the
classifier first, as in the paper) or from scratch, and a U-Net head trained here.

Stage 1 (MulActSeg Eq. 10): pixel cross-entropy on regions labelled with one class, merged
positive and prototypical pixel losses on multi-class regions; unlabelled pixels are ignored.
Stage 2 (optional, Eq. 11-13): pseudo labels localised inside labelled regions and expanded to
adjacent unlabelled ones, trained with the pixel cross-entropy.
Label_prop (optional, WACV'21 Eq. 1): whole images near the labelled ones, with
pseudo-segmentations from the segmentation head, trained with the weight ``lambda``
(:func:`label_prop_loss`).

Inputs are :class:`RegionItem` images at the working resolution, each with its superpixel ids
(unique over all items); labels are a ``(R+1, K)`` multi-hot table indexed by region id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.patches import NO_AUGMENTATION, AugmentConfig, stain_jitter
from ..device import resolve_device
from ..errors import ActiveLearningError, TrainingError
from ..models.checkpoint import load_checkpoint
from ..models.factory import ModelConfig, build_model
from ..models.joint import IGNORE_INDEX, JointModel
from ..progress import Progress
from .losses import RegionLossConfig, pseudo_label_ce, region_loss
from .pseudo import LABEL_PROP_LAMBDA, label_prop_mask, stage2_labels

#: Model initialisations of a round.
INIT_CHOICES = ("previous", "wsl", "scratch")


@dataclass(frozen=True)
class RegionItem:
    """One image (a patch, or a tile of a slide) at the working resolution.

    Attributes
    ----------
    name : str
        Where it comes from (patch name, ``slide@x,y``).
    image : ndarray
        ``(H, W, 3)`` uint8 RGB.
    superpixels : ndarray
        ``(H, W)`` int region ids, unique over all items of a data set (0 = no region).
    """

    name: str
    image: np.ndarray
    superpixels: np.ndarray


@dataclass(frozen=True)
class RegionTrainConfig:
    """How a round trains the segmentation head.

    Attributes
    ----------
    steps : int
        Stage-1 optimisation steps (mini-batches).
    stage2_steps : int
        Steps on stage-2 pseudo labels after stage 1 (0: no stage 2).
    batch_size : int
        Crops per mini-batch.
    crop_size : int
        Side of the training crops (images smaller than that are padded, and padding ignored).
    lr, weight_decay : float
        AdamW (MulActSeg's optimiser).
    freeze_classifier : bool
        Keep the backbone and classification head fixed (WACV'21: classifier first, then
        frozen); False fine-tunes everything.
    ema : float
        When > 0, the model keeps an exponential moving average of its weights over the
        steps, with this decay (e.g. 0.99), and ends with the averaged weights; 0: the last
        step's weights.
    loss : RegionLossConfig
        Weights of Eq. 10.
    seed : int
        Crops, flips and batch order.
    self_training : float
        Weight of the self-training loss (0: off). After ``self_training_start`` of the
        stage-1 steps, the model labels every unlabelled pixel of the training images whose
        most probable class has probability above ``self_training_threshold`` (labelled
        regions keep their own labels), and each later step adds this weight times the pixel
        cross-entropy on those pseudo labels to Eq. 10; half of those steps' crops are drawn
        anywhere in the images instead of around labelled regions.
    self_training_threshold : float
        Confidence a pseudo label needs, in ``[0.5, 1)``.
    self_training_start : float
        Part of the stage-1 steps trained on the labels alone, in ``(0, 1)``.
    colour_jitter : float
        Colour augmentation of the training crops (0: off): the haematoxylin, eosin and DAB
        optical densities scaled and shifted by up to this fraction, brightness, contrast
        and saturation changed by up to 10 % and hue by up to 2 % of the circle
        (:func:`~napari_wsl_al.core.data.patches.stain_jitter`, the weakly-supervised
        training's colour defaults), before the model's own colour normalisation.
    """

    steps: int = 300
    stage2_steps: int = 0
    batch_size: int = 4
    crop_size: int = 192
    lr: float = 1e-3
    weight_decay: float = 1e-4
    freeze_classifier: bool = False
    ema: float = 0.0
    loss: RegionLossConfig = field(default_factory=RegionLossConfig)
    seed: int = 0
    self_training: float = 0.0
    self_training_threshold: float = 0.9
    self_training_start: float = 0.5
    colour_jitter: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.colour_jitter <= 1.0:
            raise ActiveLearningError(
                f"the colour jitter must be in [0, 1], not {self.colour_jitter}")
        if not (self.self_training >= 0 and math.isfinite(self.self_training)):
            raise ActiveLearningError(
                f"the self-training weight must be >= 0, not {self.self_training}")
        if not 0.5 <= self.self_training_threshold < 1.0:
            raise ActiveLearningError(
                "the self-training threshold must be in [0.5, 1), not "
                f"{self.self_training_threshold}")
        if not 0.0 < self.self_training_start < 1.0:
            raise ActiveLearningError(
                f"self_training_start must be in (0, 1), not {self.self_training_start}")

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["loss"] = self.loss.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegionTrainConfig:
        """Inverse of :meth:`to_json`."""
        data = dict(data)
        if "loss" in data:
            data["loss"] = RegionLossConfig.from_json(data["loss"])
        return cls(**data)


# ---------------------------------------------------------------------- models
def joint_config_from(config: ModelConfig, seg_classes: Sequence[str],
                      mpp: float | None = None) -> ModelConfig:
    """The joint model's configuration over the backbone of ``config`` (another architecture),
    reading images at ``mpp`` (default: the resolution of ``config``)."""
    return ModelConfig(
        arch="joint",
        classes=config.classes,
        depth=config.depth,
        width=config.width,
        dropout=config.dropout,
        output_stride=config.output_stride,
        seg_classes=tuple(seg_classes),
        mpp=config.mpp if mpp is None else float(mpp),
        mean=config.mean,
        std=config.std,
        colour_target=config.colour_target,
    )


def joint_from_wsl(model, seg_classes: Sequence[str],
                   mpp: float | None = None) -> tuple[JointModel, ModelConfig]:
    """A joint model whose backbone and classifier are those of a weakly-supervised model,
    reading images at ``mpp`` (default: the weakly-supervised model's resolution).

    The backbone is copied whole; the classification head is copied when its shapes match
    (WILDCAT heads: Max-Min's ``classifier_head``, WILDCAT's ``pooling``). The decoder starts
    fresh.
    """
    config = joint_config_from(model.config, seg_classes, mpp)
    joint = build_model(config)
    source = model.state_dict()
    target = joint.state_dict()
    copied = {}
    for name, tensor in source.items():
        for prefix in ("backbone.", "classifier_head.", "classification_head.", "pooling."):
            if name.startswith(prefix):
                suffix = name[len(prefix) :]
                mapped = ("backbone." if prefix == "backbone." else "classification_head.") + suffix
                if mapped in target and target[mapped].shape == tensor.shape:
                    copied[mapped] = tensor
    missing_backbone = [n for n in target if n.startswith("backbone.") and n not in copied]
    if missing_backbone:
        raise ActiveLearningError(
            f"the model's backbone does not fit a joint model ({len(missing_backbone)} tensors "
            "missing)",
            hint="start from a ResNet checkpoint of napari-wsl-al, or from scratch",
        )
    joint.load_state_dict({**target, **copied})
    joint.config = config
    return joint, config


def load_round_model(
    path: str | Path, seg_classes: Sequence[str], device: str | torch.device = "cpu",
    mpp: float | None = None,
) -> tuple[JointModel, ModelConfig]:
    """A joint model from a checkpoint: a round's joint checkpoint (at its own resolution), or
    a WSL one converted to a joint model reading images at ``mpp`` (default: its own)."""
    model, config, _ = load_checkpoint(path, device=device)
    if config.arch == "joint":
        if tuple(config.seg_classes) != tuple(seg_classes):
            raise ActiveLearningError(
                f"the checkpoint segments {list(config.seg_classes)}, not {list(seg_classes)}",
                path=path,
                hint="start from a checkpoint made for this project's classes",
            )
        return model, config
    joint, joint_config = joint_from_wsl(model, seg_classes, mpp)
    return joint.to(device), joint_config


# ---------------------------------------------------------------------- batches
def colour_jitter_config(strength: float) -> AugmentConfig | None:
    """The colour augmentation of :attr:`RegionTrainConfig.colour_jitter` (None when 0)."""
    if strength <= 0:
        return None
    return replace(NO_AUGMENTATION, hed=float(strength), brightness=0.1, contrast=0.1,
                   saturation=0.1, hue=0.02)


def _augment(arrays: list[np.ndarray], rng: np.random.Generator,
             colour: AugmentConfig | None = None) -> list[np.ndarray]:
    """Flips and quarter turns of every array alike; with ``colour``, the first array (the
    image) is then jittered in colour (the random draws of the geometry come first, so that
    crops without colour jitter are drawn as before)."""
    if rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if rng.random() < 0.5:
        arrays = [a[::-1] for a in arrays]
    turns = int(rng.integers(0, 4))
    out = [np.ascontiguousarray(np.rot90(a, turns)) for a in arrays]
    if colour is not None:
        out[0] = stain_jitter(out[0], rng, colour)
    return out


def _crop_around(
    item_arrays: list[np.ndarray], centre: tuple[int, int], size: int, fill: list
) -> list[np.ndarray]:
    """A ``size x size`` crop of every array around ``centre``, padded with ``fill`` outside."""
    height, width = item_arrays[0].shape[:2]
    top = int(np.clip(centre[0] - size // 2, min(0, height - size), max(0, height - size)))
    left = int(np.clip(centre[1] - size // 2, min(0, width - size), max(0, width - size)))
    out = []
    for array, value in zip(item_arrays, fill):
        crop = np.full((size, size) + array.shape[2:], value, dtype=array.dtype)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + size, height), min(left + size, width)
        crop[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
        out.append(crop)
    return out


def _to_tensor(model: JointModel, images: list[np.ndarray], device) -> torch.Tensor:
    """The model's input for a list of uint8 images. A model with a colour target
    normalises each image from its own statistics: a training crop from the crop's, not its
    whole image's (the crops' statistics vary, like a colour augmentation). On GlaS, 300
    random superpixels and 600 steps, normalising from the whole images instead scored 3.1
    points of Dice lower on average over the five folds by patient (0.723 against 0.693;
    lower on four folds): not better, though within the spread of one run per fold."""
    batch = torch.from_numpy(np.stack(images)).to(device)
    return model.normalize(batch)


def pad_to_stride(image: np.ndarray, stride: int = 32, fill=0) -> np.ndarray:
    """Pad an image (or label map) at the bottom and right to a multiple of ``stride``."""
    height, width = image.shape[:2]
    pad_h, pad_w = (-height) % stride, (-width) % stride
    if not pad_h and not pad_w:
        return image
    pad = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (image.ndim - 2)
    mode = "reflect" if image.ndim == 3 and min(height, width) > max(pad_h, pad_w) else "constant"
    if mode == "reflect":
        return np.pad(image, pad, mode="reflect")
    return np.pad(image, pad, constant_values=fill)


# ---------------------------------------------------------------------- prediction
@torch.inference_mode()
def predict_items(
    model: JointModel,
    items: Sequence[RegionItem],
    device: str | torch.device | None = "cpu",
    features: bool = False,
    mc_passes: int = 0,
) -> Generator[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None], None, None]:
    """Per item: ``(index, probs (K,H,W) float32, features (D,H,W) or None, mc (T,K,H,W) or None)``.

    Images are padded to a multiple of 32 for the network and the outputs cropped back.
    """
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    try:
        for index, item in enumerate(items):
            height, width = item.image.shape[:2]
            x = _to_tensor(model, [pad_to_stride(item.image)], device)
            output = model(x, return_features=features)
            probs = torch.softmax(output["seg_logits"].float(), dim=1)[0, :, :height, :width]
            feats = None
            if features:
                feats = output["seg_features"][0, :, :height, :width].float().cpu().numpy()
            mc = None
            if mc_passes > 0:
                from ..models.backbones import enable_mc_dropout

                enable_mc_dropout(model)
                passes = [
                    torch.softmax(model(x)["seg_logits"].float(), 1)[0, :, :height, :width]
                    for _ in range(mc_passes)
                ]
                model.eval()
                mc = torch.stack(passes).cpu().numpy()
            yield index, probs.cpu().numpy(), feats, mc
    finally:
        model.train(was_training)


@torch.inference_mode()
def predict_image_classes(
    model: JointModel, items: Sequence[RegionItem], device: str | torch.device | None = "cpu"
) -> np.ndarray:
    """Image-level class of every item by the classification head (argmax of its logits)."""
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    try:
        classes = [
            int(model(_to_tensor(model, [pad_to_stride(item.image)], device))["logits"].argmax(1))
            for item in items
        ]
    finally:
        model.train(was_training)
    return np.asarray(classes, dtype=np.int64)


def pseudo_segmentations(
    model: JointModel,
    items: Sequence[RegionItem],
    foreground_classes: Sequence[int] | None = None,
    device: str | torch.device | None = "cpu",
) -> list[np.ndarray]:
    """Label_prop's pseudo-segmentations ``m-hat`` of ``items`` by the segmentation head.

    Parameters
    ----------
    model : JointModel
        The newest model (WACV'21 Alg. 1, line 10: pseudo labels are made again every round).
    items : sequence of RegionItem
        The pseudo-labelled images.
    foreground_classes : sequence of (int or None), optional
        Per item, the segmentation class of its image-level class (foreground where
        ``1 - P(background) > 0.5``); None (for all items, or for one): every pixel's most
        probable class.
    device : str or torch.device, optional
        Where to predict.

    Returns
    -------
    list of ndarray
        ``(H, W)`` uint8 class maps (:func:`~napari_wsl_al.core.al.pseudo.label_prop_mask`).
    """
    if foreground_classes is not None and len(foreground_classes) != len(items):
        raise ActiveLearningError(
            f"{len(foreground_classes)} foreground classes for {len(items)} images")
    masks = []
    for index, probs, _, _ in predict_items(model, items, device):
        foreground = None if foreground_classes is None else foreground_classes[index]
        foreground = None if foreground is None else int(foreground)
        masks.append(label_prop_mask(probs, foreground))
    return masks


# ---------------------------------------------------------------------- training
def label_prop_loss(
    seg_logits: torch.Tensor,
    superpixels: torch.Tensor,
    region_classes: torch.Tensor,
    pseudo_labels: torch.Tensor,
    is_pseudo: torch.Tensor,
    weight: float = LABEL_PROP_LAMBDA,
    config: RegionLossConfig | None = None,
    region_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """WACV'21 Eq. 1 on a batch of oracle-labelled and pseudo-labelled crops.

    ``sum_L loss(f(x), m) + lambda sum_P loss(f(x), m-hat)``, estimated on a mini-batch of
    ``n_L`` crops of oracle-labelled images and ``n_P`` crops of pseudo-labelled ones drawn
    uniformly from ``L + P`` as

    ``(n_L * loss_L + lambda * n_P * loss_P) / (n_L + n_P)``

    where ``loss_L`` is the region loss (MulActSeg Eq. 10, :func:`region_loss`) of the
    oracle-labelled crops and ``loss_P = lambda_CE * CE`` the same loss on dense labels: Eq. 10
    for pixels that each carry one class, ``lambda_CE`` times the mean pixel cross-entropy
    over the pseudo-labelled pixels (:func:`pseudo_label_ce`). Its expectation is Eq. 1
    divided by ``|L| + |P|``.

    Parameters
    ----------
    seg_logits : Tensor
        ``(B, K, H, W)`` segmentation logits.
    superpixels : Tensor
        ``(B, H, W)`` region ids (read on the oracle-labelled crops only).
    region_classes : Tensor
        ``(R+1, K)`` multi-hot oracle labels.
    pseudo_labels : Tensor
        ``(B, H, W)`` pseudo-segmentations (read on the pseudo-labelled crops only;
        ``IGNORE_INDEX`` where none).
    is_pseudo : Tensor
        ``(B,)`` bool, which crops come from pseudo-labelled images.
    weight : float
        ``lambda``.
    config : RegionLossConfig, optional
        Weights of Eq. 10 (default: the paper's).
    region_weights : Tensor, optional
        ``(R+1,)`` weight of each oracle region.

    Returns
    -------
    loss : Tensor
        Scalar loss.
    parts : dict
        ``labelled`` (``loss_L``), ``pseudo`` (``loss_P``), ``labelled_crops``, ``pseudo_crops``.
    """
    if not weight >= 0:
        raise ActiveLearningError(f"lambda must be >= 0, not {weight}")
    config = RegionLossConfig() if config is None else config
    is_pseudo = torch.as_tensor(is_pseudo, dtype=torch.bool, device=seg_logits.device)
    if tuple(is_pseudo.shape) != (seg_logits.shape[0],):
        raise ActiveLearningError(
            f"is_pseudo has shape {tuple(is_pseudo.shape)}; expected ({seg_logits.shape[0]},)")
    labelled = ~is_pseudo
    n_labelled, n_pseudo = int(labelled.sum()), int(is_pseudo.sum())
    zero = seg_logits.sum() * 0.0
    loss_labelled = loss_pseudo = zero
    if n_labelled:
        loss_labelled, _ = region_loss(seg_logits[labelled], superpixels[labelled],
                                       region_classes, config, region_weights=region_weights)
    if n_pseudo:
        loss_pseudo = config.lambda_ce * pseudo_label_ce(seg_logits[is_pseudo],
                                                         pseudo_labels[is_pseudo])
    total = max(n_labelled + n_pseudo, 1)
    loss = (n_labelled * loss_labelled + weight * n_pseudo * loss_pseudo) / total
    return loss, {
        "labelled": float(loss_labelled.detach()),
        "pseudo": float(loss_pseudo.detach()),
        "labelled_crops": float(n_labelled),
        "pseudo_crops": float(n_pseudo),
    }


def _labelled_pixels(items: Sequence[RegionItem], labelled: np.ndarray) -> list[np.ndarray]:
    """Per item, the flat indices of its pixels in labelled regions."""
    return [np.flatnonzero(labelled[item.superpixels.ravel()]) for item in items]


class _Optimiser:
    """AdamW with a cosine decay over ``total`` steps, and the checks of one step."""

    def __init__(self, model: JointModel, config: RegionTrainConfig, total: int):
        if config.freeze_classifier:
            model.freeze_classifier()
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1))),
        )
        self.total = total
        self.history: list[float] = []
        if not 0.0 <= config.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), not {config.ema}")
        self.decay = config.ema
        self.average = (
            [p.detach().clone() for p in model.parameters()] if config.ema > 0 else None
        )

    def step(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` and update; a loss that is not finite stops training."""
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss is not finite at step {len(self.history) + 1}",
                hint="lower the learning rate",
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        if self.average is not None:
            with torch.no_grad():
                for average, p in zip(self.average, self.model.parameters()):
                    average.lerp_(p.detach(), 1.0 - self.decay)
        self.model.segmentation_trained.fill_(1.0)
        self.history.append(float(loss.detach()))

    def finish(self) -> None:
        """Give the model the averaged weights (``ema``); nothing without averaging."""
        if self.average is not None:
            with torch.no_grad():
                for average, p in zip(self.average, self.model.parameters()):
                    p.copy_(average)

    def progress(self, what: str) -> Progress | None:
        """A progress record every ten steps and at the end."""
        done = len(self.history)
        if done % 10 and done != self.total:
            return None
        return Progress(
            done,
            self.total,
            f"{what}: step {done} of {self.total}",
            {"loss": float(np.mean(self.history[-10:]))},
        )


def train_regions(
    model: JointModel,
    items: Sequence[RegionItem],
    region_classes: np.ndarray,
    config: RegionTrainConfig = RegionTrainConfig(),
    device: str | torch.device | None = "cpu",
    adjacency: np.ndarray | None = None,
    region_weights: np.ndarray | None = None,
    pseudo_maps: Sequence[np.ndarray | None] | None = None,
    pseudo_weight: float = LABEL_PROP_LAMBDA,
) -> Generator[Progress, None, dict[str, Any]]:
    """Train the segmentation head on labelled regions; a generator of :class:`Progress`.

    With ``pseudo_maps`` (Label_prop), the stage-1 steps minimise WACV'21 Eq. 1: every crop is
    drawn from an image holding labelled regions or from a pseudo-labelled one (an item with a
    map), each image as likely, and the batch loss is :func:`label_prop_loss`. Stage 2 trains
    on the labelled images only.

    Parameters
    ----------
    model : JointModel
        Trained in place (left in eval mode).
    items : sequence of RegionItem
        Images with their superpixels; only those holding labelled regions are used.
    region_classes : ndarray of bool
        ``(R+1, K)`` multi-hot label of every region (all False: unlabelled).
    config : RegionTrainConfig
        Steps, batch, optimiser, loss weights.
    device : str or torch.device, optional
        Where to train.
    adjacency : ndarray, optional
        ``(E, 2)`` adjacent region pairs, for the label expansion of stage 2.
    region_weights : ndarray, optional
        ``(R+1,)`` weight of each region's loss (pseudo-labelled regions < 1).
    pseudo_maps : sequence of (ndarray or None), optional
        One per item: the ``(H, W)`` pseudo-segmentation of a pseudo-labelled image
        (:func:`pseudo_segmentations`), None for the others.
    pseudo_weight : float
        ``lambda`` of Eq. 1.

    Returns
    -------
    dict
        ``loss`` (mean of the last 20 steps), ``history`` (per-step loss), ``seconds``,
        ``stage2_pixels`` (pseudo-labelled pixels of stage 2), ``self_training_pixels``
        (pixels pseudo-labelled for self-training), ``labelled_images``,
        ``pseudo_images`` (images trained on with their pseudo-segmentation).

    Raises
    ------
    ActiveLearningError
        When no item holds a labelled region, or the pseudo maps do not fit the items.
    TrainingError
        When the loss stops being finite.
    """
    device = resolve_device(device)
    region_classes = np.asarray(region_classes, dtype=bool)
    labelled = region_classes.any(axis=1)
    pixel_index = _labelled_pixels(items, labelled)
    used = [i for i, idx in enumerate(pixel_index) if idx.size]
    if not used:
        raise ActiveLearningError(
            "no labelled region to train on", hint="label some suggested regions first"
        )
    pseudo = _check_pseudo_maps(items, pseudo_maps)
    if not pseudo_weight >= 0:
        raise ActiveLearningError(f"lambda must be >= 0, not {pseudo_weight}")
    if pseudo and config.self_training:
        raise ActiveLearningError(
            "self-training and Label_prop pseudo labels cannot be combined",
            hint="set the self-training weight to 0 or leave Label_prop off")
    self_start = (
        max(1, round(config.steps * config.self_training_start))
        if config.self_training and config.steps > 1 else None
    )
    self_maps: list[np.ndarray] | None = None
    # Crops are drawn from L + P, every image as likely (Eq. 1 sums over images).
    sources = [(i, False) for i in used] + [(i, True) for i in pseudo]
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model.to(device)
    total = config.steps + config.stage2_steps
    optimiser = _Optimiser(model, config, total)
    history = optimiser.history
    classes_t = torch.from_numpy(region_classes).to(device)
    weights_t = (
        None
        if region_weights is None
        else torch.as_tensor(region_weights, dtype=torch.float32, device=device)
    )
    start = time.perf_counter()
    size = config.crop_size
    colour = colour_jitter_config(config.colour_jitter)

    def sample_batch(label_maps: list[np.ndarray] | None):
        images, sps, targets, from_pseudo = [], [], [], []
        for k in range(config.batch_size):
            anywhere = self_maps is not None and label_maps is None and k % 2 == 1
            if anywhere:  # self-training: every other crop anywhere in any image
                i, is_pseudo = int(rng.integers(len(items))), False
            elif label_maps is None:
                i, is_pseudo = sources[int(rng.integers(len(sources)))]
            else:
                i, is_pseudo = used[int(rng.integers(len(used)))], False
            item = items[i]
            width = item.image.shape[1]
            if is_pseudo or anywhere:
                centre = divmod(int(rng.integers(item.image.shape[0] * width)), width)
            else:
                flat = pixel_index[i][int(rng.integers(pixel_index[i].size))]
                centre = divmod(int(flat), width)
            target = pseudo_maps[i] if is_pseudo else (
                label_maps[i] if label_maps is not None
                else None if self_maps is None else self_maps[i])
            arrays = [item.image, item.superpixels]
            fill = [0, 0]
            if target is not None:
                arrays.append(target)
                fill.append(IGNORE_INDEX)
            crops = _augment(_crop_around(arrays, centre, size, fill), rng, colour)
            images.append(crops[0])
            sps.append(crops[1].astype(np.int64))
            targets.append(
                crops[2].astype(np.int64) if target is not None
                else np.full((size, size), IGNORE_INDEX, dtype=np.int64))
            from_pseudo.append(is_pseudo)
        return images, sps, targets, from_pseudo

    model.train()
    for step in range(total):
        stage2 = step >= config.steps
        if stage2 and step == config.steps:
            yield Progress(
                step, total, "stage 2: pseudo labels inside and next to labelled regions"
            )
            label_maps = _stage2_maps(model, items, used, region_classes, adjacency, device)
            model.train()
        if step == self_start:
            yield Progress(step, total, "self-training: pseudo labels of the unlabelled pixels")
            self_maps = self_training_maps(
                model, items, labelled, config.self_training_threshold, device)
            model.train()
        images, sps, targets, from_pseudo = sample_batch(label_maps if stage2 else None)
        x = _to_tensor(model, images, device)
        seg_logits = model(x)["seg_logits"]
        if stage2:
            loss = pseudo_label_ce(seg_logits, torch.from_numpy(np.stack(targets)).to(device))
        elif pseudo:
            loss, _ = label_prop_loss(
                seg_logits, torch.from_numpy(np.stack(sps)).to(device), classes_t,
                torch.from_numpy(np.stack(targets)).to(device), torch.tensor(from_pseudo),
                pseudo_weight, config.loss, region_weights=weights_t)
        else:
            sp = torch.from_numpy(np.stack(sps)).to(device)
            loss, _ = region_loss(seg_logits, sp, classes_t, config.loss, region_weights=weights_t)
            if self_maps is not None:
                loss = loss + config.self_training * pseudo_label_ce(
                    seg_logits, torch.from_numpy(np.stack(targets)).to(device))
        optimiser.step(loss)
        record = optimiser.progress("training")
        if record is not None:
            yield record
    optimiser.finish()
    model.eval()
    stage2_pixels = 0
    if config.stage2_steps:
        stage2_pixels = int(
            sum(int((m != IGNORE_INDEX).sum()) for m in label_maps if m is not None)
        )
    return {
        "loss": float(np.mean(history[-20:])),
        "history": history,
        "seconds": time.perf_counter() - start,
        "stage2_pixels": stage2_pixels,
        "self_training_pixels": (
            0 if self_maps is None else int(sum(int((m != IGNORE_INDEX).sum()) for m in self_maps))
        ),
        "labelled_images": len(used),
        "pseudo_images": len(pseudo),
    }


def _check_pseudo_maps(items: Sequence[RegionItem], pseudo_maps) -> list[int]:
    """Indices of the items with a pseudo-segmentation, after checking the maps' shapes."""
    if pseudo_maps is None:
        return []
    if len(pseudo_maps) != len(items):
        raise ActiveLearningError(
            f"{len(pseudo_maps)} pseudo maps for {len(items)} images",
            hint="give one map (or None) per image")
    indices = []
    for index, (item, mask) in enumerate(zip(items, pseudo_maps)):
        if mask is None:
            continue
        if np.shape(mask) != item.image.shape[:2]:
            raise ActiveLearningError(
                f"the pseudo map of {item.name} is {np.shape(mask)}, the image "
                f"{item.image.shape[:2]}", hint="make the pseudo maps from the same images")
        indices.append(index)
    return indices


def _stage2_maps(model, items, used, region_classes, adjacency, device) -> list[np.ndarray | None]:
    """Stage-2 pixel pseudo labels of the items in ``used`` (None for the others)."""
    maps: list[np.ndarray | None] = [None] * len(items)
    subset = [items[i] for i in used]
    classes_t = torch.from_numpy(region_classes)
    adjacency_t = (
        None if adjacency is None else torch.as_tensor(np.asarray(adjacency), dtype=torch.int64)
    )
    for k, probs, feats, _ in predict_items(model, subset, device, features=True):
        sp = torch.from_numpy(subset[k].superpixels.astype(np.int64))[None]
        labels = stage2_labels(
            torch.from_numpy(feats)[None], torch.from_numpy(probs)[None], sp, classes_t, adjacency_t
        )
        maps[used[k]] = np.asarray(labels[0].cpu().numpy(), dtype=np.int64)
    return maps


def self_training_maps(
    model: JointModel,
    items: Sequence[RegionItem],
    labelled: np.ndarray,
    threshold: float,
    device: str | torch.device | None = "cpu",
) -> list[np.ndarray]:
    """Self-training pseudo labels: per item, the ``(H, W)`` most probable class of every pixel
    whose probability exceeds ``threshold``, ``IGNORE_INDEX`` elsewhere and on the pixels of
    labelled regions (``labelled``: ``(R+1,)`` bool over region ids)."""
    return [
        confident_labels(probs, items[index].superpixels, labelled, threshold)
        for index, probs, _, _ in predict_items(model, items, device)
    ]


def confident_labels(
    probs: np.ndarray, superpixels: np.ndarray, labelled: np.ndarray, threshold: float
) -> np.ndarray:
    """The ``(H, W)`` uint8 most probable class of ``(K, H, W)`` ``probs`` where its
    probability exceeds ``threshold`` and the pixel's region (``superpixels``, ids into the
    ``(R+1,)`` bool ``labelled``) has no label; ``IGNORE_INDEX`` elsewhere."""
    probs = np.asarray(probs)
    confident = probs.max(axis=0) > threshold
    confident &= ~np.asarray(labelled, dtype=bool)[superpixels]
    return np.where(confident, probs.argmax(axis=0), IGNORE_INDEX).astype(np.uint8)


def train_dense(
    model: JointModel,
    items: Sequence[RegionItem],
    label_maps: Sequence[np.ndarray],
    config: RegionTrainConfig = RegionTrainConfig(),
    device: str | torch.device | None = "cpu",
) -> Generator[Progress, None, dict[str, Any]]:
    """Full supervision of the same model: pixel cross-entropy on dense label maps.

    ``label_maps`` are ``(H, W)`` class maps (``IGNORE_INDEX`` where unknown), one per item.
    This is the bar active learning is measured against.
    """
    device = resolve_device(device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model.to(device)
    total = config.steps
    optimiser = _Optimiser(model, config, total)
    history = optimiser.history
    colour = colour_jitter_config(config.colour_jitter)
    start = time.perf_counter()
    model.train()
    for _ in range(total):
        images, targets = [], []
        for _ in range(config.batch_size):
            i = int(rng.integers(len(items)))
            height, width = items[i].image.shape[:2]
            centre = (int(rng.integers(height)), int(rng.integers(width)))
            crops = _augment(
                _crop_around(
                    [items[i].image, np.asarray(label_maps[i])],
                    centre,
                    config.crop_size,
                    [0, IGNORE_INDEX],
                ),
                rng,
                colour,
            )
            images.append(crops[0])
            targets.append(crops[1].astype(np.int64))
        seg_logits = model(_to_tensor(model, images, device))["seg_logits"]
        loss = pseudo_label_ce(seg_logits, torch.from_numpy(np.stack(targets)).to(device))
        optimiser.step(loss)
        record = optimiser.progress("full supervision")
        if record is not None:
            yield record
    optimiser.finish()
    model.eval()
    return {
        "loss": float(np.mean(history[-20:])),
        "history": history,
        "seconds": time.perf_counter() - start,
    }


def segmentation_labels(probs: np.ndarray) -> np.ndarray:
    """The class of every pixel as the maps show it: background where ``P(background) >= 0.5``,
    elsewhere the most probable foreground class.

    The foreground map is ``1 - P(background)``; deciding foreground first keeps a pixel whose
    foreground probability is split between several classes (each below the background's)
    in the foreground, where the plain argmax would call it background.

    Parameters
    ----------
    probs : ndarray
        ``(K, ...)`` class probabilities, background first (``K >= 2``).

    Returns
    -------
    ndarray of int64
        ``(...)`` class indices.
    """
    probs = np.asarray(probs)
    foreground_class = probs[1:].argmax(axis=0) + 1
    return np.where(probs[0] < 0.5, foreground_class, 0).astype(np.int64)


def segmentation_scores(
    model: JointModel,
    items: Sequence[RegionItem],
    label_maps: Sequence[np.ndarray],
    device: str | torch.device | None = "cpu",
) -> dict[str, float]:
    """Foreground Dice and mIoU of the segmentation head against dense truth.

    Pixels are classed by :func:`segmentation_labels` (foreground where
    ``1 - P(background) > 0.5``, the map the user sees, then its most probable class).
    ``dice``: foreground (any class but 0) against the truth's, per image, then averaged;
    ``fg_dice``: the same (kept under its earlier name); ``argmax_dice``: the same with the most
    probable class of every pixel, which calls background a pixel whose foreground probability
    is split between several classes; ``miou``: over the segmentation classes, one confusion
    matrix of :func:`segmentation_labels` over all pixels; ``argmax_miou``: the same with the
    most probable class.
    """
    from ..metrics import confusion_matrix, dice, mean_iou

    n_classes = len(model.seg_classes)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    argmax_confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    dices, argmax_dices = [], []
    for index, probs, _, _ in predict_items(model, items, device):
        truth = np.asarray(label_maps[index])
        valid = truth != IGNORE_INDEX
        predicted = segmentation_labels(probs)[valid]
        most_probable = probs.argmax(axis=0)[valid]
        confusion += confusion_matrix(truth[valid], predicted, n_classes)
        argmax_confusion += confusion_matrix(truth[valid], most_probable, n_classes)
        dices.append(dice(truth[valid] > 0, predicted > 0))
        argmax_dices.append(dice(truth[valid] > 0, most_probable > 0))
    mean_dice = float(np.mean(dices)) if dices else float("nan")
    return {
        "dice": mean_dice,
        "fg_dice": mean_dice,
        "argmax_dice": float(np.mean(argmax_dices)) if argmax_dices else float("nan"),
        "miou": mean_iou(confusion),
        "argmax_miou": mean_iou(argmax_confusion),
    }
