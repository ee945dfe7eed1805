"""The inference pipeline's plumbing: tiles read in parallel, the tissue gate, outputs finished
off the model's thread, raw tiles stored in row chunks, blends spaced in time."""

from __future__ import annotations

import threading
import time

import filelock
import numpy as np
import pytest
from infer_models import RedModel, gradient_image

from napari_wsl_al.core.infer import engine
from napari_wsl_al.core.infer import store as store_module
from napari_wsl_al.core.infer.engine import InferenceConfig, _TileReader, _tissue_table, infer_slide
from napari_wsl_al.core.infer.store import MapSpec, MapStore, lock_path
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.progress import run_to_end

# 4 x 6 tiles of 64 pixels (step 48) over a 200 x 280 image, 4 tiles per batch.
FAST = {"tile_size": 64, "overlap": 16, "batch_size": 4, "device": "cpu", "tissue_threshold": 0,
        "readers": 1, "tissue_gate": False, "maps": ("cam", "probs"), "cam_normalisation": "none"}
SHAPE = (200, 280)
TILES = 4 * 6


def run(reader, path, **changes):
    config = InferenceConfig(**{**FAST, **changes})
    return run_to_end(infer_slide(reader, RedModel(), config, MapStore(path)))


def maps_of(path):
    handles = MapStore(path).handles()
    return {name: [np.asarray(level) for level in handle.levels]
            for name, handle in handles.items()}


