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


class RedModel(WslModel):
    """CAM of class 0 = the input's red channel (0..1) averaged over stride x stride blocks."""

    classes = ("red", "other")
    output_stride = 4
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        red = F.avg_pool2d(x[:, :1], self.output_stride)
        cams = torch.cat([red, torch.zeros_like(red)], dim=1) + 0 * self.dummy
        logits = cams.mean(dim=(2, 3))
        return {"logits": logits, "cams": cams}


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
