"""napari sample data: the real CMU-1 slide, the synthetic slide and patches, and clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_wsl_al import _sample_data
from napari_wsl_al.core.errors import SlideNotFoundError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Synthetic samples go to a temporary cache, small enough for tests."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(_sample_data.CACHE_ENV, str(folder))
    monkeypatch.setattr(_sample_data, "SYNTHETIC_SLIDE_SIZE", 1280)
    monkeypatch.setattr(_sample_data, "SYNTHETIC_PATCHES_PER_CLASS", 3)
    monkeypatch.setattr(_sample_data, "SYNTHETIC_PATCH_SIZE", 64)
    return folder


def _check_image_layer(layer, *, multiscale: bool = True):
    data, kwargs, layer_type = layer
    assert layer_type == "image"
    assert kwargs["rgb"] is True
    if multiscale:
        assert kwargs["multiscale"] is True
        shapes = [level.shape for level in data]
        assert all(s[-1] == 3 for s in shapes)
        assert shapes == sorted(shapes, reverse=True)
        first = data[0]
    else:
        first = data[0] if isinstance(data, list) else data
    window = np.asarray(first[:64, :64])
    assert window.dtype == np.uint8 and window.shape == (64, 64, 3)
    return data, kwargs


def test_cmu1_from_the_repository(monkeypatch):
    monkeypatch.delenv(_sample_data.SAMPLE_DATA_ENV, raising=False)
    layers = _sample_data.cmu1_small_region()
    assert len(layers) == 1
    data, kwargs = _check_image_layer(layers[0])
    assert data[0].shape == (2967, 2220, 3)
    assert kwargs["scale"] == pytest.approx((0.499, 0.499), abs=1e-3)
    assert kwargs["name"] == "CMU-1-Small-Region"


def test_cmu1_from_the_environment_variable(tmp_path, monkeypatch, cmu1_path):
    shutil.copy(cmu1_path, tmp_path / _sample_data.CMU1_FILE_NAME)
    monkeypatch.setenv(_sample_data.SAMPLE_DATA_ENV, str(tmp_path))
    assert _sample_data.find_cmu1() == tmp_path / _sample_data.CMU1_FILE_NAME
    assert _sample_data.cmu1_small_region()[0][0][0].shape == (2967, 2220, 3)


def test_cmu1_missing_says_where_to_get_it_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv(_sample_data.SAMPLE_DATA_ENV, raising=False)
    monkeypatch.setattr(_sample_data, "repository_sample_folder", lambda: tmp_path / "nowhere")
    with pytest.raises(SlideNotFoundError) as caught:
        _sample_data.cmu1_small_region()
    message = str(caught.value)
    assert _sample_data.CMU1_URL in message
    assert _sample_data.SAMPLE_DATA_ENV in message
    assert str(tmp_path / "nowhere") in message
    assert isinstance(caught.value, FileNotFoundError)


def test_synthetic_slide_is_written_once_and_opened(cache):
    layers = _sample_data.synthetic_slide()
    assert len(layers) == 1
    data, kwargs = _check_image_layer(layers[0])
    assert data[0].shape == (1280, 1280, 3)
    assert kwargs["scale"] == pytest.approx((0.5, 0.5))
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and any(f.endswith(".truth.npz") for f in files)
    path = _sample_data.synthetic_slide_path()
    stamp = path.stat().st_mtime_ns
    _sample_data.synthetic_slide()
    assert path.stat().st_mtime_ns == stamp, "the cached slide is reused"


def test_synthetic_patches_with_gland_labels(cache):
    layers = _sample_data.synthetic_patches()
    data, kwargs = _check_image_layer(layers[0])
    assert [layer[2] for layer in layers] == ["image", "labels"]
    labels, label_kwargs, _ = layers[1]
    height, width = data[0].shape[:2]
    assert labels.shape == (height, width)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert label_kwargs["scale"] == kwargs["scale"]
    # labels sit on the glands: the mosaic's first patch is benign, its glands are label 1
    reader = kwargs["metadata"]["reader"]
    x, y, w, h = reader.patch_boxes[0]
    assert set(np.unique(labels[y : y + h, x : x + w])) <= {0, 1}
    root = _sample_data.synthetic_patches_path()
    assert (root / "grade.csv").is_file() and len(list((root / "images").iterdir())) == 6


def test_the_cache_folder_defaults_to_the_user_cache(monkeypatch):
    monkeypatch.delenv(_sample_data.CACHE_ENV, raising=False)
    assert "napari-wsl-al" in str(_sample_data.cache_folder())


def test_writing_samples_reports_progress_once(cache):
    records = []
    _sample_data.synthetic_patches_path(progress=records.append)
    # 3 patches per class, 2 classes: one record per patch, the last at the total.
    assert [(r.step, r.total) for r in records] == [(k, 6) for k in range(1, 7)]
    slide_records = []
    _sample_data.synthetic_slide_path(progress=slide_records.append)
    # 1280 px in 256-px tiles: 25 tiles at level 0, 9 at level 1 (640 px).
    assert slide_records[-1].step == slide_records[-1].total == 34
    records.clear()
    slide_records.clear()
    _sample_data.synthetic_patches_path(progress=records.append)
    _sample_data.synthetic_slide_path(progress=slide_records.append)
    assert records == [] and slide_records == []  # cached: nothing written, nothing reported
