"""How maps are presented, without Qt: layer names, the map shown first, legends, the thin
outline raster, and progress messages that say what is happening."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_wsl_al.core.infer.engine import InferenceConfig, InferenceResult
from napari_wsl_al.core.infer.session import (
    OutlineLevel,
    describe_progress,
    first_shown,
    map_layer_specs,
    outline_data,
    resolution_warning,
    result_summary,
    short_slide_name,
)
from napari_wsl_al.core.infer.store import MapHandle
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.progress import Progress


def handle(name, kind, channels=None, shape=(8, 8), values=None):
    lead = () if channels is None else (len(channels),)
    array = np.zeros(lead + shape, np.float32) if values is None else values
    return MapHandle(name, kind, channels, [da.from_array(array)], (2.0, 2.0), (0.75, 0.75),
                     "micrometer")


def two_class_handles():
    classes = ("benign", "malignant")
    return {
        "cam": handle("cam", "cam", classes),
        "fg": handle("fg", "fg"),
        "probs": handle("probs", "probs", classes),
        "uncertainty/entropy": handle("uncertainty/entropy", "uncertainty"),
        "uncertainty/margin": handle("uncertainty/margin", "uncertainty"),
        "uncertainty/ovr_entropy": handle("uncertainty/ovr_entropy", "uncertainty", classes),
        "uncertainty/ovr_entropy_max": handle("uncertainty/ovr_entropy_max", "uncertainty"),
    }


def test_short_slide_names_lose_their_middle():
    assert short_slide_name("CMU-1") == "CMU-1"
    assert short_slide_name("a" * 12) == "a" * 12
    # 12 characters: the first 5, an ellipsis, the last 6.
    assert short_slide_name("CMU-1-Small-Region") == "CMU-1…Region"
    assert short_slide_name("CMU-1-Small-Region-scanner-042") == "CMU-1…er-042"
    assert short_slide_name("CMU-1-Small-Region", limit=20) == "CMU-1-Small-Region"
    assert len(short_slide_name("x" * 200)) == 12


def test_short_names_and_only_the_class_of_interest_shown():
    specs = map_layer_specs(two_class_handles(), "CMU-1-Small-Region", short_names=True)
    names = [spec.name for spec in specs]
    assert names == [
        "CMU-1…Region · P(benign)",
        "CMU-1…Region · P(malignant)",
        "CMU-1…Region · foreground",
        "CMU-1…Region · tile P(benign)",
        "CMU-1…Region · tile P(malignant)",
        "CMU-1…Region · uncertainty",
    ]  # two classes: entropy and margin repeat the uncertainty map, per-class entropy is skipped
    shown = [spec.name for spec in specs if spec.kwargs["visible"]]
    assert shown == ["CMU-1…Region · P(malignant)"]
    cam = specs[1]
    assert cam.title == "P(malignant)"
    assert "malignant" in cam.description and cam.kwargs["metadata"]["description"] == cam.description
    assert specs[-1].kwargs["contrast_limits"] == pytest.approx((0.0, np.log(2.0)))


def test_the_class_of_interest_can_be_chosen():
    specs = map_layer_specs(two_class_handles(), "s", class_of_interest="benign", short_names=True)
    assert [spec.name for spec in specs if spec.kwargs["visible"]] == ["s · P(benign)"]
    # Without a CAM the foreground is shown, without either the uncertainty.
    handles = two_class_handles()
    del handles["cam"]
    assert first_shown(handles) == ("fg", None)
    del handles["fg"]
    assert first_shown(handles) == ("uncertainty/ovr_entropy_max", None)


def test_three_classes_keep_entropy_and_margin_and_old_names_stay_for_other_callers():
    classes = ("a", "b", "c")
    handles = {
        "cam": handle("cam", "cam", classes),
        "probs": handle("probs", "probs", classes),
        "uncertainty/entropy": handle("uncertainty/entropy", "uncertainty"),
        "uncertainty/margin": handle("uncertainty/margin", "uncertainty"),
        "uncertainty/ovr_entropy_max": handle("uncertainty/ovr_entropy_max", "uncertainty"),
    }
    names = [spec.name for spec in map_layer_specs(handles, "slide round 2")]
    assert "slide round 2 entropy" in names and "slide round 2 margin" in names
    assert "slide round 2 cam c" in names and "slide round 2 ovr_entropy_max" in names
    entropy = next(s for s in map_layer_specs(handles, "x") if s.name == "x entropy")
    assert entropy.kwargs["contrast_limits"] == pytest.approx((0.0, np.log(3.0)))


def test_outline_raster_is_two_pixels_wide_and_sits_on_the_map():
    # A 4 x 4 block of foreground 1 in an 8 x 8 map: at threshold 0.25 the contour lies a
    # quarter of the way from the outer pixel centres (1 and 6) to the inner ones (2 and 5),
    # at map coordinates 1.25 and 5.75. With 2 raster pixels per map pixel, raster pixel i has
    # its centre at map coordinate (i + 0.5) / 2 - 0.5: the contour is at raster coordinates
    # 3.0 and 12.0, and each point inks the 2 x 2 pixels from it: rows/columns 3-4 and 12-13.
    values = np.zeros((8, 8), np.float32)
    values[2:6, 2:6] = 1.0
    outline = outline_data(handle("fg", "fg", values=values), 0.25, supersample=2)
    assert outline.polygons == 1
    assert outline.scale == (1.0, 1.0)
    assert outline.translate == pytest.approx((0.25, 0.25))  # 0.75 + 2 * (0.25 - 0.5)
    raster = np.asarray(outline.levels[0])
    assert raster.shape == (16, 16) and raster.dtype == np.uint8
    straight = slice(6, 11)  # away from the cut corners
    for line in (3, 4, 12, 13):
        assert raster[line, straight].all() and raster[straight, line].all()
    # Two pixels wide: nothing beside the lines, nothing inside or outside.
    assert not raster[2, straight].any() and not raster[5, straight].any()
    assert not raster[11, straight].any() and not raster[14, straight].any()
    assert not raster[5:11, 5:11].any()  # inside (the corners are cut diagonally)
    assert raster[:2].sum() == 0 and raster[15:].sum() == 0
    # A window is drawn on its own, equal to the same part of the whole level.
    np.testing.assert_array_equal(outline.levels[0][2:8, 3:14], raster[2:8, 3:14])
    # No foreground above the threshold: an empty raster.
    empty = outline_data(handle("fg", "fg", values=values), 1.5, supersample=2)
    assert empty.polygons == 0 and np.asarray(empty.levels[0]).sum() == 0


def test_outline_pyramid_halves_down_to_the_smallest_level():
    values = np.zeros((100, 60), np.float32)
    values[20:80, 10:50] = 1.0
    outline = outline_data(handle("fg", "fg", shape=(100, 60), values=values), 0.5)
    shapes = [level.shape for level in outline.levels]
    # 16 raster pixels per map pixel: 1600 x 960, halved until the longer side is <= 512.
    assert shapes == [(1600, 960), (800, 480), (400, 240)]
    coarse = np.asarray(outline.levels[2])
    # The top contour (map row 19.5) on the coarsest level: finest row (19.5 + 0.5) * 16 - 0.5
    # = 319.5, divided by 4: 79.875, inked on rows 79 and 80.
    assert coarse[79, 60:180].all() and coarse[80, 60:180].all()
    assert not coarse[78, 60:180].any() and not coarse[81:300, 60:180].any()


def test_outline_level_takes_numpy_style_keys():
    segments = np.array([[[0.0, 0.0], [0.0, 9.0]]])  # one row-0 segment, 10 pixels long
    level = OutlineLevel(segments, (4, 10), 1)
    assert np.asarray(level).sum() == 20  # rows 0 and 1
    assert level[0].tolist() == [1] * 10
    assert level[1, 3] == 1 and level[2, 3] == 0
    assert level[:, 2].tolist() == [1, 1, 0, 0]
    assert level[::2, ::5].tolist() == [[1, 1], [0, 0]]
    # Half the resolution: x from 0 to 4.5, inked on columns 0 to 5 of rows 0 and 1.
    assert OutlineLevel(segments, (4, 10), 2)[:, :].sum() == 12


def test_progress_messages_say_what_was_reused():
    def engine(step, total, computed):
        return Progress(step, total, f"{step}/{total} tiles", {"computed": computed,
                                                               "tiles_per_s": 1.0})

    assert describe_progress(engine(20, 20, 0)).message == "reused finished maps: 20 of 20 tiles"
    assert describe_progress(engine(8, 20, 8)).message == "8 of 20 tiles"
    assert (describe_progress(engine(15, 20, 3), "patches").message
            == "15 of 20 patches (12 reused from an earlier run)")
    stage = Progress(0, None, "detecting tissue…")
    assert describe_progress(stage) is stage


def test_result_summary_is_honest_about_reuse():
    def result(total, computed):
        return InferenceResult("maps/x.zarr", {}, total, computed, 2.5, None, "cpu")

    assert result_summary(result(20, 0)) == (
        "reused finished maps: 20 of 20 tiles, nothing to compute; maps in maps/x.zarr")
    assert result_summary(result(20, 20)) == "20 of 20 tiles computed in 2.5 s on cpu; maps in maps/x.zarr"
    assert result_summary(result(20, 5)).startswith(
        "5 of 20 tiles computed in 2.5 s on cpu (15 reused from an earlier run)")


class _Model:
    mpp = 0.62


def test_resolution_warning_only_when_the_model_resolution_cannot_apply():
    image = np.zeros((64, 64, 3), np.uint8)
    unknown = ArrayReader(image, name="patch")
    known = ArrayReader(image, mpp=0.5, name="slide")
    config = InferenceConfig()
    warning = resolution_warning(unknown, _Model(), config)
    assert warning is not None and "patch has no resolution" in warning and "0.62" in warning
    assert warning.endswith("Slide widget and run again: the project keeps it.")
    assert resolution_warning(unknown, _Model(), config, fix="Do this.").endswith(
        "differs. Do this.")
    assert resolution_warning(unknown, _Model(), config.replace(mpp=1.0)) is None
    assert resolution_warning(known, _Model(), config) is None
    assert resolution_warning(unknown, _Model(), config.replace(level=0)) is None
    no_mpp_model = _Model()
    no_mpp_model.mpp = None
    assert resolution_warning(unknown, no_mpp_model, config) is None
    assert resolution_warning(unknown, object(), config) is None  # a model without the attribute
