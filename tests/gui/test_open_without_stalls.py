"""Opening slides, patch folders and samples in napari: no whole-slide decoding on the UI thread,
the layer redrawn when the background preview is filled, a progress bar while a sample is written."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from napari_wsl_al import _sample_data
from napari_wsl_al.core.io.image_backend import PatchFolderReader
from napari_wsl_al.core.io.openslide_backend import OpenSlideReader

pytestmark = pytest.mark.gui


def count_ui_thread_reads(monkeypatch, cls, name):
    """Calls of ``cls.name`` made on the UI (main) thread, as a list that fills."""
    calls = []
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def wait_for_redraw(layer, qtbot):
    """Until the preview is filled and the layer redrawn (its thumbnail, made from the lowest
    level, is no longer the uniform grey placeholder)."""
    preview = layer.metadata["preview"]
    qtbot.waitUntil(preview.done.is_set, timeout=60000)
    qtbot.waitUntil(lambda: layer.thumbnail[..., :3].std() > 1, timeout=10000)


def assert_lowest_level_exact(layer):
    reader = layer.metadata["reader"]
    lowest = layer.metadata["preview"].levels[-1]
    expected = reader.read_level(lowest, 0, 0, *reader.level_dimensions[lowest])
    np.testing.assert_array_equal(np.asarray(layer.data[-1]), expected)


def test_patch_folder_opens_without_decoding_patches_on_the_ui_thread(make_napari_viewer,
                                                                      tmp_path, qtbot,
                                                                      monkeypatch):
    folder = tmp_path / "patches"
    folder.mkdir()
    yy, xx = np.mgrid[0:300, 0:400]
    for index in range(36):  # 6 x 6 cells: 2400 x 1800, shown whole at a computed level
        patch = np.stack([(xx + 7 * index) % 256, (yy + 3 * index) % 256,
                          np.full_like(xx, 40 * (index % 6))], axis=-1).astype(np.uint8)
        Image.fromarray(patch).save(folder / f"patch_{index:02d}.png")
    decoded = count_ui_thread_reads(monkeypatch, PatchFolderReader, "read_patch")
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin="napari-wsl-al")
    layer = viewer.layers["patches"]
    assert layer.metadata["preview"].levels == [1, 2]
    assert decoded == []
    wait_for_redraw(layer, qtbot)
    assert decoded == []  # every patch was decoded by the preview's thread
    assert_lowest_level_exact(layer)


def test_cmu1_opens_without_reading_the_slide_on_the_ui_thread(make_napari_viewer, cmu1_path,
                                                               qtbot, monkeypatch):
    read = count_ui_thread_reads(monkeypatch, OpenSlideReader, "_read_native")
    viewer = make_napari_viewer()
    viewer.open(str(cmu1_path), plugin="napari-wsl-al")
    layer = viewer.layers["CMU-1-Small-Region"]
    assert read == []
    wait_for_redraw(layer, qtbot)
    assert read == []
    assert_lowest_level_exact(layer)


def test_synthetic_sample_shows_a_progress_bar_while_it_is_written(make_napari_viewer, tmp_path,
                                                                   monkeypatch):
    import napari.utils

    bars = []

    class RecordingProgress(napari.utils.progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)
            self.values = []

        def update(self, n=1):
            super().update(n)
            self.values.append(self.n)

    monkeypatch.setattr(napari.utils, "progress", RecordingProgress)
    monkeypatch.setenv(_sample_data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(_sample_data, "SYNTHETIC_SLIDE_SIZE", 1280)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-wsl-al", "synthetic_slide")
    assert len(bars) == 1 and bars[0].desc.startswith("writing the synthetic sample slide")
    # 1280 px in 256-px tiles: 25 tiles at level 0 and 9 at level 1 (640 px), one update per
    # row of tiles; the last one reaches the total.
    assert bars[0].total == 34 and bars[0].values[-1] == 34
    assert bars[0].values == sorted(bars[0].values) and len(bars[0].values) >= 5
    # Written once: opening it again shows no bar.
    viewer.open_sample("napari-wsl-al", "synthetic_slide")
    assert len(bars) == 1
