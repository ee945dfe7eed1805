"""Map maths of tiled inference against numbers worked out by hand.

Blending of overlapping tiles whose outputs differ, the uncertainty maps of 3- and 4-class
probabilities, MC-dropout variance of a model with a known dropout pattern, and the pyramid
levels of odd-sized maps.

Hand numbers used throughout. ``blend_window(8, 2)`` ramps over 2 pixels with
``sin^2(pi/2 * (k + 0.5) / 2)`` for ``k = 0, 1``:

- ``B = sin^2(pi/8) = (1 - sqrt(2)/2) / 2 = 0.1464466``
- ``A = sin^2(3 pi/8) = cos^2(pi/8) = 1 - B = 0.8535534``
- ``A * B = sin^2(pi/4) / 4 = 0.125``, ``A^2 = 0.7285534``, ``B^2 = 0.0214466``

so the window is ``[B, A, 1, 1, 1, 1, A, B]``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from infer_models import ConstantModel, RedModel, UnitInputModel
from torch import nn
from torch.nn import functional as F

from napari_wsl_al.core.infer.engine import InferenceConfig, infer_slide
from napari_wsl_al.core.infer.store import (
    MapSpec,
    MapStore,
    _downsample_2x,
    _pyramid_shapes,
    blend_window,
    derived_maps,
    map_level_count,
)
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.models.base import WslModel
from napari_wsl_al.core.progress import run_to_end

B = 0.1464466094067262  # sin^2(pi / 8)
A = 0.8535533905932737  # sin^2(3 pi / 8)

# No tissue skipping, no foreground gating: raw model outputs are blended.
PLAIN = {"device": "cpu", "tissue_threshold": 0, "readers": 1, "tissue_gate": False,
         "batch_size": 4}


def run(reader, model, path, **config):
    return run_to_end(infer_slide(reader, model, InferenceConfig(**{**PLAIN, **config}),
                                  MapStore(path)))


# ---------------------------------------------------------------------- test models
class TilePositionModel(UnitInputModel):
    """CAM 0 is the column, CAM 1 the row of each output pixel *inside its tile*.

    Two tiles overlapping a map pixel give different values there (the left tile's column 6
    is the right tile's column 0), so the blended map shows how the tiles were weighted.
    """

    classes = ("column", "row")
    output_stride = 4

    def forward(self, x):
        b, _, h, w = x.shape
        s = self.output_stride
        cols = torch.arange(w // s, dtype=torch.float32).expand(b, h // s, w // s)
        rows = torch.arange(h // s, dtype=torch.float32)[:, None].expand(b, h // s, w // s)
        cams = self.tied(torch.stack([cols, rows], dim=1))
        return {"logits": torch.zeros(b, 2), "cams": cams}


class FixedProbabilityModel(WslModel):
    """Image-level logits ``log(p)`` for a fixed probability vector ``p`` (any class count)."""

    output_stride = 8

    def __init__(self, probabilities):
        super().__init__()
        self.classes = tuple(f"class_{i}" for i in range(len(probabilities)))
        self.register_buffer("fixed_logits", torch.log(torch.tensor(probabilities)))

    def forward(self, x):
        b, _, h, w = x.shape
        logits = self.fixed_logits.expand(b, -1)
        s = self.output_stride
        return {"logits": logits, "cams": logits[:, :, None, None].expand(-1, -1, h // s, w // s)}


class AlternatingDropout(nn.Dropout):
    """Dropout with a known pattern: in training mode, odd passes keep everything (scaled by
    ``1 / (1 - p) = 2``), even passes drop everything. In eval mode, the identity."""

    def __init__(self):
        super().__init__(0.5)
        self.passes = 0

    def forward(self, x):
        if not self.training:
            return x
        self.passes += 1
        return x * 2.0 if self.passes % 2 else x * 0.0


class KnownDropoutModel(WslModel):
    """Logits ``(log 4, 0, 0)`` through :class:`AlternatingDropout`.

    Eval: ``softmax(log 4, 0, 0) = (4/6, 1/6, 1/6)``. MC passes alternate between logits
    ``(log 16, 0, 0)``, probabilities ``(16/18, 1/18, 1/18)``, and logits 0, probabilities
    ``(1/3, 1/3, 1/3)``.
    """

    classes = ("a", "b", "c")
    output_stride = 8

    def __init__(self):
        super().__init__()
        self.register_buffer("fixed_logits", torch.tensor([math.log(4.0), 0.0, 0.0]))
        self.drop = AlternatingDropout()

    def forward(self, x):
        b, _, h, w = x.shape
        logits = self.drop(self.fixed_logits.expand(b, -1))
        s = self.output_stride
        return {"logits": logits, "cams": logits[:, :, None, None].expand(-1, -1, h // s, w // s)}


class OutputSizeModel(UnitInputModel):
    """CAM 0 is the input's red channel (0..1) at ``size`` x ``size`` pixels, whatever the
    output stride says: the engine must resample it to the map's tile size."""

    classes = ("red", "other")
    output_stride = 4

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        red = F.adaptive_avg_pool2d(x[:, :1], self.size)
        cams = self.tied(torch.cat([red, torch.zeros_like(red)], dim=1))
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams}


