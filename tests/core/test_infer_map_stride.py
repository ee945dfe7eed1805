"""Map pixels finer or coarser than the model's output stride (``InferenceConfig.map_stride``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infer_models import UnitInputModel, gradient_image
from torch.nn import functional as F

from napari_wsl_al.core.infer.engine import (
    FINEST_DEFAULT_MAP_STRIDE,
    InferenceConfig,
    infer_slide,
    map_stride_for,
)
from napari_wsl_al.core.infer.errors import InferenceError
from napari_wsl_al.core.infer.store import MapStore
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.progress import run_to_end

FAST = {"tile_size": 64, "overlap": 0, "batch_size": 4, "device": "cpu", "tissue_threshold": 0,
        "readers": 1, "tissue_gate": False, "maps": ("cam", "fg"), "cam_normalisation": "none"}


class FullResolutionFg(UnitInputModel):
    """Stride-8 CAMs (block means of red), foreground at the input resolution (green)."""

    classes = ("red", "other")
    output_stride = 8

    def forward(self, x):
        red = F.avg_pool2d(x[:, :1], self.output_stride)
        cams = self.tied(torch.cat([red, 1 - red], dim=1))
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams, "fg": x[:, 1:2]}


def block_mean(image, k):
    h, w = image.shape[0] // k * k, image.shape[1] // k * k
    return image[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def maps(tmp_path, image, **changes):
    reader = ArrayReader(image, mpp=0.5)
    config = InferenceConfig(**{**FAST, **changes})
    result = run_to_end(infer_slide(reader, FullResolutionFg(), config,
                                    MapStore(tmp_path / f"m{changes}.zarr")))
    return result.maps


@pytest.mark.parametrize("map_stride", [2, 4, 16])
def test_the_foreground_keeps_the_detail_of_the_map_stride(tmp_path, map_stride):
    image = gradient_image(128, 192)
    handles = maps(tmp_path, image, map_stride=map_stride)
    green = image[..., 1].astype(np.float64) / 255.0
    fg = handles["fg"].levels[0].compute()
    assert fg.shape == (128 // map_stride, 192 // map_stride)
    np.testing.assert_allclose(fg, block_mean(green, map_stride), atol=1e-5)
    assert handles["fg"].scale == pytest.approx((0.5 * map_stride, 0.5 * map_stride))
    assert handles["fg"].translate == pytest.approx(((map_stride - 1) / 2 * 0.5,) * 2)


def test_cams_coarser_than_the_map_are_interpolated_and_finer_are_averaged(tmp_path):
    image = gradient_image(128, 128)
    red = image[..., 0].astype(np.float64) / 255.0
    coarse = maps(tmp_path, image, map_stride=16)["cam"].levels[0].compute()
    np.testing.assert_allclose(coarse[0], block_mean(red, 16), atol=1e-5)
    native = maps(tmp_path, image, map_stride=8)["cam"].levels[0].compute()
    np.testing.assert_allclose(native[0], block_mean(red, 8), atol=1e-5)
    fine = maps(tmp_path, image, map_stride=4)["cam"].levels[0].compute()
    # Finer than the CAMs: the tile's stride-8 values interpolated bilinearly.
    tile = block_mean(red[:64, :64], 8)
    up = F.interpolate(torch.from_numpy(tile)[None, None], size=(16, 16), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(fine[0][:16, :16], up, atol=1e-5)


def test_the_default_map_stride_is_the_output_stride_up_to_16():
    config = InferenceConfig()
    model = FullResolutionFg()
    assert map_stride_for(model, config) == 8
    model.output_stride = 32
    assert map_stride_for(model, config) == FINEST_DEFAULT_MAP_STRIDE == 16
    assert map_stride_for(model, config.replace(map_stride=32)) == 32


@pytest.mark.parametrize("mpp, expected", [(None, 16), (0.5, 16), (0.62, 16), (0.63, 8),
                                           (1.24, 8), (1.26, 4), (2.48, 4), (6.0, 1),
                                           (20.0, 1)])
def test_default_map_pixels_are_at_most_10_microns(mpp, expected):
    # 16 x 0.62 = 9.92 um; 16 x 0.63 = 10.08 > 10: 8; 8 x 1.26 = 10.08: 4; 2 x 6 = 12: 1
    model = FullResolutionFg()
    model.output_stride, model.mpp = 32, mpp
    assert map_stride_for(model, InferenceConfig()) == expected
    assert map_stride_for(model, InferenceConfig(map_stride=32)) == 32  # asked for: as asked


def test_map_stride_checks(tmp_path):
    for bad in (0, -8, 1.5, True, "8"):
        with pytest.raises((ValueError, TypeError)):
            InferenceConfig(map_stride=bad)
    with pytest.raises(InferenceError, match="not a multiple of the map stride 24"):
        maps(tmp_path, gradient_image(64, 64), map_stride=24)
    # The overlap is rounded down to a multiple of both strides: 24 -> 16 for strides 8 and 16.
    handles = maps(tmp_path, gradient_image(128, 128), map_stride=16, overlap=24)
    assert handles["fg"].levels[0].shape == (8, 8)
