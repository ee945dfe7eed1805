"""MapLevel: a map level (or one channel of it) read straight from its zarr array, as napari
slices it; and the arrays a map store's handles carry for it."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from infer_models import BlockColourModel

from napari_wsl_al.core.infer.engine import InferenceConfig, infer_slide
from napari_wsl_al.core.infer.session import (
    MapLevel,
    levels_in_memory,
    map_layer_specs,
    same_levels,
)
from napari_wsl_al.core.infer.store import MapStore
from napari_wsl_al.core.io.memory_backend import ArrayReader


@pytest.fixture
def cam(tmp_path):
    group = zarr.open_group(str(tmp_path / "maps.zarr"), mode="w", zarr_format=2)
    array = group.create_array("cam/0", shape=(2, 6, 8), chunks=(1, 4, 4), dtype="float32",
                               fill_value=0.0)
    array[...] = np.arange(2 * 6 * 8, dtype=np.float32).reshape(2, 6, 8)
    return group, array


def test_a_channel_reads_like_the_numpy_array(cam):
    _, array = cam
    expected = np.arange(96, dtype=np.float32).reshape(2, 6, 8)[1]
    level = MapLevel(array, 1)
    assert level.shape == (6, 8) and level.ndim == 2 and level.size == 48 and len(level) == 6
    assert level.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(level), expected)
    np.testing.assert_array_equal(level[2:5, 1:7], expected[2:5, 1:7])
    np.testing.assert_array_equal(level[::2, 1::3], expected[::2, 1::3])
    np.testing.assert_array_equal(level[3], expected[3])
    assert level[4, 5] == expected[4, 5] == 48 + 37
    assert isinstance(level[0:1, 0:1], np.ndarray)
    whole = MapLevel(np.zeros((3, 4), np.float16))
    assert whole.shape == (3, 4) and np.asarray(whole, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="2-D"):
        MapLevel(np.zeros((2, 3, 4)))


def test_reads_show_what_was_written_since(cam):
    group, array = cam
    level = MapLevel(zarr.open_group(group.store, mode="r", zarr_format=2)["cam/0"], 0)
    assert level[0, 0] == 0.0
    array[0, :4, :4] = 7.0  # another handle on the store writes a chunk
    assert level[0, 0] == 7.0 and level[3, 3] == 7.0 and level[0, 4] == 4.0


def test_same_levels_compares_what_they_read(cam):
    group, array = cam
    again = zarr.open_group(group.store, mode="r", zarr_format=2)["cam/0"]
    assert same_levels([MapLevel(array, 1)], [MapLevel(again, 1)])
    assert not same_levels([MapLevel(array, 1)], [MapLevel(again, 0)])
    other = group.create_array("fg/0", shape=(6, 8), chunks=(4, 4), dtype="float32")
    assert not same_levels([MapLevel(array, 0)], [MapLevel(other)])
    assert not same_levels([MapLevel(array, 0)], [MapLevel(array, 0), MapLevel(array, 1)])
    assert not same_levels([np.zeros((6, 8))], [np.zeros((6, 8))])


def test_small_levels_in_memory_are_snapshots(cam):
    group, array = cam
    big, small = MapLevel(array, 1), MapLevel(group.create_array(
        "cam/1", shape=(2, 3, 4), chunks=(1, 4, 4), dtype="float32", fill_value=0.0), 1)
    small.array[...] = 5.0
    levels = levels_in_memory([big, small, "other"], max_pixels=12)
    assert levels[0] is big and levels[2] == "other"  # 48 pixels: left reading the store
    copy = levels[1]
    assert isinstance(copy, MapLevel) and copy.in_memory and not big.in_memory
    assert isinstance(copy.array, np.ndarray) and copy.shape == (3, 4)
    np.testing.assert_array_equal(np.asarray(copy), np.full((3, 4), 5.0))
    small.array[1, 0, 0] = 9.0  # written since: the snapshot keeps what was read
    assert copy[0, 0] == 5.0 and small[0, 0] == 9.0
    # a snapshot is never the same level as another read, even of the same array
    assert not same_levels([copy], [copy])
    assert not same_levels([big, copy], [big, MapLevel(small.array, 1)])
    assert same_levels([big], [MapLevel(array, 1)])
    assert levels_in_memory([big, small], max_pixels=48)[0].in_memory  # at the limit: read


def test_store_handles_carry_their_arrays_and_specs_read_them(tmp_path):
    image = np.zeros((96, 128, 3), np.uint8)
    image[..., 0] = 200
    reader = ArrayReader(image, mpp=0.5, name="red")
    model = BlockColourModel(("red", "blue"), channels=(0, 2), gain=16.0, output_stride=8)
    store = MapStore(tmp_path / "red.zarr")
    job = infer_slide(reader, model, InferenceConfig(tile_size=64, overlap=16, batch_size=2,
                                                     device="cpu", maps=("cam", "fg"),
                                                     tissue_threshold=0.0), store)
    for _ in job:
        pass
    handles = store.handles()
    for handle in handles.values():
        assert len(handle.arrays) == len(handle.levels)
        for array, level in zip(handle.arrays, handle.levels):
            assert isinstance(array, zarr.Array) and array.shape == level.shape
    specs = {spec.name: spec for spec in map_layer_specs(handles, "red")}
    cam_red = specs["red cam red"].data[0]
    assert isinstance(cam_red, MapLevel) and cam_red.array is handles["cam"].arrays[0]
    np.testing.assert_array_equal(np.asarray(cam_red), handles["cam"].levels[0][0].compute())
