"""What every model of napari-wsl-al offers to training, inference and active learning.

A model is a ``torch.nn.Module`` subclassing :class:`WslModel`. Its ``forward`` takes a batch
of normalised RGB images ``(B, 3, H, W)`` and returns a ``dict`` of tensors:

``"logits"``
    ``(B, C)`` image-level class scores (before softmax); always present.
``"cams"``
    ``(B, C, h, w)`` class activation maps (class scores per location before pooling) at
    ``1 / output_stride`` of the input; always present.
``"fg"``
    ``(B, 1, h', w')`` foreground probability in ``[0, 1]`` (Max-Min's M+); optional. Its
    resolution may be that of ``cams`` or of the input.
``"seg_logits"``
    ``(B, K, H, W)`` segmentation class scores at input resolution (joint model); optional.

Inference code must use only these keys and the attributes below.
"""

from __future__ import annotations

import torch
from torch import nn

from .colour import reinhard, reinhard_colours

#: ImageNet statistics: the default input normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WslModel(nn.Module):
    """Base of the classification-and-localisation models.

    Attributes
    ----------
    classes : tuple of str
        Image-level class names, in the order of ``logits``.
    output_stride : int
        Input pixels per ``cams`` pixel.
    mean, std : tuple of float
        Per-channel normalisation applied to images scaled to ``[0, 1]``.
    mpp : float or None
        Microns per pixel of the images the model was trained on; inference reads slides
        at this resolution.
    colour_target : tuple of 6 float or None
        Colour normalisation applied by :meth:`normalize` (``ModelConfig.colour_target``).
    """

    classes: tuple[str, ...] = ()
    output_stride: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mpp: float | None = None
    colour_target: tuple[float, ...] | None = None

    def normalize(self, images_uint8: torch.Tensor, colour_source=None) -> torch.Tensor:
        """``(B, H, W, 3)`` or ``(B, 3, H, W)`` uint8 images to normalised float ``(B, 3, H, W)``
        (colour-normalised first when the model has a ``colour_target``: each image from its
        own statistics, or all from ``colour_source``, six numbers, e.g. its slide's)."""
        x = images_uint8
        if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        if self.colour_target is not None and colour_source is not None and x.dtype == torch.uint8:
            # fixed statistics (a slide's tiles): each colour converted once per slide
            x = reinhard_colours(x, self.colour_target, colour_source)
        else:
            x = x.to(torch.float32, copy=True)  # the in-place steps below leave the input alone
            if self.colour_target is not None:  # each image's tissue to the model's colours
                x = reinhard(x, self.colour_target, colour_source)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        # (x / 255 - mean) / std, in two in-place passes instead of four allocations.
        return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_step(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch of normalised images with image-level labels.

        The default is cross-entropy on ``logits``; models with their own objective (Max-Min,
        min-max entropy with erasing) override it. Training loops call only this method, so
        they work with every model.

        Returns
        -------
        loss : torch.Tensor
            Scalar to back-propagate.
        parts : dict of str to float
            Named terms of the loss, for logging.
        """
        output = self(images)
        loss = nn.functional.cross_entropy(output["logits"], labels)
        return loss, {"ce": float(loss.detach())}

    def localize(self, output: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Foreground probability ``(B, 1, H, W)`` in ``[0, 1]`` at input size ``(H, W)``.

        The default: the CAM of the predicted class, min-max normalised per image and
        upsampled bilinearly. The CAM family (:class:`~.cam_models.CamModel`: also a
        calibrated range, or one class's map on every image) and the models with an explicit
        mask (Max-Min's M+, the joint model's segmentation) override it.
        """
        cams = output["cams"]
        predicted = output["logits"].argmax(dim=1)
        cam = cams[torch.arange(cams.shape[0], device=cams.device), predicted].unsqueeze(1)
        low = cam.amin(dim=(2, 3), keepdim=True)
        high = cam.amax(dim=(2, 3), keepdim=True)
        cam = (cam - low) / (high - low).clamp_min(1e-6)
        return nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)

    def end_epoch(self, epoch: int) -> None:
        """Called by training loops after each epoch (schedules such as Max-Min's t)."""
