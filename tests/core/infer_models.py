"""Tiny deterministic models and slides for the inference tests (importable by workers too)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from napari_wsl_al.core.models.base import WslModel


class ConstantModel(WslModel):
    """Same logits, CAMs and foreground everywhere: blended maps must be constant."""

    classes = ("tumour", "normal")
    output_stride = 4

    def __init__(self, logits=(2.0, 0.5), fg=0.7):
        super().__init__()
        self.register_buffer("fixed_logits", torch.tensor(logits, dtype=torch.float32))
        self.fg_value = fg
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b, _, h, w = x.shape
        s = self.output_stride
        logits = self.fixed_logits.expand(b, -1) + 0 * self.dummy
        cams = logits[:, :, None, None].expand(-1, -1, h // s, w // s)
        fg = torch.full((b, 1, h // s, w // s), self.fg_value, device=x.device)
        return {"logits": logits, "cams": cams, "fg": fg}


class UnitInputModel(WslModel):
    """Base of the tiny test models that compute their outputs from the pixels themselves.

    The model sees each channel as it is, 0..1 (mean 0, std 1), and holds one unused
    parameter (a device and a fingerprint, as a real model has); :meth:`tied` adds it to an
    output, times 0, as the models' outputs always did.
    """

    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def tied(self, tensor):
        """``tensor + 0 * dummy``: the same values, tied to the model's parameter."""
        return tensor + 0 * self.dummy


class RedModel(UnitInputModel):
    """CAM of class 0 = the input's red channel (0..1) averaged over stride x stride blocks."""

    classes = ("red", "other")
    output_stride = 4

    def forward(self, x):
        red = F.avg_pool2d(x[:, :1], self.output_stride)
        cams = self.tied(torch.cat([red, torch.zeros_like(red)], dim=1))
        logits = cams.mean(dim=(2, 3))
        return {"logits": logits, "cams": cams}


class BlockColourModel(UnitInputModel):
    """CAMs = chosen colour channels (0..1) averaged over stride x stride blocks, one per class.

    The foreground is the red block mean, the image logits ``gain`` times each CAM's mean:
    on a patch of one colour every output is that colour's, exactly, unless the model sees
    something else (a neighbour, the mosaic's white padding) in its input.

    Parameters
    ----------
    classes : tuple of str
        One class per channel of ``channels``.
    channels : tuple of int
        The colour channel (0 red, 1 green, 2 blue) giving each class's CAM.
    gain : float
        Factor of the logits: with two classes, ``p_0 = sigmoid(gain * (mean c_0 - mean c_1))``.
    output_stride : int
        Side of the averaged blocks.
    """

    def __init__(self, classes=("red", "green", "blue"), channels=(0, 1, 2), gain=4.0,
                 output_stride=8):
        super().__init__()
        if len(classes) != len(channels):
            raise ValueError("one colour channel per class")
        self.classes = tuple(classes)
        self.output_stride = int(output_stride)
        # Buffers, so that the model's fingerprint (and a store's reuse of maps) tells apart
        # models of other channels or gains.
        self.register_buffer("cam_channels", torch.tensor(channels, dtype=torch.long))
        self.register_buffer("logit_gain", torch.tensor(float(gain)))

    def forward(self, x):
        pooled = self.tied(F.avg_pool2d(x, self.output_stride))
        cams = pooled.index_select(1, self.cam_channels)
        return {"logits": self.logit_gain * cams.mean(dim=(2, 3)), "cams": cams,
                "fg": pooled[:, :1]}


class DropoutModel(WslModel):
    """Logits through a dropout layer: MC-dropout passes differ, eval passes do not."""

    classes = ("a", "b", "c")
    output_stride = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.drop = nn.Dropout(0.5)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight)

    def forward(self, x):
        maps = self.drop(F.avg_pool2d(self.conv(x), self.output_stride))
        return {"logits": maps.mean(dim=(2, 3)), "cams": maps}


class OomModel(ConstantModel):
    """Raises torch's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit=1):
        super().__init__()
        self.limit = limit
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x)


def gradient_image(height, width, seed=0):
    """An RGB image with a smooth red gradient and tissue-like noise in green/blue."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    red = (40 + 200 * (0.5 + 0.5 * np.sin(xx / 37.0) * np.cos(yy / 23.0))).astype(np.uint8)
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = red
    image[..., 1] = rng.integers(60, 120, (height, width))
    image[..., 2] = rng.integers(100, 180, (height, width))
    return image


def make_constant_model():
    """Factory used by the distributed test (a picklable top-level function)."""
    return ConstantModel()


def gradient_slide_project(tmp_path, size: int):
    """A project (classes red and green) with one tiled 20x slide ``synth`` of
    :func:`gradient_image` (``size`` x ``size``), AL settings with 128 px tiles on the CPU, and
    the path of its round-1 map store."""
    from dataclasses import replace

    import tifffile

    from napari_wsl_al.core.al import rounds
    from napari_wsl_al.core.project import Project

    slide = tmp_path / "synth.tif"
    tifffile.imwrite(slide, gradient_image(size, size), tile=(128, 128), photometric="rgb",
                     resolution=(20000.0, 20000.0), resolutionunit="CENTIMETER")
    project = Project.create(tmp_path / "study.wslal", classes=["red", "green"])
    project.add_slide(slide)
    settings = replace(rounds.ALSettings(), tile_px=128, device="cpu")
    return project, settings, rounds.round_maps_path(project, "synth", 1)
