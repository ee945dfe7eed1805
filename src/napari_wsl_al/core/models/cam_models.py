"""CAM baselines: a ResNet backbone and one pooling head (CAM-Avg/Max/LSE, WILDCAT, Deep MIL)."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import ResNet
from .base import IMAGENET_MEAN, IMAGENET_STD, WslModel


class CamModel(WslModel):
    """Backbone + pooling head, trained with cross-entropy on the image labels.

    The baselines of Max-Min (``wsl-histology-max-min-uncertainty``, Sec. 3.2 (b)); their
    localisation is the min-max normalised CAM of the predicted class
    (:meth:`WslModel.localize`).

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
    """

    def __init__(
        self,
        backbone: ResNet,
        pooling: nn.Module,
        classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        mpp: float | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.classes = tuple(classes)
        self.output_stride = backbone.output_stride
        self.mean, self.std, self.mpp = tuple(mean), tuple(std), mpp

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cams, logits = self.pooling(self.backbone(x))
        return {"logits": logits, "cams": cams}
