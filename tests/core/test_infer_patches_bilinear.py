"""Patch cells bring coarse outputs (CAMs, class probabilities) to the map bilinearly, as slides do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infer_models import UnitInputModel
from PIL import Image
from torch.nn import functional as F

from napari_wsl_al.core.infer import InferenceConfig, MapStore, infer_slide
from napari_wsl_al.core.infer.patches import area_weights, bilinear_weights, resample_weights
from napari_wsl_al.core.io.image_backend import PatchFolderReader
from napari_wsl_al.core.progress import run_to_end

#: Red values of the image quadrants: the model's 32-pixel outputs are red / 60, i.e. 0..3.
RED_STEP = 60


class QuadrantModel(UnitInputModel):
    """Stride 32: CAM of class 0 = red / 60 per 32-pixel block (its negative for class 1),
    foreground = red (0..1) per block, segmentation logits = the CAMs."""

    classes = ("red", "other")
    output_stride = 32

    def forward(self, x):
        red = self.tied(F.avg_pool2d(x[:, :1], self.output_stride))
        level = red * (255.0 / RED_STEP)
        cams = torch.cat([level, -level], dim=1)
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams, "seg_logits": cams, "fg": red}


def write_patch(folder, name, red_levels, height, width):
    """A patch whose red is ``RED_STEP * level`` on each block of a grid of ``red_levels``."""
    levels = np.asarray(red_levels)
    rows = np.array_split(np.arange(height), levels.shape[0])
    cols = np.array_split(np.arange(width), levels.shape[1])
    image = np.full((height, width, 3), 100, np.uint8)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            image[r[0] : r[-1] + 1, c[0] : c[-1] + 1, 0] = RED_STEP * levels[i, j]
    Image.fromarray(image).save(folder / name)


def test_bilinear_weights_by_hand():
    # Two source pixels of 32 (centres 16, 48), four target pixels of 16 (centres 8, 24, 40,
    # 56): u = c / 32 - 1/2 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    np.testing.assert_allclose(bilinear_weights(2, 32.0, 4, 16.0, 64.0),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], atol=1e-7)
    # Three sources of 1, targets of 1.5 (centres 0.75, 2.25): u = 0.25, 1.75; with an
    # extent of 2 the second target's centre lies outside the patch: a zero row.
    np.testing.assert_allclose(bilinear_weights(3, 1.0, 2, 1.5, 3.0),
                               [[0.75, 0.25, 0], [0, 0.25, 0.75]], atol=1e-7)
    np.testing.assert_allclose(bilinear_weights(3, 1.0, 2, 1.5, 2.0)[1], 0.0)


def test_bilinear_weights_are_torch_bilinear_on_the_same_extent():
    values = torch.arange(5 * 3, dtype=torch.float64).reshape(1, 1, 5, 3) ** 1.5
    wy = bilinear_weights(5, 2.0, 7, 10 / 7, 10.0).astype(np.float64)
    wx = bilinear_weights(3, 4.0, 8, 1.5, 12.0).astype(np.float64)
    expected = F.interpolate(values, size=(7, 8), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(wy @ values[0, 0].numpy() @ wx.T, expected[0, 0].numpy(),
                               rtol=1e-6)


def test_resample_weights_takes_area_means_when_shrinking():
    np.testing.assert_array_equal(resample_weights(8, 1.0, 3, 2.5, 7.0),
                                  area_weights(8, 1.0, 3, 2.5, 7.0))
    np.testing.assert_array_equal(resample_weights(4, 2.0, 4, 2.0, 8.0),
                                  area_weights(4, 2.0, 4, 2.0, 8.0))
    np.testing.assert_array_equal(resample_weights(2, 32.0, 4, 16.0, 64.0),
                                  bilinear_weights(2, 32.0, 4, 16.0, 64.0))


@pytest.fixture
def maps(tmp_path):
    """Two patches side by side, 64 x 64 cells of 4 x 4 map pixels of 16 pixels:
    ``quadrants`` (64 x 64, red levels [[0, 1], [2, 3]]) and ``halves`` (40 high, 64 wide,
    red levels [1, 3] left and right, the same on every row)."""
    folder = tmp_path / "patches"
    folder.mkdir()
    write_patch(folder, "a_quadrants.png", [[0, 1], [2, 3]], 64, 64)
    write_patch(folder, "b_halves.png", [[1, 3]], 40, 64)
    reader = PatchFolderReader(folder)
    assert reader.cell_size == (64, 64) and (reader.rows, reader.columns) == (1, 2)
    config = InferenceConfig(device="cpu", readers=1, maps=("cam", "fg", "probs"),
                             cam_normalisation="none", tissue_gate=False, map_stride=16)
    result = run_to_end(infer_slide(reader, QuadrantModel(), config,
                                    MapStore(tmp_path / "maps.zarr")))
    return {name: result.maps[name].levels[0].compute() for name in ("cam", "fg", "probs")}


def test_cams_of_a_2x2_stride_grid_are_interpolated_in_the_cell_by_hand(maps):
    cam = maps["cam"]
    assert cam.shape == (2, 4, 8)
    # Per axis the weights are [1, 0], [3/4, 1/4], [1/4, 3/4], [0, 1] (see above): map pixel
    # (i, j) is 2 u_i + u_j with u = 0, 1/4, 3/4, 1; corners keep the outputs 0, 1, 2, 3.
    quadrants = [[0.0, 0.25, 0.75, 1.0],
                 [0.5, 0.75, 1.25, 1.5],
                 [1.5, 1.75, 2.25, 2.5],
                 [2.0, 2.25, 2.75, 3.0]]
    np.testing.assert_allclose(cam[0, :, :4], quadrants, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cam[1, :, :4], -np.array(quadrants), rtol=1e-4, atol=1e-5)
    # halves: outputs [1, 3] on its two 32-pixel rows (the second is the 8 rows of the patch
    # and their reflection); map rows whose centre (40, 56) is below the patch's 40 rows are
    # 0. Its first column starts again from its own output 1: nothing of the quadrants' 1 and 3.
    halves = [[1.0, 1.5, 2.5, 3.0], [1.0, 1.5, 2.5, 3.0], [0, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(cam[0, :, 4:], halves, rtol=1e-4, atol=1e-5)


def test_class_probabilities_are_interpolated_and_the_foreground_is_not(maps):
    # probs: softmax of the segmentation logits (v, -v) = sigmoid(2 v) per output, then the
    # same weights: 1/4 and 3/4 of two neighbouring outputs' probabilities.
    def s(v):
        return 1.0 / (1.0 + np.exp(-2.0 * v))

    u = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    quadrant_probs = u @ s(np.array([[0.0, 1.0], [2.0, 3.0]])) @ u.T
    np.testing.assert_allclose(maps["probs"][0, :, :4], quadrant_probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps["probs"][1, :, :4], 1 - quadrant_probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps["probs"][0, :2, 4:], [[s(1), (3 * s(1) + s(3)) / 4,
                                                           (s(1) + 3 * s(3)) / 4, s(3)]] * 2,
                               atol=1e-5)
    np.testing.assert_allclose(maps["probs"][:, 2:, 4:], 0.0)
    # fg keeps its area means: each 16-pixel map pixel lies in one 32-pixel output block.
    red = RED_STEP / 255 * np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    np.testing.assert_allclose(maps["fg"][:, :4], red, rtol=1e-4, atol=1e-5)
    halves = RED_STEP / 255 * np.array([[1, 1, 3, 3], [1, 1, 3, 3], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(maps["fg"][:, 4:], halves, rtol=1e-4, atol=1e-5)