def assert_same_maps(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        for got, want in zip(actual[name], expected[name]):
            np.testing.assert_array_equal(got, want, err_msg=name)


class SlowReader(ArrayReader):
    """Reads tiles of even columns slowly, so that a batch's tiles finish out of order; can
    fail on one tile."""

    def __init__(self, image, fail_at=None):
        super().__init__(image, mpp=0.5, name="slow")
        self.fail_at = fail_at

    def _read_native(self, level, x, y, width, height):
        if (x, y) == self.fail_at:
            raise OSError(f"cannot decode the tile at {x}, {y}")
        if (x // 48) % 2 == 0:
            time.sleep(0.01)
        return super()._read_native(level, x, y, width, height)


# ---------------------------------------------------------------------- the tissue gate
def test_the_tissue_table_is_the_saturation_test_of_every_pixel_pair():
    table = _tissue_table(0.05).reshape(256, 256)
    high = np.arange(256, dtype=np.float32)[:, None]
    low = np.arange(256, dtype=np.float32)[None, :]
    saturation = (high - low) / np.maximum(high, np.float32(1))
    expected = saturation > np.float32(0.05)
    lower = np.tril(np.ones((256, 256), bool))  # low <= high: the pairs pixels can have
    np.testing.assert_array_equal(table.astype(bool)[lower], expected[lower])
    assert table[200, 190] == 0  # 10 / 200 = 0.05: not above the threshold
    assert table[201, 190] == 1  # 11 / 201 = 0.0547
    assert table[0, 0] == 0 and table[255, 0] == 1 and table[255, 255] == 0


def test_tissue_fraction_counts_tissue_pixels_under_each_map_pixel():
    grey, pink = (100, 100, 100), (200, 80, 160)
    pixels = np.empty((4, 4, 3), np.uint8)
    pixels[...] = grey
    pixels[0, 2] = pink  # top right block: 1 of 4
    pixels[2:4, 0:2] = pink
    pixels[3, 1] = grey  # bottom left block: 3 of 4
    pixels[2:4, 2:4] = pink  # bottom right block: 4 of 4
    reader = _TileReader(None, None, None, pin=False, saturation_threshold=0.05, map_size=2)
    fraction = reader.tissue_fraction(pixels[None]).numpy()
    assert fraction.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(fraction[0, 0], [[0.0, 0.25], [0.75, 1.0]])


# ---------------------------------------------------------------------- reading in parallel
def test_tiles_read_out_of_order_give_the_maps_of_one_reader(tmp_path):
    image = gradient_image(*SHAPE)
    result = run(SlowReader(image), tmp_path / "three.zarr", readers=3, tissue_gate=True)
    assert result.tiles_computed == TILES
    gated = run(ArrayReader(image, mpp=0.5, name="slow"), tmp_path / "gated.zarr",
                tissue_gate=True)
    assert gated.tiles_computed == TILES
    assert_same_maps(maps_of(tmp_path / "three.zarr"), maps_of(tmp_path / "gated.zarr"))


def test_the_thread_waiting_for_a_batch_reads_its_tiles_too(tmp_path):
    readers = []

    class FirstBatchSlow(ArrayReader):
        def _read_native(self, level, x, y, width, height):
            readers.append(threading.current_thread().name)
            if y == 0 and x < 192:  # the first batch: one reader thread is never enough
                time.sleep(0.03)
            return super()._read_native(level, x, y, width, height)

    image = gradient_image(*SHAPE)
    result = run(FirstBatchSlow(image, mpp=0.5, name="slow"), tmp_path / "m.zarr", readers=1)
    assert result.tiles_computed == TILES and len(readers) == TILES
    assert "MainThread" in readers and any(name.startswith("wslal-read") for name in readers)
    run(ArrayReader(image, mpp=0.5, name="slow"), tmp_path / "clean.zarr")
    assert_same_maps(maps_of(tmp_path / "m.zarr"), maps_of(tmp_path / "clean.zarr"))


def test_a_tile_that_cannot_be_read_stops_the_run_with_its_error(tmp_path):
    image = gradient_image(*SHAPE)
    path = tmp_path / "m.zarr"
    # The tile at column 4 of row 0 is in the second batch (tiles 4 to 7).
    with pytest.raises(OSError, match="cannot decode the tile at 192, 0"):
        run(SlowReader(image, fail_at=(192, 0)), path, readers=2)
    assert MapStore(path).done_bitmap().sum() == 4  # the first batch was finished and kept
    probe = filelock.FileLock(str(lock_path(path)))
    probe.acquire(timeout=0)  # the lock was released
    probe.release()
    resumed = run(SlowReader(image), path, readers=2)
    assert resumed.tiles_computed == TILES - 4
    run(ArrayReader(image, mpp=0.5, name="slow"), tmp_path / "clean.zarr")
    assert_same_maps(maps_of(path), maps_of(tmp_path / "clean.zarr"))


# ---------------------------------------------------------------------- off the model's thread
def test_outputs_are_brought_to_the_map_grid_in_the_writer_thread(tmp_path, monkeypatch):
    threads = []
    resample = engine._to_map_size

    def watched(x, n):
        threads.append(threading.current_thread().name)
        return resample(x, n)

    monkeypatch.setattr(engine, "_to_map_size", watched)
    result = run(ArrayReader(gradient_image(*SHAPE), mpp=0.5), tmp_path / "m.zarr")
    assert result.tiles_computed == TILES
    assert threads and all(name.startswith("wslal-write") for name in threads), set(threads)
    # The class-0 CAM is the red channel's 4 x 4 block means (RedModel), as on the main thread.
    red = gradient_image(*SHAPE)[..., 0] / 255.0
    expected = red.reshape(50, 4, 70, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(result.maps["cam"].levels[0].compute()[0], expected, atol=1e-5)


# ---------------------------------------------------------------------- raw tiles on disk
def test_raw_tiles_share_chunks_along_their_row(tmp_path, monkeypatch):
    reader = ArrayReader(gradient_image(*SHAPE), mpp=0.5)
    run(reader, tmp_path / "row.zarr")
    tiles = MapStore(tmp_path / "row.zarr")._open_group("r")["_tiles"]
    rows, cols, channels, n, _ = tiles.shape
    assert (rows, cols, channels, n) == (4, 6, 4, 16)  # cam 2 + probs 2 channels, 64 / 4 px
    assert tiles.chunks == (1, 6, 4, 16, 16)
    tile_bytes = 4 * 16 * 16 * 4
    monkeypatch.setattr(store_module, "TILE_CHUNK_BYTES", 2 * tile_bytes + 1)
    run(reader, tmp_path / "pairs.zarr")
    assert MapStore(tmp_path / "pairs.zarr")._open_group("r")["_tiles"].chunks == (
        1, 2, 4, 16, 16)
    assert_same_maps(maps_of(tmp_path / "pairs.zarr"), maps_of(tmp_path / "row.zarr"))


@pytest.mark.parametrize("chunk_bytes", [1, store_module.TILE_CHUNK_BYTES],
                         ids=["a chunk per tile (stores written before)", "row chunks"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_resumed_run_gives_the_maps_of_a_clean_run(tmp_path, monkeypatch, chunk_bytes, dtype):
    # Resuming reads the first run's tiles back from disk and blends them with fresh ones: the
    # maps must not depend on which came from where, float16 stores included.
    reader = ArrayReader(gradient_image(*SHAPE), mpp=0.5)
    clean = run(reader, tmp_path / "clean.zarr", dtype=dtype)
    assert clean.tiles_computed == TILES
    monkeypatch.setattr(store_module, "TILE_CHUNK_BYTES", chunk_bytes)
    path = tmp_path / "m.zarr"
    config = InferenceConfig(**{**FAST, "dtype": dtype})
    job = infer_slide(reader, RedModel(), config, MapStore(path))
    for _ in range(3):
        next(job)
    job.close()
    done = int(MapStore(path).done_bitmap().sum())
    assert 0 < done < TILES
    monkeypatch.setattr(store_module, "TILE_CHUNK_BYTES", 1 << 20)
    resumed = run(reader, path, dtype=dtype)
    assert resumed.tiles_computed == TILES - done
    along = 1 if chunk_bytes == 1 else 6
    assert MapStore(path)._open_group("r")["_tiles"].chunks[1] == along
    assert_same_maps(maps_of(path), maps_of(tmp_path / "clean.zarr"))


# ---------------------------------------------------------------------- blends spaced in time
def test_a_slow_blend_spaces_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BLEND_INTERVAL_S", 0.0)
    blend_box = MapStore._blend_box

    def slow_blend_box(self, box, done):
        time.sleep(0.2)
        return blend_box(self, box, done)

    monkeypatch.setattr(MapStore, "_blend_box", slow_blend_box)
    store = MapStore(tmp_path / "m.zarr")
    store.prepare({"test": "spacing"}, [MapSpec("cam", ("value",), "cam")], {"cam": (0, 1)},
                  (1, 2), 8, 6, (8, 14), (1.0, 1.0), (0.0, 0.0), None)
    ones = np.ones((1, 1, 8, 8), np.float32)
    store.write_tiles(np.array([[0, 0]]), ones)  # blended at once (no interval)
    assert store.done.tolist() == [[True, False]]
    assert store._blend_wait >= store_module.UPDATE_SPACING * 0.2
    store.write_tiles(np.array([[0, 1]]), 2 * ones)  # within 3 x 0.2 s of the first blend
    assert store.done.tolist() == [[True, False]]
    store.flush()
    assert store.done.tolist() == [[True, True]]
    cam = store.handles()["cam"].levels[0].compute()[0]
    assert cam[0, 0] == 1.0 and cam[0, 13] == 2.0
