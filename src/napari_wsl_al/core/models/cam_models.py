"""CAM baselines: a ResNet backbone and one pooling head (CAM-Avg/Max/LSE, WILDCAT, Deep MIL)."""

from __future__ import annotations

import torch
from torch import nn

from ..wsl.losses import minmax_normalize
from .backbones import ResNet
from .base import IMAGENET_MEAN, IMAGENET_STD, WslModel


class CamModel(WslModel):
    """Backbone + pooling head, trained with cross-entropy on the image labels.

    The baselines of Max-Min (``wsl-histology-max-min-uncertainty``, Sec. 3.2 (b)); their
    localisation is the CAM of the predicted class (of ``fg_class`` when it is given),
    min-max normalised over the image it sees, or scaled from ``fg_range`` when that is set: the
    inference engine sets it for the tiles of a slide, from a sample of the slide's tiles
    (:meth:`raw_mask`), so that no tile is normalised on its own.

    Parameters
    ----------
    backbone : ResNet
        Feature extractor; its stride-32 map feeds the head.
    pooling : nn.Module
        A head of :mod:`~napari_wsl_al.core.models.pooling` mapping features to
        ``(cams, logits)``.
    classes : sequence of str
        Image-level class names.
    mean, std : tuple of float
        Input normalisation.
    mpp : float, optional
        Microns per pixel of the training images.
    fg_class : str, optional
        The class whose CAM is the foreground map on every image (e.g. the disease class);
        None: the predicted class's.
    """

    def __init__(
        self,
        backbone: ResNet,
        pooling: nn.Module,
        classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        mpp: float | None = None,
        fg_class: str | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.classes = tuple(classes)
        self.output_stride = backbone.output_stride
        self.mean, self.std, self.mpp = tuple(mean), tuple(std), mpp
        #: ``(low, high)`` CAM values scaled to 0 and 1 in evaluation mode; None: per image.
        self.fg_range: tuple[float, float] | None = None
        if fg_class is not None and fg_class not in self.classes:
            raise ValueError(f"fg_class {fg_class!r} is not one of the classes {list(self.classes)}")
        #: Index of the class whose CAM is the foreground; None: the predicted class.
        self.fg_index: int | None = None if fg_class is None else self.classes.index(fg_class)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cams, logits = self.pooling(self.backbone(x))
        return {"logits": logits, "cams": cams}

    def _foreground_cam(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, 1, h, w)`` CAM of ``fg_class``, or of each image's predicted class."""
        cams = output["cams"]
        if self.fg_index is not None:
            return cams[:, self.fg_index : self.fg_index + 1]
        predicted = output["logits"].argmax(dim=1)
        return cams[torch.arange(cams.shape[0], device=cams.device), predicted].unsqueeze(1)

    def raw_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cams, logits, mask)``: the foreground CAM before any normalisation,
        upsampled to the input size (the statistic of a slide's ``fg_range``)."""
        output = self(x)
        mask = nn.functional.interpolate(self._foreground_cam(output), size=tuple(x.shape[2:]),
                                         mode="bilinear", align_corners=False)
        return output["cams"], output["logits"], mask

    def localize(self, output: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The foreground CAM (``fg_class``'s, else the predicted class's) at ``size`` in
        ``[0, 1]``: scaled from ``fg_range`` in evaluation mode when it is set, else min-max
        normalised per image."""
        cam = self._foreground_cam(output)
        if self.fg_range is None or self.training:
            cam = minmax_normalize(cam)
        else:
            low, high = self.fg_range
            cam = ((cam - low) / (high - low)).clamp(0.0, 1.0)
        return nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)
