"""Max-Min uncertainty: a localiser predicts M+; a classifier is sure on X+, unsure on X-.

Belharbi et al., "Deep interpretable classification and weakly-supervised segmentation of
histology images via Max-Min uncertainty" (``wsl-histology-max-min-uncertainty``): Sec. 2
(Eq. 3-12), Algorithm 1, and the GlaS hyper-parameters of Sec. 3.3 (a).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from ..wsl.losses import REGULARIZERS, maxmin_loss, minmax_normalize, pseudo_binarize
from .backbones import ResNet
from .base import IMAGENET_MEAN, IMAGENET_STD, WslModel
from .pooling import WildcatPool

#: Where ``forward`` takes its ``logits`` from.
INFERENCE_LOGITS = ("classifier", "localizer")


class MaxMinModel(WslModel):
    """Localiser ``M`` and classifier ``C`` trained from image labels only (Fig. 2, Alg. 1).

    The localiser is the backbone with a WILDCAT head: its class maps (``cams``) weighted by
    its own class posterior give the continuous mask (the differentiable "winning CAM",
    Sec. 3.3 (a)), which is upsampled to the input size, min-max normalised per image (as the
    authors' implementation does, per batch there) and pseudo-binarised with
    ``sigmoid(omega (M - sigma))`` (Eq. 12) into ``M+``; ``M- = 1 - M+``. The classifier is a
    second WILDCAT head on the same backbone (the paper shares the ResNet-18 between ``M`` and
    ``C``, Sec. 3.3 (a)) or on a second backbone if ``classifier_backbone`` is given; it reads
    ``X+ = X * M+`` and ``X- = X * (1 - M+)``.

    Output of ``forward``: ``"logits"`` are the classifier's on ``X+`` (Alg. 1 line 11, the
    paper's image-class prediction) when ``inference_logits="classifier"`` (default, two
    backbone passes), or the localiser's own (one pass, faster tiled inference) when
    ``"localizer"``; ``"cams"`` are the localiser's class maps at stride 32; ``"fg"`` is ``M+``
    at input resolution; ``"localizer_logits"`` are always added.

    Parameters
    ----------
    backbone : ResNet
        Localiser trunk (shared with the classifier by default).
    classes : sequence of str
        Image classes.
    classifier_backbone : ResNet, optional
        Separate trunk for ``C``.
    modalities, kmax, kmin, alpha, head_dropout :
        WILDCAT hyper-parameters of both heads (GlaS: 5, 0.3, 0, 0.6, 0.1; Sec. 3.3 (a)).
    sigma, omega : float
        Pseudo-binarisation threshold and sharpness of Eq. 12 (0.15 and 5).
    background_weight : float
        ``lambda`` of Eq. 7 (1e-7).
    regularizer : {"sem", "eem", "kl-p-q", "kl-q-p"}
        ``R(p-)`` of Eq. 8.
    use_size_constraint : bool
        Include the log-barrier size terms (ASC) of Eq. 7.
    t_init, t_factor, t_max : float
        Log-barrier ``t``: starts at 5, multiplied by 1.01 after each epoch up to 10 (GlaS;
        Camelyon16: 10, 1.1, 30).
    localizer_weight : float
        Weight of the localiser's own cross-entropy on ``X`` (Fig. 2, "loss of p").
    classifier_input_scale : float
        Resize factor of ``X+``/``X-`` before ``C`` (1 = none; the authors' code uses 0.5).
    inference_logits : {"classifier", "localizer"}
        Source of ``forward``'s ``"logits"``.
    fg_range : (float, float), optional
        Calibration of the foreground in evaluation mode: the continuous mask is scaled from
        ``(low, high)`` to ``(0, 1)`` (clipped) instead of from its own minimum and maximum in
        each image, so that a tile of a slide, a patch and a whole image get the same mask for
        the same tissue. Set by :func:`calibrate_foreground` from the training images; None
        (the default, and in training): min-max per image, as in the paper.
    mean, std, mpp :
        See :class:`~napari_wsl_al.core.models.base.WslModel`.
    """

    def __init__(
        self,
        backbone: ResNet,
        classes,
        *,
        classifier_backbone: ResNet | None = None,
        modalities: int = 5,
        kmax: float = 0.3,
        kmin: float = 0.0,
        alpha: float = 0.6,
        head_dropout: float = 0.1,
        sigma: float = 0.15,
        omega: float = 5.0,
        background_weight: float = 1e-7,
        regularizer: str = "sem",
        use_size_constraint: bool = True,
        t_init: float = 5.0,
        t_factor: float = 1.01,
        t_max: float = 10.0,
        localizer_weight: float = 1.0,
        classifier_input_scale: float = 1.0,
        inference_logits: str = "classifier",
        fg_range: tuple[float, float] | None = None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        mpp: float | None = None,
    ):
        super().__init__()
        if fg_range is not None and not float(fg_range[1]) > float(fg_range[0]):
            raise ValueError(f"fg_range must be (low, high) with low < high, got {fg_range}")
        if regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {REGULARIZERS}, not {regularizer!r}")
        if inference_logits not in INFERENCE_LOGITS:
            raise ValueError(
                f"inference_logits must be one of {INFERENCE_LOGITS}, not {inference_logits!r}"
            )
        if not (t_init > 0 and t_max >= t_init and t_factor >= 1):
            raise ValueError("log-barrier schedule needs 0 < t_init <= t_max and t_factor >= 1")
        if not 0 < classifier_input_scale <= 1:
            raise ValueError("classifier_input_scale must be in (0, 1]")
        self.classes = tuple(classes)
        num_classes = len(self.classes)
        if num_classes < 2:
            raise ValueError("Max-Min needs at least two image classes")
        self.backbone = backbone
        self.classifier_backbone = classifier_backbone
        wildcat = dict(
            modalities=modalities, kmax=kmax, kmin=kmin, alpha=alpha, dropout=head_dropout
        )
        self.mask_head = WildcatPool(backbone.out_channels, num_classes, **wildcat)
        classifier_channels = (classifier_backbone or backbone).out_channels
        self.classifier_head = WildcatPool(classifier_channels, num_classes, **wildcat)
        self.sigma, self.omega = float(sigma), float(omega)
        self.background_weight, self.regularizer = float(background_weight), regularizer
        self.use_size_constraint = bool(use_size_constraint)
        self.t_factor, self.t_max = float(t_factor), float(t_max)
        self.register_buffer("t", torch.tensor(float(t_init)))
        self.localizer_weight = float(localizer_weight)
        self.classifier_input_scale = float(classifier_input_scale)
        self.inference_logits = inference_logits
        self.fg_range = None if fg_range is None else (float(fg_range[0]), float(fg_range[1]))
        self.output_stride = backbone.output_stride
        self.mean, self.std, self.mpp = tuple(mean), tuple(std), mpp

    # -- the two sub-networks -------------------------------------------------------------
    def localizer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Localiser ``M`` on ``x``: ``(cams, localizer_logits, fg)``.

        ``fg`` is ``M+`` of Eq. 12 at the input resolution, in ``(0, 1)``.
        """
        cams, logits, mask = self.raw_mask(x)
        if self.fg_range is None or self.training:
            scaled = minmax_normalize(mask)
        else:
            low, high = self.fg_range
            scaled = ((mask - low) / (high - low)).clamp(0.0, 1.0)
        fg = pseudo_binarize(scaled, self.sigma, self.omega)
        return cams, logits, fg

    def raw_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cams, localizer_logits, mask)``: the continuous mask before any normalisation,
        ``sum_k p_k cam_k`` upsampled to the input size."""
        cams, logits = self.mask_head(self.backbone(x))
        posterior = F.softmax(logits, dim=1)
        mask = (posterior[:, :, None, None] * cams).sum(dim=1, keepdim=True)
        mask = F.interpolate(mask, size=x.shape[2:], mode="bilinear", align_corners=False)
        return cams, logits, mask

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier ``C`` on a (masked) image: ``(B, C)`` logits."""
        if self.classifier_input_scale != 1.0:
            size = [max(32, int(round(s * self.classifier_input_scale))) for s in x.shape[2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        trunk = self.classifier_backbone if self.classifier_backbone is not None else self.backbone
        _, logits = self.classifier_head(trunk(x))
        return logits

    # -- WslModel contract ----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cams, localizer_logits, fg = self.localizer(x)
        logits = (
            self.classify(x * fg) if self.inference_logits == "classifier" else localizer_logits
        )
        return {"logits": logits, "cams": cams, "fg": fg, "localizer_logits": localizer_logits}

    def masked_logits(
        self, images: torch.Tensor, fg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier logits on ``X+ = X * M+`` and ``X- = X * (1 - M+)`` (Alg. 1 lines 3-4)."""
        both = self.classify(torch.cat([images * fg, images * (1.0 - fg)], dim=0))
        return both[: images.shape[0]], both[images.shape[0] :]

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        """Eq. 7 plus the localiser's cross-entropy (Alg. 1 lines 1-5).

        ``H(p, p+) + lambda R(p-) + psi_t(-s+) + psi_t(-s-) + localizer_weight * H(p, p_M)``;
        ``t`` is the current value of the schedule (see :meth:`end_epoch`).
        """
        _, localizer_logits, fg = self.localizer(images)
        logits_fg, logits_bg = self.masked_logits(images, fg)
        loss, parts = maxmin_loss(
            logits_fg,
            logits_bg,
            labels,
            fg,
            t=float(self.t),
            background_weight=self.background_weight,
            regularizer=self.regularizer,
            use_size_constraint=self.use_size_constraint,
        )
        ce_localizer = F.cross_entropy(localizer_logits, labels)
        loss = loss + self.localizer_weight * ce_localizer
        parts["ce_localizer"] = float(ce_localizer.detach())
        parts["t"] = float(self.t)
        parts["loss"] = float(loss.detach())
        return loss, parts

    def localize(self, output: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """``M+`` (``output["fg"]``) at ``size``."""
        fg = output["fg"]
        if tuple(fg.shape[2:]) != tuple(size):
            fg = F.interpolate(fg, size=size, mode="bilinear", align_corners=False)
        return fg.clamp(0.0, 1.0)

    def end_epoch(self, epoch: int) -> None:
        """Grow the log-barrier ``t`` by ``t_factor`` up to ``t_max`` (Sec. 3.3 (a))."""
        self.t.fill_(min(float(self.t) * self.t_factor, self.t_max))

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, omega={self.omega}, lambda={self.background_weight}, "
            f"R={self.regularizer}, asc={self.use_size_constraint}, t={float(self.t):.4g}"
        )


@torch.inference_mode()
def calibrate_foreground(model: MaxMinModel, images) -> tuple[float, float]:
    """The ``fg_range`` of a Max-Min model from its continuous masks on training images.

    ``low`` and ``high`` are the medians, over the images, of each image's smallest and largest
    mask value: on a typical whole training image the calibrated foreground is then what the
    per-image min-max normalisation gives, and every tile of a slide is scaled the same way.

    Parameters
    ----------
    model : MaxMinModel
        The trained model (left in the mode it was in).
    images : iterable of torch.Tensor
        Normalised ``(3, H, W)`` or ``(1, 3, H, W)`` whole training images.

    Returns
    -------
    (float, float)
        ``(low, high)``; also set as ``model.fg_range`` and in ``model.config.head`` when the
        model has a configuration, so that a saved checkpoint keeps it.
    """
    was_training = model.training
    model.eval()
    lows, highs = [], []
    try:
        for image in images:
            _, _, mask = model.raw_mask(image if image.dim() == 4 else image[None])
            lows.append(float(mask.min()))
            highs.append(float(mask.max()))
    finally:
        model.train(was_training)
    if not lows:
        raise ValueError("calibrating the foreground needs at least one image")
    low, high = float(np.median(lows)), float(np.median(highs))
    if not high > low:
        high = low + 1e-6
    model.fg_range = (low, high)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "head"):
        config.head["fg_range"] = [low, high]
    return low, high


def expected_t(
    epoch: int, t_init: float = 5.0, t_factor: float = 1.01, t_max: float = 10.0
) -> float:
    """``t`` after ``epoch`` completed epochs of the schedule (for logs and tests)."""
    return min(t_init * math.pow(t_factor, epoch), t_max)


__all__ = ["MaxMinModel", "INFERENCE_LOGITS", "calibrate_foreground", "expected_t"]
