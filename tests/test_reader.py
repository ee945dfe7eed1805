"""The napari reader contribution: LayerData for slides, None (never an exception) for the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_wsl_al._reader import MIN_LEVEL_SIZE, napari_get_reader
from napari_wsl_al.core.io.base import SlideReader

REPO = Path(__file__).resolve().parents[1]
REAL_SVS = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"


@pytest.fixture
def readable(tmp_path) -> dict[str, Path]:
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
    paths = {}
    paths["tif"] = tmp_path / "tiled.tif"
    tifffile.imwrite(
        paths["tif"], image, tile=(128, 128), photometric="rgb",
        resolution=(2e4, 2e4), resolutionunit="CENTIMETER",
    )  # fmt: skip
    paths["png"] = tmp_path / "patch.png"
    Image.fromarray(image).save(paths["png"])
    paths["zarr"] = tmp_path / "array.zarr"
    zarr.create_array(paths["zarr"], shape=image.shape, chunks=(128, 128, 3), dtype="uint8")[
        :
    ] = image
    paths["folder"] = tmp_path / "patches"
    paths["folder"].mkdir()
    for index in range(3):
        Image.fromarray(image[:50, :60]).save(paths["folder"] / f"{index}.png")
    return paths


def test_reads_each_kind(readable):
    for kind, path in readable.items():
        reader_function = napari_get_reader(str(path))
        assert callable(reader_function), kind
        layers = reader_function(str(path))
        assert len(layers) == 1
        data, kwargs, layer_type = layers[0]
        assert layer_type == "image"
        assert kwargs["rgb"] is True and kwargs["multiscale"] is True
        assert isinstance(kwargs["metadata"]["reader"], SlideReader)
        assert data[0].ndim == 3 and data[0].shape[2] == 3


def test_accepts_a_list_of_one_path(readable):
    path = readable["png"]
    assert callable(napari_get_reader([str(path)]))
    assert napari_get_reader([str(path), str(readable["tif"])]) is None
    layers = napari_get_reader([path])([path])
    assert layers[0][0][0].shape == (300, 400, 3)


def test_scale_in_microns(readable):
    _, kwargs, _ = napari_get_reader(readable["tif"])(readable["tif"])[0]
    assert kwargs["scale"] == pytest.approx((0.5, 0.5))
    assert kwargs["units"] == "um"
    _, kwargs, _ = napari_get_reader(readable["png"])(readable["png"])[0]
    assert kwargs["scale"] == (1.0, 1.0) and "units" not in kwargs


def test_never_raises_on_garbage(tmp_path):
    (tmp_path / "random.svs").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "text.tif").write_text("nope")
    (tmp_path / "empty.svs").touch()
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    group = zarr.open_group(tmp_path / "group.zarr", mode="w")
    group.create_array("a", shape=(4, 4), dtype="uint8")
    candidates = [
        tmp_path / "random.svs", tmp_path / "text.tif", tmp_path / "empty.svs",
        tmp_path / "empty_dir", tmp_path / "bad.zarr", tmp_path / "bad.png",
        tmp_path / "group.zarr", tmp_path / "missing.svs", "", None, 42, b"bytes", [], [None],
        ["a", "b"], {"path": "x"}, str(tmp_path / "random.svs"),
    ]  # fmt: skip
    for candidate in candidates:
        assert napari_get_reader(candidate) is None, candidate


@pytest.mark.skipif(not REAL_SVS.exists(), reason=f"real test data absent at {REAL_SVS}")
def test_real_slide_layer_data():
    layers = napari_get_reader(str(REAL_SVS))(str(REAL_SVS))
    data, kwargs, layer_type = layers[0]
    assert [level.shape for level in data] == [(2967, 2220, 3), (1483, 1110, 3), (741, 555, 3)]
    assert kwargs["scale"] == pytest.approx((0.499, 0.499))
    assert kwargs["name"] == "CMU-1-Small-Region"
    slide = kwargs["metadata"]["slide"]
    assert slide["mpp"] == pytest.approx([0.499, 0.499]) and slide["objective_power"] == 20
    reader = kwargs["metadata"]["reader"]
    np.testing.assert_array_equal(
        data[0][100:200, 300:400], reader.read_region((300, 100), 0, (100, 100))
    )
    np.testing.assert_array_equal(np.asarray(data[2]), reader.read_level(2, 0, 0, 555, 741))


def test_small_levels_dropped():
    from napari_wsl_al._reader import layer_data
    from napari_wsl_al.core.io import ArrayReader

    image = np.zeros((1100, 40, 3), np.uint8)
    reader = ArrayReader(image, levels=[image[::2, ::2], image[::4, ::4], image[::8, ::8]])
    data, _, _ = layer_data(reader)[0]
    assert all(min(level.shape[:2]) >= MIN_LEVEL_SIZE for level in data[1:])
    assert len(data) == 2 and data[0].shape == (1100, 40, 3)


def test_napari_accepts_the_layer_kwargs(readable):
    layers = pytest.importorskip("napari.layers")
    data, kwargs, _ = napari_get_reader(readable["tif"])(readable["tif"])[0]
    layer = layers.Image(data, **kwargs)
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == pytest.approx((0.5, 0.5))
    assert str(layer.units[0]) in ("micrometer", "µm", "um")
