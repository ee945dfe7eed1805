"""Map layers read the store's zarr arrays directly: napari's slicing on the UI thread reads the
window it shows, at the level it shows, and no dask graph is computed."""

from __future__ import annotations

import dask
import pytest
import zarr

from napari_wsl_al._qt.infer_widget import InferenceWidget
from napari_wsl_al.core.infer.session import MapLevel, map_layer_specs
from napari_wsl_al.core.infer.store import MapHandle

pytestmark = pytest.mark.gui

#: Level shapes of the map: 4096 x 4096 down to 512 x 512, in chunks of 256.
SHAPES = [(4096 >> level, 4096 >> level) for level in range(4)]


@pytest.fixture
def big_map(tmp_path):
    """A four-level foreground map written with zarr: 0.5 on its left half, 0 elsewhere."""
    group = zarr.open_group(str(tmp_path / "maps.zarr"), mode="w", zarr_format=2)
    arrays = []
    for level, shape in enumerate(SHAPES):
        array = group.create_array(f"fg/{level}", shape=shape, chunks=(256, 256),
                                   dtype="float32", fill_value=0.0)
        array[:, : shape[1] // 2] = 0.5
        arrays.append(array)
    handle = MapHandle("fg", "fg", None, [], (1.0, 1.0), (0.0, 0.0), "micrometer",
                       arrays=tuple(arrays))
    return group, handle


def test_refreshes_read_the_window_shown_never_a_whole_large_level(make_napari_viewer, qtbot,
                                                                    big_map, monkeypatch):
    group, handle = big_map
    spec = map_layer_specs({"fg": handle}, "big")[0]
    assert [level.shape for level in spec.data] == SHAPES
    assert all(isinstance(level.array, zarr.Array) for level in spec.data)
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(spec.data, name=spec.name, **{**spec.kwargs, "visible": True})
    # Zoomed in on a corner (100 µm across at zoom 8): napari shows level 0 there.
    viewer.scene.camera.center = (50.0, 50.0)
    viewer.scene.camera.zoom = 8.0
    qtbot.waitUntil(lambda: layer.data_level == 0, timeout=10000)
    reads = []
    read = MapLevel.__getitem__

    def recorded(level, key):
        values = read(level, key)
        reads.append((level.shape, values.shape))
        return values

    def no_dask(*args, **kwargs):
        raise AssertionError("a dask graph was computed on the UI thread")

    monkeypatch.setattr(MapLevel, "__getitem__", recorded)
    monkeypatch.setattr(dask, "compute", no_dask)
    # A refresh during a run: fresh specs of the same arrays; the run wrote a corner since.
    group["fg/0"][:256, :256] = 0.75
    InferenceWidget._update_layer(layer, map_layer_specs({"fg": handle}, "big")[0])
    assert layer.get_value((50.0, 50.0), world=True) == (0, 0.75)
    # Only the visible window of level 0 was read: the canvas (at most 1600 x 1000 pixels)
    # shows at most 200 x 125 µm at zoom 8, i.e. 200 x 125 level-0 pixels.
    assert reads and {shape for shape, _ in reads} == {SHAPES[0]}
    assert all(rows * cols <= 200 * 200 for _, (rows, cols) in reads)
    # The run's last specs: the data is set again (napari rereads the coarsest level, which it
    # keeps), then level 0 where the view is; never a whole level but the smallest.
    reads.clear()
    group["fg/3"][:32, :32] = 0.75
    InferenceWidget._update_layer(layer, map_layer_specs({"fg": handle}, "big")[0], final=True)
    qtbot.waitUntil(lambda: layer.data_level == 0, timeout=10000)
    qtbot.wait(200)
    assert {shape for shape, _ in reads} == {SHAPES[0], SHAPES[-1]}
    assert [window for shape, window in reads if shape == SHAPES[-1]] == [SHAPES[-1]]
    assert all(rows * cols <= 200 * 200 for shape, (rows, cols) in reads if shape == SHAPES[0])
    viewer.scene.camera.zoom = 0.1  # the whole map: the coarsest level, as written
    qtbot.waitUntil(lambda: layer.data_level == 3, timeout=10000)
    assert layer.get_value((10.0, 10.0), world=True) == (3, 0.75)