# ---------------------------------------------------------------------- blend window
def test_blend_window_values():
    np.testing.assert_allclose(blend_window(8, 2), [B, A, 1, 1, 1, 1, A, B], atol=1e-7)
    # One-pixel ramp: sin^2(pi/4) = 0.5 at both ends.
    np.testing.assert_allclose(blend_window(5, 1), [0.5, 1, 1, 1, 0.5], atol=1e-7)
    # A 4-pixel ramp: sin^2(pi/16), sin^2(3pi/16), sin^2(5pi/16), sin^2(7pi/16).
    ramp = [0.0380602, 0.3086583, 0.6913417, 0.9619398]
    np.testing.assert_allclose(blend_window(10, 4), ramp + [1, 1] + ramp[::-1], atol=1e-7)
    # No overlap: flat. A ramp longer than half the window is cut to half of it.
    np.testing.assert_array_equal(blend_window(6, 0), np.ones(6))
    np.testing.assert_allclose(blend_window(4, 3), [B, A, A, B], atol=1e-7)
    assert blend_window(8, 2).dtype == np.float32


# ---------------------------------------------------------------------- blending in the store
def _store(path, grid_shape, n, step, map_shape, maps=None, tile_channels=None,
           scale=(1.0, 1.0), translate=(0.0, 0.0)):
    store = MapStore(path)
    maps = maps or [MapSpec("cam", ("value",), "cam")]
    tile_channels = tile_channels or {"cam": (0, 1)}
    done = store.prepare({"test": "blend"}, maps, tile_channels, grid_shape, n, step,
                         map_shape, scale, translate, None)
    return store, done


def _write(store, tiles, values):
    """Write tiles whose single channel is a constant per tile."""
    tiles = np.array(tiles, dtype=np.int64)
    outputs = np.stack([np.full((1, 8, 8), v, np.float32) for v in values])
    store.write_tiles(tiles, outputs)
    store.flush()


def test_store_blends_four_tiles_with_the_cosine_window(tmp_path):
    # 2 x 2 tiles of 8 map pixels, step 6: they overlap over map rows/columns 6 and 7.
    store, done = _store(tmp_path / "m.zarr", (2, 2), 8, 6, (14, 14))
    assert not done.any()
    _write(store, [(0, 0), (0, 1), (1, 0), (1, 1)], [1.0, 2.0, 3.0, 4.0])
    cam = store.handles()["cam"].levels[0].compute()[0]
    # Covered by one tile: its value.
    assert cam[2, 2] == pytest.approx(1.0) and cam[2, 11] == pytest.approx(2.0)
    assert cam[11, 2] == pytest.approx(3.0) and cam[11, 11] == pytest.approx(4.0)
    # Two tiles side by side, left tile column 6 (weight A) and right tile column 0 (B).
    assert cam[2, 6] == pytest.approx(1 * A + 2 * B, abs=1e-6)  # 1.1464466
    assert cam[2, 7] == pytest.approx(1 * B + 2 * A, abs=1e-6)  # 1.8535534
    assert cam[6, 11] == pytest.approx(2 * A + 4 * B, abs=1e-6)  # 2.2928932
    # Four tiles: products of the row and column weights (uniform weights give 2.5, the
    # last tile written gives 4).
    assert cam[6, 6] == pytest.approx(1 * A * A + 2 * A * B + 3 * B * A + 4 * B * B,
                                      abs=1e-6)  # 1.4393398
    assert cam[7, 7] == pytest.approx(1 * B * B + 2 * B * A + 3 * A * B + 4 * A * A,
                                      abs=1e-6)  # 3.5606602
    assert cam[6, 7] == pytest.approx(1 * A * B + 2 * A * A + 3 * B * B + 4 * B * A,
                                      abs=1e-6)  # 2.1464466
    assert cam[6, 6] == pytest.approx(1.4393398, abs=1e-6)
    assert store.done_bitmap().all()


def test_store_blends_only_finished_tiles_and_resumes_from_disk(tmp_path):
    store, _ = _store(tmp_path / "m.zarr", (2, 2), 8, 6, (14, 14))
    _write(store, [(0, 0), (1, 1)], [1.0, 4.0])
    cam = store.handles()["cam"].levels[0].compute()[0]
    # Diagonal neighbours only: weights A^2 and B^2 (sum 0.75) at (6, 6).
    assert cam[6, 6] == pytest.approx((1 * A * A + 4 * B * B) / (A * A + B * B), abs=1e-6)
    assert cam[7, 7] == pytest.approx((1 * B * B + 4 * A * A) / (A * A + B * B), abs=1e-6)
    # Pixels of the missing tiles only are empty, not blended from zeros.
    assert cam[0, 13] == 0.0 and cam[13, 0] == 0.0
    assert cam[0, 7] == pytest.approx(1.0) and cam[7, 0] == pytest.approx(1.0)
    np.testing.assert_array_equal(store.done_bitmap(), [[True, False], [False, True]])
    # A new run on the same store: the finished tiles come back from disk, not memory.
    again, done = _store(tmp_path / "m.zarr", (2, 2), 8, 6, (14, 14))
    np.testing.assert_array_equal(done, [[True, False], [False, True]])
    _write(again, [(0, 1), (1, 0)], [2.0, 3.0])
    cam = again.handles()["cam"].levels[0].compute()[0]
    assert cam[6, 6] == pytest.approx(1.4393398, abs=1e-6)
    assert cam[7, 7] == pytest.approx(3.5606602, abs=1e-6)
    assert cam[2, 6] == pytest.approx(1.1464466, abs=1e-6)


