"""Weakly-supervised training loop (image-level labels) and evaluation of classification and localisation.

The loop works with every :class:`~napari_wsl_al.core.models.base.WslModel`: it calls only
``model.training_step``, ``model.end_epoch``, ``model(x)`` and ``model.localize``. It is a
generator yielding one :class:`~napari_wsl_al.core.progress.Progress` per epoch (and, when asked,
one per batch) and returning a :class:`TrainResult`; drain it with
:func:`~napari_wsl_al.core.progress.run_to_end`, or stop it between two records by closing it
(a napari thread worker's ``quit()``). Epochs are numbered from 0, as passed to
``training_step`` and ``end_epoch``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.glas import PatchDataset
from ..data.patches import IGNORE_INDEX, AugmentConfig, PatchTorchDataset, seed_worker
from ..device import resolve_device
from ..errors import TrainingError
from ..metrics import (
    all_ones_baseline,
    classification_error,
    confusion_matrix,
    foreground_background_f1,
    pixel_average_precision,
)
from ..progress import Progress

logger = logging.getLogger(__name__)

#: Learning-rate schedules of :class:`TrainConfig`.
LR_SCHEDULES = ("constant", "step", "cosine")
#: Epoch selection rules of :class:`TrainConfig`.
SELECT_ON = ("error", "loss", "last")


@dataclass(frozen=True)
class TrainConfig:
    """Parameters of :func:`train_wsl`.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs.
    batch_size : int
        Training images per batch.
    crop_size : int
        Side of the random square training crops (pixels at ``target_mpp``).
    lr : float
        Initial learning rate of SGD.
    momentum : float
        SGD momentum.
    nesterov : bool
        Nesterov momentum.
    weight_decay : float
        L2 penalty.
    lr_schedule : str
        ``"cosine"`` (to ``lr * lr_min_factor`` at the last epoch), ``"step"`` (times
        ``lr_step_gamma`` every ``lr_step_epochs``) or ``"constant"``.
    lr_step_epochs, lr_step_gamma : int, float
        Period and factor of the step schedule.
    lr_min_factor : float
        Final learning rate of the cosine schedule, relative to ``lr``.
    patience : int or None
        Stop when the validation classification error (ties broken by the validation
        cross-entropy) has not improved for this many epochs; None: never stop early.
    min_epochs : int
        Never stop early before this many epochs.
    seed : int
        Seed of shuffling, augmentation and torch's random draws (dropout).
    device : str
        ``"auto"`` (best available), ``"cpu"``, ``"cuda"``, ``"mps"`` ...
    num_workers : int
        Data-loading worker processes (0: in the training process).
    max_minutes : float or None
        Wall-time bound: no epoch is started that would end after it (estimated from the
        epochs so far).
    num_threads : int or None
        ``torch.set_num_threads`` for the run (restored afterwards); None: leave as is.
    target_mpp : float or None
        Resolution at which images are read (rescaled from the data set's mpp); None: as stored.
    eval_crop_size : int or None
        Validation on a center crop of this size; None: full images padded to a multiple of 32.
    threshold : float
        Foreground probability above which a pixel is foreground, for F1+ / F1-.
    eval_every : int
        Validate every this many epochs (and always after the last one); only validated
        epochs can be selected as best.
    augment : AugmentConfig
        Training augmentation.
    warmup_epochs : int
        Linear warm-up: epoch ``e < warmup_epochs`` uses ``lr * (e + 1) / (warmup_epochs + 1)``;
        the schedule then runs over the remaining epochs.
    ema_decay : float or None
        Exponential moving average of the weights, updated after every step with this decay
        (e.g. 0.99); validation and the returned model use the averaged weights. None: off.
    select_on : str
        How the kept epoch is chosen: ``"error"`` (lowest validation classification error,
        ties broken by the validation cross-entropy), ``"loss"`` (lowest validation
        cross-entropy) or ``"last"`` (the last epoch; early stopping is then off).
    cutmix : float
        Probability that a training image gets a random box (a quarter to a half of its area)
        pasted from another image of the same class in the batch; the label is unchanged.
    tta_flips : bool
        Validation averages the predictions over the four flips of each image.
    """

    epochs: int = 30
    batch_size: int = 8
    crop_size: int = 224
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    lr_step_epochs: int = 10
    lr_step_gamma: float = 0.1
    lr_min_factor: float = 0.01
    patience: int | None = 10
    min_epochs: int = 1
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    max_minutes: float | None = None
    num_threads: int | None = None
    target_mpp: float | None = None
    eval_crop_size: int | None = None
    threshold: float = 0.5
    eval_every: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    warmup_epochs: int = 0
    ema_decay: float | None = None
    select_on: str = "error"
    cutmix: float = 0.0
    tta_flips: bool = False

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if not 0.0 <= self.cutmix <= 1.0:
            raise ValueError(f"cutmix must be in [0, 1], got {self.cutmix}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} of {self.epochs}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy of the parameters."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)

    def learning_rate(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (0-based)."""
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / (self.warmup_epochs + 1)
        epoch -= self.warmup_epochs
        epochs = self.epochs - self.warmup_epochs
        if self.lr_schedule == "step":
            return self.lr * self.lr_step_gamma ** (epoch // max(1, self.lr_step_epochs))
        if self.lr_schedule == "cosine":
            if epochs <= 1:
                return self.lr
            progress = epoch / (epochs - 1)
            low = self.lr * self.lr_min_factor
            return low + 0.5 * (self.lr - low) * (1.0 + math.cos(math.pi * progress))
        return self.lr


@dataclass
class TrainResult:
    """Outcome of :func:`train_wsl`.

    Attributes
    ----------
    best_epoch : int
        Epoch (0-based) whose weights the model holds now.
    best_metrics : dict
        That epoch's record in ``history``.
    history : list of dict
        One record per epoch: ``epoch``, ``lr``, ``train_loss``, ``train_<part>``, ``val_error``,
        ``val_loss``, ``val_f1_pos``, ``val_f1_neg`` (when there are masks), ``seconds``.
    stopped : str
        Why training ended: ``"epochs"``, ``"early-stopping"`` or ``"time-limit"``.
    seconds : float
        Wall time of the whole run.
    checkpoint_path : Path or None
        The best checkpoint, when ``checkpoint_dir`` was given.
    """

    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    stopped: str
    seconds: float
    checkpoint_path: Path | None = None


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_torch_dataset(
    dataset, model: nn.Module, config: TrainConfig, train: bool
) -> torch.utils.data.Dataset:
    """Wrap a :class:`PatchDataset` for training or evaluation; torch data sets pass through."""
    if not isinstance(dataset, PatchDataset):
        return dataset
    return PatchTorchDataset(
        dataset,
        mean=getattr(model, "mean", (0.485, 0.456, 0.406)),
        std=getattr(model, "std", (0.229, 0.224, 0.225)),
        train=train,
        crop_size=config.crop_size if train else config.eval_crop_size,
        augment=config.augment,
        target_mpp=config.target_mpp,
        pad_multiple=int(getattr(model, "output_stride", 32) or 32),
        seed=config.seed,
        colour_target=getattr(model, "colour_target", None),
    )


def same_class_cutmix(
    images: torch.Tensor, labels: torch.Tensor, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """Paste into some images a random box cut from another image of the same class.

    Each image is chosen with ``probability``; its box covers a fraction of the image drawn
    uniformly in ``[1/4, 1/2]`` (same fraction of height and width), at a random place, and is
    copied from the same place of another image of the batch with the same label. Images with
    no partner of their class are left alone; the labels are unchanged.

    Returns
    -------
    torch.Tensor
        A new batch (``images`` is not modified).
    """
    if probability <= 0.0 or images.shape[0] < 2:
        return images
    mixed = images.clone()
    height, width = images.shape[-2:]
    draws = torch.rand(images.shape[0], 4, generator=generator).tolist()
    flat = labels.reshape(labels.shape[0], -1)
    for i, (chosen, fraction, top, left) in enumerate(draws):
        if chosen >= probability:
            continue
        partners = [j for j in range(images.shape[0])
                    if j != i and torch.equal(flat[j], flat[i])]
        if not partners:
            continue
        j = partners[int(torch.randint(len(partners), (1,), generator=generator))]
        side = math.sqrt(0.25 + 0.25 * fraction)
        box_h, box_w = max(1, round(height * side)), max(1, round(width * side))
        y, x = int(top * (height - box_h + 1)), int(left * (width - box_w + 1))
        mixed[i, :, y:y + box_h, x:x + box_w] = images[j, :, y:y + box_h, x:x + box_w]
    return mixed


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * model`` for the parameters; buffers
    (batch-norm statistics, schedules) are copied from ``model``."""
    for mean, parameter in zip(average.parameters(), model.parameters()):
        mean.lerp_(parameter.detach(), 1.0 - decay)
    for mine, theirs in zip(average.buffers(), model.buffers()):
        mine.copy_(theirs)


def _is_better(candidate: dict, best: dict | None, select_on: str = "error") -> bool:
    if best is None:
        return True
    if select_on == "last":
        return True
    if select_on == "loss":
        loss, best_loss = candidate.get("val_loss"), best.get("val_loss")
        if loss is None or best_loss is None or math.isnan(loss):
            return False
        return loss < best_loss - 1e-12
    error, best_error = candidate.get("val_error"), best.get("val_error")
    if error is None or best_error is None or math.isnan(error):
        return False
    if error < best_error - 1e-12:
        return True
    return error <= best_error + 1e-12 and candidate["val_loss"] < best["val_loss"] - 1e-12


def train_wsl(
    model: nn.Module,
    train_set,
    val_set,
    config: TrainConfig = TrainConfig(),
    checkpoint_dir: str | Path | None = None,
    model_config=None,
    extra: dict | None = None,
    batch_progress: bool = False,
) -> Generator[Progress, None, TrainResult]:
    """Train a WSL model from image-level labels, selecting the epoch by validation error.

    Parameters
    ----------
    model : WslModel
        The model; trained in place. At the end it holds the weights of the best epoch.
    train_set, val_set : PatchDataset or torch Dataset
        Training and validation data; a :class:`PatchDataset` is wrapped in a
        :class:`PatchTorchDataset` (random crops and augmentation for training, full padded
        images for validation). ``val_set`` may be None or empty: then the last epoch is kept.
        Items are ``(image, label, mask)``.
    config : TrainConfig
        Parameters.
    checkpoint_dir : str or Path, optional
        Where the best weights are saved (``best.pt``) each time they improve.
    model_config : ModelConfig, optional
        The model's configuration, stored in the checkpoint (default: ``model.config``).
    extra : dict, optional
        Stored in the checkpoint's ``extra`` along with the training history.
    batch_progress : bool
        Also yield a record after every training batch, so that the consumer can stop
        training between batches (by closing the generator) and show the loss as it goes.

    Yields
    ------
    Progress
        One per epoch; ``metrics`` holds that epoch's history record. With
        ``batch_progress``, also one after each training batch, counting batches
        (``step`` of ``total`` over the whole run); its ``metrics`` hold ``epoch``,
        ``batch`` (1-based), ``batches`` (per epoch), ``batch_loss`` and ``train_loss`` (the
        epoch's mean so far). Only batch records have the ``batch`` key.

    Returns
    -------
    TrainResult
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    try:
        seed_everything(config.seed)
        train_data = make_torch_dataset(train_set, model, config, train=True)
        has_val = val_set is not None and len(val_set) > 0
        val_data = make_torch_dataset(val_set, model, config, train=False) if has_val else None
        if len(train_data) == 0:
            raise ValueError("the training set is empty")
        shuffle_generator = torch.Generator().manual_seed(config.seed)
        loader = torch.utils.data.DataLoader(
            train_data,
            batch_size=min(config.batch_size, len(train_data)),
            shuffle=True,
            drop_last=len(train_data) > config.batch_size,  # no batch of 1 for batch norm
            num_workers=config.num_workers,
            worker_init_fn=seed_worker if config.num_workers else None,
            generator=shuffle_generator,
            persistent_workers=False,
        )
        model.to(device)
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
        average = copy.deepcopy(model) if config.ema_decay else None
        kept = average if average is not None else model  # the weights validated and kept
        mix_generator = torch.Generator().manual_seed(config.seed + 1)
        checkpoint_path = None
        if checkpoint_dir is not None:
            checkpoint_path = Path(checkpoint_dir) / "best.pt"
            checkpoint_path.parent.mkdir(parents=True, exist_ok=True)

        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        best_state = None
        stopped = "epochs"
        for epoch in range(config.epochs):
            elapsed = time.perf_counter() - started
            if config.max_minutes is not None and history:
                per_epoch = elapsed / len(history)
                if elapsed + per_epoch > config.max_minutes * 60.0:
                    stopped = "time-limit"
                    break
            epoch_started = time.perf_counter()
            lr = config.learning_rate(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if hasattr(train_data, "set_epoch"):
                train_data.set_epoch(epoch)
            model.train()
            sums: dict[str, float] = {}
            total_loss, batches = 0.0, 0
            for images, labels, *_ in loader:
                images = same_class_cutmix(images, labels, config.cutmix, mix_generator)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss, parts = model.training_step(images, labels, epoch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss is {float(loss)} at epoch {epoch}",
                        hint="lower the learning rate (--lr) or check the images for NaNs",
                    )
                loss.backward()
                optimizer.step()
                if average is not None:
                    update_ema(average, model, config.ema_decay)
                total_loss += float(loss.detach())
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + float(value)
                batches += 1
                if batch_progress:
                    yield _batch_record(epoch, batches, len(loader), config.epochs,
                                        float(loss.detach()), total_loss / batches)
            model.end_epoch(epoch)
            if average is not None:
                update_ema(average, model, 1.0)  # only the buffers, such as Max-Min's t
            record: dict[str, Any] = {"epoch": epoch, "lr": lr}
            record["train_loss"] = total_loss / max(1, batches)
            record.update(
                {f"train_{name}": value / max(1, batches) for name, value in sums.items()
                 if name != "loss"}
            )
            record["train_seconds"] = time.perf_counter() - epoch_started
            last_epoch = epoch == config.epochs - 1 or (
                config.max_minutes is not None
                and (time.perf_counter() - started) * (len(history) + 2) / (len(history) + 1)
                > config.max_minutes * 60.0
            )
            validated = has_val and (last_epoch or (epoch + 1) % config.eval_every == 0)
            if validated:
                scores = evaluate(kept, val_data, device, threshold=config.threshold,
                                  flips=config.tta_flips)
                record.update({f"val_{name}": value for name, value in scores.items()
                               if not isinstance(value, list)})
            record["seconds"] = time.perf_counter() - epoch_started
            history.append(record)

            if config.select_on == "last" or not has_val:
                improved = True
            else:
                improved = validated and _is_better(record, best, config.select_on)
            if improved:
                best = record
                best_state = copy.deepcopy(kept.state_dict())
                if checkpoint_path is not None:
                    _save_best(checkpoint_path, kept, model_config, extra, config, history, record)
            epochs_without_improvement = epoch - best["epoch"] if best else epoch + 1
            message = f"epoch {epoch + 1}/{config.epochs} loss {record['train_loss']:.4f}"
            if validated:
                message += f" val error {record['val_error']:.3f}"
                if "val_f1_pos" in record:
                    message += f" F1+ {record['val_f1_pos']:.3f} F1- {record['val_f1_neg']:.3f}"
            yield Progress(step=epoch + 1, total=config.epochs, message=message, metrics=dict(record))
            if (
                validated
                and config.select_on != "last"
                and config.patience is not None
                and epoch + 1 >= config.min_epochs
                and epochs_without_improvement >= config.patience
            ):
                stopped = "early-stopping"
                break

        if best_state is not None:
            model.load_state_dict(best_state)
        return TrainResult(
            best_epoch=int(best["epoch"]) if best else -1,
            best_metrics=dict(best) if best else {},
            history=history,
            stopped=stopped,
            seconds=time.perf_counter() - started,
            checkpoint_path=checkpoint_path,
        )
    finally:
        if config.num_threads:
            torch.set_num_threads(previous_threads)


def _batch_record(epoch: int, batch: int, batches: int, epochs: int, batch_loss: float,
                  mean_loss: float) -> Progress:
    return Progress(
        step=epoch * batches + batch,
        total=epochs * batches,
        message=f"epoch {epoch + 1}/{epochs} batch {batch}/{batches} loss {mean_loss:.4f}",
        metrics={"epoch": epoch, "batch": batch, "batches": batches, "batch_loss": batch_loss,
                 "train_loss": mean_loss},
    )


def _save_best(path, model, model_config, extra, config, history, record) -> None:
    from ..models.checkpoint import save_checkpoint

    model_config = model_config if model_config is not None else getattr(model, "config", None)
    if model_config is None:
        raise ValueError("saving a checkpoint needs the model's ModelConfig (model_config=...)")
    payload = dict(extra or {})
    payload.update(
        {"train_config": config.to_dict(), "history": list(history), "best_epoch": record["epoch"]}
    )
    save_checkpoint(path, model, model_config, extra=payload)


@torch.inference_mode()
def predict(
    model: nn.Module,
    dataset,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    flips: bool = False,
) -> Generator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None, None]:
    """Per image of ``dataset`` (items ``(image, label, mask)``): label, class probabilities,
    foreground probability ``(H, W)`` and ground-truth mask ``(H, W)``, as numpy arrays.
    With ``flips``, both are averaged over the image and its horizontal, vertical and double
    flips (each foreground map flipped back)."""
    device = resolve_device(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    try:
        for images, labels, masks in loader:
            images = images.to(device)
            probabilities, foreground = 0.0, 0.0
            views = ((), (-1,), (-2,), (-2, -1)) if flips else ((),)
            for dims in views:
                view = torch.flip(images, dims) if dims else images
                output = model(view)
                probabilities = probabilities + torch.softmax(output["logits"].float(), dim=1)
                located = model.localize(output, tuple(images.shape[-2:]))[:, 0].float()
                foreground = foreground + (torch.flip(located, dims) if dims else located)
            probabilities = (probabilities / len(views)).cpu().numpy()
            foreground = (foreground / len(views)).cpu().numpy()
            for i in range(images.shape[0]):
                yield labels[i].numpy(), probabilities[i], foreground[i], masks[i].numpy()
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    dataset,
    device: str | torch.device | None = None,
    threshold: float = 0.5,
    config: TrainConfig | None = None,
    flips: bool = False,
    thresholds: Sequence[float] = (),
) -> dict[str, Any]:
    """Classification and localisation figures of a model on a labelled data set.

    Parameters
    ----------
    model : WslModel
        The model (left in the train/eval mode it was in).
    dataset : PatchDataset or torch Dataset
        Items ``(image, label, mask)``; a :class:`PatchDataset` is read as full images padded
        to a multiple of the output stride (``config`` may set the resolution or a crop).
    device : str, optional
        Default: the best available.
    threshold : float
        Foreground probability above which a pixel counts as foreground.
    config : TrainConfig, optional
        Resolution and crop of the evaluation images, when ``dataset`` is a PatchDataset.
    flips : bool
        Average the predictions over the four flips of each image (:func:`predict`).
    thresholds : sequence of float
        Other foreground thresholds to score the masks at (``f1_by_threshold``).

    Returns
    -------
    dict
        ``error`` (fraction misclassified), ``loss`` (cross-entropy of the logits),
        ``confusion`` (nested list), ``predicted`` (the predicted class of every image, in
        the data set's order), ``n_images``; with ground-truth masks also ``f1_pos``,
        ``f1_neg`` (per image, averaged), ``all_ones_f1_pos``, ``all_ones_f1_neg``,
        ``pxap`` (pixel average precision of the foreground probability over every
        threshold, :func:`~napari_wsl_al.core.metrics.pixel_average_precision`),
        ``prevalence`` (the foreground's share of the pixels: the PxAP of a map that knows
        nothing), ``n_masks`` and, for each of ``thresholds``, ``f1_by_threshold[str(t)] =
        [F1+, F1-]``.
    """
    config = config or TrainConfig(eval_crop_size=None)
    data = make_torch_dataset(dataset, model, config, train=False)
    labels, predicted, losses = [], [], []
    gt_masks, fg_maps = [], []
    for label, probabilities, foreground, mask in predict(model, data, device, flips=flips):
        labels.append(int(label))
        predicted.append(int(np.argmax(probabilities)))
        losses.append(-math.log(max(float(probabilities[int(label)]), 1e-12)))
        if np.any(mask != IGNORE_INDEX):
            gt_masks.append(mask)
            fg_maps.append(foreground)
    n_classes = len(getattr(model, "classes", ()) or ()) or (max(labels + predicted) + 1 if labels else 1)
    scores: dict[str, Any] = {
        "error": classification_error(labels, predicted),
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "n_images": len(labels),
        "confusion": confusion_matrix(labels, predicted, n_classes).tolist(),
        "predicted": predicted,
    }
    if gt_masks:
        f1 = foreground_background_f1(gt_masks, [fg > threshold for fg in fg_maps])
        baseline = all_ones_baseline(gt_masks)
        ranking = pixel_average_precision(gt_masks, fg_maps)
        scores.update(
            {
                "f1_pos": f1["f1_pos"],
                "f1_neg": f1["f1_neg"],
                "all_ones_f1_pos": baseline["f1_pos"],
                "all_ones_f1_neg": baseline["f1_neg"],
                "pxap": ranking["pxap"],
                "prevalence": ranking["prevalence"],
                "n_masks": len(gt_masks),
            }
        )
        if thresholds:
            by_threshold = {}
            for value in thresholds:
                other = foreground_background_f1(gt_masks, [fg > value for fg in fg_maps])
                by_threshold[str(float(value))] = [other["f1_pos"], other["f1_neg"]]
            scores["f1_by_threshold"] = by_threshold
    return scores