def test_store_keeps_tile_pixels_in_place(tmp_path):
    # Tile outputs that vary inside the tile: value = 100 * tile + 10 * local row + local col.
    store, _ = _store(tmp_path / "m.zarr", (1, 2), 8, 6, (8, 14))
    local = 10 * np.arange(8)[:, None] + np.arange(8)[None, :]
    outputs = np.stack([local, 100 + local])[:, None].astype(np.float32)
    store.write_tiles(np.array([[0, 0], [0, 1]]), outputs)
    store.flush()
    cam = store.handles()["cam"].levels[0].compute()[0]
    np.testing.assert_allclose(cam[:, :6], local[:, :6], atol=1e-5)
    np.testing.assert_allclose(cam[:, 8:], 100 + local[:, 2:], atol=1e-5)
    # Row 3, columns 6 and 7: left tile columns 6, 7 against right tile columns 0, 1.
    assert cam[3, 6] == pytest.approx(A * 36 + B * 130, abs=1e-4)  # 49.7656
    assert cam[3, 7] == pytest.approx(B * 37 + A * 131, abs=1e-4)  # 117.2338


def test_engine_blends_tiles_that_disagree(tmp_path):
    # 56 x 56 pixels, tiles of 32 with 8 of overlap, stride 4: 2 x 2 tiles of 8 map pixels,
    # step 6; map columns 6 and 7 are seen by both tiles of a row (local columns 6, 7 and 0, 1).
    reader = ArrayReader(np.full((56, 56, 3), 128, np.uint8), mpp=0.5)
    result = run(reader, TilePositionModel(), tmp_path / "m.zarr", maps=("cam",),
                 cam_normalisation="none", tile_size=32, overlap=8)
    assert result.tiles_total == 4
    cam = result.maps["cam"].levels[0].compute()
    assert cam.shape == (2, 14, 14)
    expected = np.array([0, 1, 2, 3, 4, 5,
                         6 * A + 0 * B,  # 5.1213203 (uniform weights: 3, last tile: 0)
                         7 * B + 1 * A,  # 1.8786797 (uniform weights: 4, last tile: 1)
                         2, 3, 4, 5, 6, 7])
    np.testing.assert_allclose(cam[0], np.broadcast_to(expected, (14, 14)), atol=1e-5)
    np.testing.assert_allclose(cam[1], np.broadcast_to(expected[:, None], (14, 14)), atol=1e-5)
    assert cam[0, 0, 6] == pytest.approx(5.1213203, abs=1e-5)
    assert cam[0, 0, 7] == pytest.approx(1.8786797, abs=1e-5)


def test_engine_resamples_outputs_to_the_map_size(tmp_path):
    # Red = 64 * column, at 32 pixels per tile; the maps are 8 pixels per tile (stride 4).
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = (np.arange(32) // 8 * 64)[None, :]  # columns of 0, 64, 128, 192
    reader = ArrayReader(image, mpp=0.5)
    # Full resolution: area mean over 4 x 4 pixels (two map pixels per band of 8 columns).
    shrunk = run(reader, OutputSizeModel(32), tmp_path / "a.zarr", maps=("cam",),
                 cam_normalisation="none", tile_size=32, overlap=0)
    row = shrunk.maps["cam"].levels[0].compute()[0, 3]
    np.testing.assert_allclose(row * 255, [0, 0, 64, 64, 128, 128, 192, 192], atol=1e-3)
    # Coarser than the map (4 pixels): bilinear, pixel centres aligned (align_corners=False):
    # output j samples input (j + 0.5) / 2 - 0.5, i.e. -0.25, 0.25, 0.75, 1.25 ...
    enlarged = run(reader, OutputSizeModel(4), tmp_path / "b.zarr", maps=("cam",),
                   cam_normalisation="none", tile_size=32, overlap=0)
    row = enlarged.maps["cam"].levels[0].compute()[0, 3]
    np.testing.assert_allclose(row * 255, [0, 16, 48, 80, 112, 144, 176, 192], atol=1e-3)


# ---------------------------------------------------------------------- uncertainty maps
def _uncertainty_maps(tmp_path, probabilities):
    reader = ArrayReader(np.full((64, 64, 3), 128, np.uint8), mpp=0.5)
    result = run(reader, FixedProbabilityModel(probabilities), tmp_path / "m.zarr",
                 maps=("probs", "uncertainty"), tile_size=32, overlap=8)
    return {name: handle.levels[0].compute() for name, handle in result.maps.items()}


def test_uncertainty_of_three_classes(tmp_path):
    # p = (0.2, 0.5, 0.3): the best class is not the first, the second best not the last.
    maps = _uncertainty_maps(tmp_path, [0.2, 0.5, 0.3])
    assert set(maps) == {"probs", "uncertainty/entropy", "uncertainty/margin",
                         "uncertainty/ovr_entropy", "uncertainty/ovr_entropy_max"}
    np.testing.assert_allclose(maps["probs"][:, 4, 4], [0.2, 0.5, 0.3], atol=1e-6)
    # -(0.2 ln 0.2 + 0.5 ln 0.5 + 0.3 ln 0.3) = 0.3218876 + 0.3465736 + 0.3611918
    np.testing.assert_allclose(maps["uncertainty/entropy"], 1.0296530, atol=1e-5)
    # best - second best = 0.5 - 0.3 (best - worst would be 0.3, second - worst 0.1)
    np.testing.assert_allclose(maps["uncertainty/margin"], 0.2, atol=1e-5)
    # H_c = -p ln p - (1 - p) ln(1 - p): 0.5004024, ln 2 = 0.6931472, 0.6108643
    ovr = maps["uncertainty/ovr_entropy"]
    assert ovr.shape == (3, 8, 8)
    np.testing.assert_allclose(ovr[:, 5, 2], [0.5004024, 0.6931472, 0.6108643], atol=1e-5)
    np.testing.assert_allclose(maps["uncertainty/ovr_entropy_max"], 0.6931472, atol=1e-5)


def test_uncertainty_of_four_classes(tmp_path):
    maps = _uncertainty_maps(tmp_path, [0.1, 0.4, 0.15, 0.35])
    # -(0.1 ln 0.1 + 0.4 ln 0.4 + 0.15 ln 0.15 + 0.35 ln 0.35)
    #   = 0.2302585 + 0.3665163 + 0.2845660 + 0.3674397
    np.testing.assert_allclose(maps["uncertainty/entropy"], 1.2487805, atol=1e-5)
    np.testing.assert_allclose(maps["uncertainty/margin"], 0.05, atol=1e-5)  # 0.4 - 0.35
    np.testing.assert_allclose(maps["uncertainty/ovr_entropy"][:, 1, 6],
                               [0.3250830, 0.6730117, 0.4227091, 0.6474466], atol=1e-5)
    np.testing.assert_allclose(maps["uncertainty/ovr_entropy_max"], 0.6730117, atol=1e-5)


def test_derived_maps_from_blended_channels():
    # Two pixels; channels: cam (2), fg (1), probs (3), mc_variance (1).
    blended = np.array([
        [[0.9, 0.1]], [[0.1, 0.9]],  # cam
        [[1.25, -0.5]],  # fg, outside [0, 1] at both pixels
        [[0.6, 0.0]], [[0.3, 1.0]], [[0.1, 0.0]],  # probs: (0.6, 0.3, 0.1), (0, 1, 0)
        [[0.04, 0.01]],  # mc_variance
    ], dtype=np.float32)
    channels = {"cam": (0, 2), "fg": (2, 3), "probs": (3, 6), "mc_variance": (6, 7)}
    names = ["uncertainty/margin", "cam", "fg", "bg", "probs", "seg", "uncertainty/entropy",
             "uncertainty/ovr_entropy", "uncertainty/ovr_entropy_max", "uncertainty/mc_variance"]
    out = derived_maps(blended, channels, names)
    assert list(out) == names
    np.testing.assert_allclose(out["cam"], blended[0:2])
    np.testing.assert_allclose(out["fg"], [[1.0, 0.0]])
    np.testing.assert_allclose(out["bg"], [[0.0, 1.0]])
    np.testing.assert_allclose(out["probs"], blended[3:6])
    np.testing.assert_allclose(out["seg"], blended[3:6])
    # (0.6, 0.3, 0.1): 0.3064954 + 0.3611918 + 0.2302585; a certain pixel has entropy 0.
    np.testing.assert_allclose(out["uncertainty/entropy"], [[0.8979457, 0.0]], atol=1e-6)
    np.testing.assert_allclose(out["uncertainty/margin"], [[0.3, 1.0]], atol=1e-6)
    # H(0.6) = H(0.4) = 0.6730117, H(0.3) = 0.6108643, H(0.1) = 0.3250830; 0 and 1 give 0.
    np.testing.assert_allclose(out["uncertainty/ovr_entropy"][:, 0, 0],
                               [0.6730117, 0.6108643, 0.3250830], atol=1e-6)
    np.testing.assert_allclose(out["uncertainty/ovr_entropy"][:, 0, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["uncertainty/ovr_entropy_max"], [[0.6730117, 0.0]],
                               atol=1e-6)
    np.testing.assert_allclose(out["uncertainty/mc_variance"], [[0.04, 0.01]])


def test_derived_maps_of_one_class_and_of_probabilities_out_of_range():
    # One class: the margin is |p - (1 - p)|.
    one = derived_maps(np.array([[[0.8, 0.25]]], np.float32), {"probs": (0, 1)},
                       ["uncertainty/margin", "uncertainty/entropy"])
    np.testing.assert_allclose(one["uncertainty/margin"], [[0.6, 0.5]], atol=1e-6)
    # -0.8 ln 0.8 = 0.1785148, -0.25 ln 0.25 = 0.3465736
    np.testing.assert_allclose(one["uncertainty/entropy"], [[0.1785148, 0.3465736]], atol=1e-6)
    # Blended probabilities a little outside [0, 1] are clipped, never NaN.
    odd = derived_maps(np.array([[[1.0000001]], [[-0.0000001]]], np.float32), {"probs": (0, 2)},
                       ["probs", "uncertainty/entropy", "uncertainty/ovr_entropy_max"])
    np.testing.assert_array_equal(odd["probs"][:, 0, 0], [1.0, 0.0])
    assert odd["uncertainty/entropy"][0, 0] == pytest.approx(0.0, abs=1e-9)
    assert odd["uncertainty/ovr_entropy_max"][0, 0] == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------- MC dropout
def test_mc_dropout_variance_of_a_known_dropout_pattern(tmp_path):
    reader = ArrayReader(np.full((64, 64, 3), 128, np.uint8), mpp=0.5)
    model = KnownDropoutModel().eval()
    result = run(reader, model, tmp_path / "m.zarr", maps=("probs", "uncertainty"),
                 mc_passes=4, tile_size=32, overlap=0)
    maps = {name: handle.levels[0].compute() for name, handle in result.maps.items()}
    # The probabilities come from an eval pass: softmax(log 4, 0, 0) = (2/3, 1/6, 1/6).
    np.testing.assert_allclose(maps["probs"][:, 2, 2], [2 / 3, 1 / 6, 1 / 6], atol=1e-6)
    # Four passes, two of each: per class the variance is (difference / 2)^2 with
    # differences 16/18 - 1/3 = 5/9 and 1/18 - 1/3 = -5/18:
    # (25/324 + 25/1296 + 25/1296) / 3 = 150 / 3888 = 0.0385802
    # (unbiased: 0.0514403; summed over classes: 0.1157407; five passes: 0.0370370).
    variance = maps["uncertainty/mc_variance"]
    assert variance.shape == (8, 8)
    np.testing.assert_allclose(variance, 150 / 3888, atol=1e-6)
    assert model.drop.passes == 4  # one batch of 4 tiles, 4 passes; eval passes not counted
    assert not model.training and not model.drop.training  # the caller's eval mode restored


# ---------------------------------------------------------------------- pyramid levels
def test_downsample_2x_replicates_the_edge_of_odd_sizes():
    block = np.arange(15, dtype=np.float32).reshape(3, 5)
    # Padded to 4 x 6 by repeating row 2 and column 4:
    # [0 1 | 2 3 | 4 4]      means: (0+1+5+6)/4 = 3, (2+3+7+8)/4 = 5, (4+4+9+9)/4 = 6.5
    # [5 6 | 7 8 | 9 9]
    # [10 11 | 12 13 | 14 14]       (10+11+10+11)/4 = 10.5, 12.5, 14
    # [10 11 | 12 13 | 14 14]
    expected = [[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]]
    out = _downsample_2x(block)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    # Leading axes are kept; even sizes need no padding.
    stacked = _downsample_2x(np.stack([block, 2 * block]))
    np.testing.assert_array_equal(stacked, [expected, 2 * np.array(expected)])
    np.testing.assert_array_equal(_downsample_2x(np.arange(8.0).reshape(2, 4)), [[2.5, 4.5]])
    np.testing.assert_array_equal(_downsample_2x(np.array([[7.0]])), [[7.0]])
    # One odd side: only that side is padded. [[0 1 2 (2)] [3 4 5 (5)]] and rows 0..3 of
    # [[0 1 2 3] [4 5 6 7] [8 9 10 11] ([8 9 10 11])].
    np.testing.assert_array_equal(_downsample_2x(np.arange(6.0).reshape(2, 3)), [[2.0, 3.5]])
    np.testing.assert_array_equal(_downsample_2x(np.arange(12.0).reshape(3, 4)),
                                  [[2.5, 4.5], [8.5, 10.5]])
    # Means in float32 whatever comes in: (1 + 2 + 3 + 5) / 4.
    averaged = _downsample_2x(np.array([[1, 2], [3, 5]]))
    assert averaged.dtype == np.float32 and averaged[0, 0] == 2.75


def test_pyramid_shapes_halve_rounding_up_until_256():
    assert _pyramid_shapes((256, 256)) == [(256, 256)]
    assert _pyramid_shapes((257, 100)) == [(257, 100), (129, 50)]
    assert _pyramid_shapes((300, 513)) == [(300, 513), (150, 257), (75, 129)]
    assert _pyramid_shapes((1025, 3)) == [(1025, 3), (513, 2), (257, 1)]
    assert _pyramid_shapes((600, 1)) == [(600, 1)]  # one pixel wide: nothing to halve
    assert map_level_count((300, 513)) == 3 and map_level_count((10, 10)) == 1


def test_store_pyramid_of_an_odd_map(tmp_path):
    # One tile covering a 259 x 11 map with values 1000 * row + column.
    n = 260
    store, _ = _store(tmp_path / "m.zarr", (1, 1), n, n, (259, 11), scale=(2.0, 2.0),
                      translate=(0.75, 0.75))
    values = (1000 * np.arange(n)[:, None] + np.arange(n)[None, :]).astype(np.float32)
    store.write_tiles(np.array([[0, 0]]), values[None, None])
    store.flush()
    levels = store.handles()["cam"].levels
    assert [level.shape for level in levels] == [(1, 259, 11), (1, 130, 6)]
    level0, level1 = levels[0].compute()[0], levels[1].compute()[0]
    np.testing.assert_array_equal(level0, values[:259, :11])
    # 2 x 2 means: rows 2i, 2i+1 average to 1000 (2i + 0.5), the last row (258, repeated)
    # to 258000; columns 2j, 2j+1 to 2j + 0.5, the last column (10, repeated) to 10.
    row_means = np.where(np.arange(130) < 129, 2000.0 * np.arange(130) + 500.0, 258000.0)
    col_means = np.where(np.arange(6) < 5, 2.0 * np.arange(6) + 0.5, 10.0)
    np.testing.assert_allclose(level1, row_means[:, None] + col_means[None, :], rtol=0,
                               atol=1e-2)
    assert level1[0, 0] == pytest.approx(500.5) and level1[129, 5] == pytest.approx(258010.0)
    # OME-NGFF transforms of level 1: pixels of 259/130 and 11/6 level-0 pixels, centres
    # shifted by half a level-1 pixel less half a level-0 pixel.
    attrs = json.loads((tmp_path / "m.zarr" / "cam" / ".zattrs").read_text())
    datasets = attrs["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1"]
    scale0, translate0 = (t[k] for t, k in zip(datasets[0]["coordinateTransformations"],
                                                ("scale", "translation")))
    assert scale0 == [1.0, 2.0, 2.0] and translate0 == [0.0, 0.75, 0.75]
    scale1, translate1 = (t[k] for t, k in zip(datasets[1]["coordinateTransformations"],
                                                ("scale", "translation")))
    np.testing.assert_allclose(scale1, [1.0, 2 * 259 / 130, 2 * 11 / 6])  # 3.9846, 3.6667
    np.testing.assert_allclose(translate1, [0.0, 0.75 + (259 / 130 - 1), 0.75 + (11 / 6 - 1)])
    assert attrs["multiscales"][0]["axes"][0] == {"name": "c", "type": "channel"}


def test_engine_pyramid_levels_of_an_odd_map(tmp_path):
    # 1036 x 44 pixels at stride 4: a 259 x 11 map, level 1 of 130 x 6.
    image = np.zeros((1036, 44, 3), np.uint8)
    image[..., 0] = (np.arange(1036) % 7 * 30)[:, None] + (np.arange(44) // 4 % 2 * 20)[None]
    reader = ArrayReader(image, mpp=0.5)
    result = run(reader, RedModel(), tmp_path / "m.zarr", maps=("cam",),
                 cam_normalisation="none", tile_size=64, overlap=16, batch_size=8)
    levels = result.maps["cam"].levels
    assert [level.shape for level in levels] == [(2, 259, 11), (2, 130, 6)]
    level0 = levels[0].compute()[0].astype(np.float64)
    level1 = levels[1].compute()[0]
    assert level1[0, 0] == pytest.approx(level0[0:2, 0:2].mean(), abs=1e-6)
    assert level1[129, 5] == pytest.approx(level0[258, 10], abs=1e-6)  # corner, both repeated
    assert level1[129, 2] == pytest.approx(level0[258, 4:6].mean(), abs=1e-6)
    assert level1[64, 5] == pytest.approx(level0[128:130, 10].mean(), abs=1e-6)


# ---------------------------------------------------------------------- configuration, layout
def test_expanded_maps_and_config_checks():
    assert InferenceConfig(maps=("uncertainty",)).expanded_maps() == (
        "entropy", "margin", "ovr_entropy")
    assert InferenceConfig(maps=("uncertainty", "cam"), mc_passes=2).expanded_maps() == (
        "cam", "entropy", "margin", "ovr_entropy", "mc_variance")
    assert InferenceConfig(maps=("mc_variance", "fg", "bg"), mc_passes=3).expanded_maps() == (
        "fg", "bg", "mc_variance")
    config = InferenceConfig(maps=["fg", "probs"], mpp=0.5, tile_size=256, overlap=32)
    assert config.maps == ("fg", "probs")
    assert InferenceConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["maps"] == ["fg", "probs"]
    assert config.replace(overlap=0).overlap == 0 and config.overlap == 32
    for bad, match in [({"mpp": 0.5, "level": 0}, "mpp or level"),
                       ({"batch_size": 0}, "batch_size"), ({"readers": 0}, "readers"),
                       ({"prefetch": -1}, "prefetch"), ({"cam_normalisation": "max"}, "max"),
                       ({"dtype": "int8"}, "int8"), ({"maps": ("cam", "heat")}, "heat"),
                       ({"maps": ("mc_variance",), "mc_passes": 1}, "mc_passes >= 2")]:
        with pytest.raises(ValueError, match=match):
            InferenceConfig(**bad)
    assert InferenceConfig(prefetch=0, batch_size=1, readers=1).prefetch == 0


def test_layout_of_the_raw_channels():
    from napari_wsl_al.core.infer.engine import _layout

    model = FixedProbabilityModel([0.2, 0.5, 0.3])
    probe = {"logits": torch.zeros(1, 3), "cams": torch.zeros(1, 3, 4, 4),
             "fg": torch.zeros(1, 1, 4, 4)}
    everything = ("cam", "fg", "bg", "probs", "seg", "entropy", "margin", "ovr_entropy",
                  "mc_variance")
    layout = _layout(model, probe, everything)
    assert layout.tile_channels == {"cam": (0, 3), "fg": (3, 4), "probs": (4, 7),
                                    "mc_variance": (7, 8)}
    assert layout.channel_total == 8 and layout.has_fg and not layout.has_seg
    classes = ("class_0", "class_1", "class_2")
    assert [(m.name, m.channels, m.kind) for m in layout.maps] == [
        ("cam", classes, "cam"), ("fg", None, "fg"), ("bg", None, "bg"),
        ("probs", classes, "probs"),  # no "seg": the model has no segmentation head
        ("uncertainty/entropy", None, "uncertainty"),
        ("uncertainty/margin", None, "uncertainty"),
        ("uncertainty/ovr_entropy", classes, "uncertainty"),
        ("uncertainty/ovr_entropy_max", None, "uncertainty"),
        ("uncertainty/mc_variance", None, "uncertainty")]
    # The background alone still needs the foreground channel; an uncertainty map alone
    # needs the probabilities but is the only map written.
    assert _layout(model, probe, ("bg",)).tile_channels == {"fg": (0, 1)}
    alone = _layout(model, probe, ("margin",))
    assert alone.tile_channels == {"probs": (0, 3)}
    assert [m.name for m in alone.maps] == ["uncertainty/margin"]
    # A segmentation head: its classes name the probabilities (or seg_0, seg_1 ... when the
    # model does not name as many as the head has).
    probe["seg_logits"] = torch.zeros(1, 2, 4, 4)
    model.seg_classes = ("gland", "stroma")
    joint = _layout(model, probe, ("cam", "seg", "entropy"))
    assert joint.has_seg and joint.prob_names == ("gland", "stroma")
    assert joint.tile_channels == {"cam": (0, 3), "probs": (3, 5)}
    assert [(m.name, m.channels) for m in joint.maps] == [
        ("cam", classes), ("seg", ("gland", "stroma")), ("uncertainty/entropy", None)]
    model.seg_classes = ("gland",)
    assert _layout(model, probe, ("seg",)).prob_names == ("seg_0", "seg_1")
    del probe["seg_logits"]
    # Each uncertainty map needs the probabilities; a model without class names gets
    # class_0, class_1 ... from its logits.
    for name in ("probs", "entropy", "margin", "ovr_entropy"):
        assert _layout(model, probe, (name,)).tile_channels == {"probs": (0, 3)}, name
    assert _layout(model, probe, ("seg",)).tile_channels == {}
    model.classes = ()
    assert _layout(model, probe, ("cam",)).class_names == classes


def test_sigmoid_cams_and_float16_maps(tmp_path):
    reader = ArrayReader(np.full((64, 64, 3), 128, np.uint8), mpp=0.5)
    result = run(reader, ConstantModel(logits=(2.0, 0.5), fg=0.7), tmp_path / "m.zarr",
                 maps=("cam", "fg", "bg"), cam_normalisation="sigmoid", tile_size=32,
                 overlap=8, dtype="float16")
    cam = result.maps["cam"].levels[0].compute()
    assert cam.dtype == np.float16
    # 1 / (1 + e^-2) = 0.8807971, 1 / (1 + e^-0.5) = 0.6224593, stored in float16.
    np.testing.assert_allclose(cam[:, 3, 5], [0.8807971, 0.6224593], atol=5e-4)
    # float16(0.7) = 0.7001953125; the background is 1 - fg to float16's step near 0.3
    # (2 ** -12 = 0.000244), whether taken from the float32 or the float16 foreground.
    assert result.maps["fg"].levels[0].compute()[4, 4] == 0.7001953125
    assert abs(float(result.maps["bg"].levels[0].compute()[4, 4]) - 0.3) <= 2.5e-4


def test_a_map_pixel_half_on_tissue_is_gated_by_half(tmp_path):
    image = np.full((128, 192, 3), 245, np.uint8)  # glass (saturation 0) ...
    image[:, 98:] = (200, 80, 160)  # ... then tissue (saturation 0.6) from column 98
    reader = ArrayReader(image, mpp=0.5)
    result = run(reader, ConstantModel(logits=(2.0, 0.5), fg=0.7), tmp_path / "m.zarr",
                 maps=("cam", "fg"), tile_size=64, overlap=16, tissue_gate=True)
    fg = result.maps["fg"].levels[0].compute()
    # Map column 24 covers pixel columns 96..99: two of four are tissue.
    np.testing.assert_allclose(fg[:, 23:26], np.broadcast_to([0.0, 0.35, 0.7], (32, 3)),
                               atol=1e-6)
    cam = result.maps["cam"].levels[0].compute()
    softmax = np.exp([2.0, 0.5]) / np.exp([2.0, 0.5]).sum()  # 0.8175745, 0.1824255
    np.testing.assert_allclose(cam[:, 10, 24], 0.5 * softmax, atol=1e-6)
    # Raw CAM scores are not probabilities: they are left as they are, glass included.
    raw = run(reader, ConstantModel(logits=(2.0, 0.5), fg=0.7), tmp_path / "raw.zarr",
              maps=("cam",), tile_size=64, overlap=16, tissue_gate=True,
              cam_normalisation="none")
    np.testing.assert_allclose(raw.maps["cam"].levels[0].compute()[:, 10, [0, 24, 40]],
                               [[2.0] * 3, [0.5] * 3], atol=1e-6)


def test_uncertainty_is_that_of_the_tissue_glass_reads_as_certain(tmp_path):
    image = np.full((128, 192, 3), 245, np.uint8)  # glass ...
    image[:, 98:] = (200, 80, 160)  # ... then tissue from column 98
    reader = ArrayReader(image, mpp=0.5)
    maps = ("probs", "uncertainty")
    result = run(reader, ConstantModel(logits=(2.0, 0.5), fg=0.7), tmp_path / "m.zarr",
                 maps=maps, tile_size=64, overlap=16, tissue_gate=True)
    p = np.exp([2.0, 0.5]) / np.exp([2.0, 0.5]).sum()  # 0.8175745, 0.1824255
    entropy = -(p * np.log(p)).sum()  # 0.4732; two classes: also each one-vs-rest entropy
    margin = p[0] - p[1]  # 0.6351
    # map columns 23, 24, 25: glass, half tissue (pixels 96..99), tissue
    tissue = np.array([0.0, 0.5, 1.0])

    def columns(name):
        return result.maps[name].levels[0].compute()[..., 10, 23:26]

    np.testing.assert_allclose(columns("uncertainty/entropy"), tissue * entropy, atol=1e-6)
    np.testing.assert_allclose(columns("uncertainty/ovr_entropy_max"), tissue * entropy,
                               atol=1e-6)
    np.testing.assert_allclose(columns("uncertainty/ovr_entropy"),
                               [tissue * entropy, tissue * entropy], atol=1e-6)
    np.testing.assert_allclose(columns("uncertainty/margin"), 1 - tissue * (1 - margin),
                               atol=1e-6)
    # the probabilities are not gated: they still sum to one on glass
    np.testing.assert_allclose(columns("probs"), [[p[0]] * 3, [p[1]] * 3], atol=1e-6)
    ungated = run(reader, ConstantModel(logits=(2.0, 0.5), fg=0.7), tmp_path / "u.zarr",
                  maps=maps, tile_size=64, overlap=16)
    np.testing.assert_allclose(ungated.maps["uncertainty/entropy"].levels[0].compute(),
                               entropy, atol=1e-6)


def test_derived_uncertainty_with_a_tissue_channel_by_hand():
    from napari_wsl_al.core.infer.store import derived_maps

    # channels: probs (2), mc_variance (1), tissue (1), over a 1 x 2 map
    blended = np.array([[[0.5, 0.9]], [[0.5, 0.1]], [[0.02, 0.04]], [[0.25, 1.0]]])
    channels = {"probs": (0, 2), "mc_variance": (2, 3), "tissue": (3, 4)}
    names = ["uncertainty/entropy", "uncertainty/margin", "uncertainty/ovr_entropy_max",
             "uncertainty/mc_variance"]
    out = derived_maps(blended, channels, names)
    h09 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))  # 0.3251
    np.testing.assert_allclose(out["uncertainty/entropy"][0], [0.25 * np.log(2), h09])
    np.testing.assert_allclose(out["uncertainty/ovr_entropy_max"][0], [0.25 * np.log(2), h09])
    np.testing.assert_allclose(out["uncertainty/margin"][0], [1 - 0.25 * 1.0, 0.8])
    np.testing.assert_allclose(out["uncertainty/mc_variance"][0], [0.005, 0.04])


def test_the_models_resolution_is_used_when_none_is_asked(tmp_path):
    class CoarseRedModel(RedModel):
        mpp = 1.0

    image = np.zeros((128, 128, 3), np.uint8)
    reader = ArrayReader(image, mpp=0.5)
    result = run(reader, CoarseRedModel(), tmp_path / "a.zarr", maps=("cam",),
                 cam_normalisation="none", tile_size=32, overlap=0)
    # 1 um/px from a 0.5 um/px slide: 64 target pixels, 16 map pixels of 8 slide pixels.
    assert result.maps["cam"].levels[0].shape == (2, 16, 16)
    assert result.maps["cam"].scale == (4.0, 4.0) and result.maps["cam"].translate == (1.75, 1.75)
    # A slide of unknown resolution is read at level 0, in pixels.
    unknown = run(ArrayReader(image), CoarseRedModel(), tmp_path / "b.zarr", maps=("cam",),
                  cam_normalisation="none", tile_size=32, overlap=0)
    assert unknown.maps["cam"].levels[0].shape == (2, 32, 32)
    assert unknown.maps["cam"].scale == (4.0, 4.0) and unknown.maps["cam"].unit is None
    # An explicit level wins over the model's resolution.
    by_level = run(reader, CoarseRedModel(), tmp_path / "c.zarr", maps=("cam",),
                   cam_normalisation="none", tile_size=32, overlap=0, level=0)
    assert by_level.maps["cam"].levels[0].shape == (2, 32, 32)


def test_a_full_disk_is_found_in_the_chain_of_causes():
    import errno

    from napari_wsl_al.core.infer.store import _is_disk_full

    assert _is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert _is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not _is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not _is_disk_full(ValueError("not an OSError"))
    wrapped = RuntimeError("zarr could not write")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert _is_disk_full(wrapped)
    during = RuntimeError("while handling")
    during.__context__ = ValueError("in between")
    during.__context__.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert _is_disk_full(during)
    unrelated = RuntimeError("zarr could not write")
    unrelated.__cause__ = OSError(errno.EIO, "I/O error")
    assert not _is_disk_full(unrelated)


def test_foreground_from_the_cam_when_the_model_has_no_mask(tmp_path):
    # One 32 x 32 tile, red 0 on the left half and 255 on the right: RedModel's CAM of class 0
    # (the predicted one) is 0 then 1 over 8 x 8 pixels. localize() min-max normalises it and
    # upsamples it bilinearly to 32 pixels (pixel x samples CAM column (x + 0.5) / 4 - 0.5);
    # the map is its 4-pixel mean: column 3 = (0 + 0 + 0.125 + 0.375) / 4 = 0.125,
    # column 4 = (0.625 + 0.875 + 1 + 1) / 4 = 0.875.
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, 16:, 0] = 255
    result = run(ArrayReader(image, mpp=0.5), RedModel(), tmp_path / "m.zarr", maps=("fg",),
                 tile_size=32, overlap=0)
    fg = result.maps["fg"].levels[0].compute()
    np.testing.assert_allclose(fg, np.broadcast_to([0, 0, 0, 0.125, 0.875, 1, 1, 1], (8, 8)),
                               atol=1e-6)


def test_a_slide_narrower_than_a_map_pixel(tmp_path):
    image = np.zeros((40, 3, 3), np.uint8)
    image[..., 0] = (np.arange(40) * 6)[:, None]
    result = run(ArrayReader(image, mpp=0.5), RedModel(), tmp_path / "m.zarr", maps=("cam",),
                 cam_normalisation="none", tile_size=32, overlap=0)
    cam = result.maps["cam"].levels[0].compute()
    assert cam.shape == (2, 10, 1)
    # Map pixel (j, 0) averages rows 4j..4j+3 of three red columns and one white (padding)
    # column: (3 * 6 * (4j + 1.5) + 255) / 4 / 255.
    expected = (3 * 6 * (4 * np.arange(10) + 1.5) + 255) / 4 / 255
    np.testing.assert_allclose(cam[0, :, 0], expected, atol=1e-5)
