"""The colour table of a slide's Reinhard normalisation: values, filling, sharing, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_wsl_al.core.models import colour
from napari_wsl_al.core.models.colour import ColourTable, colour_table, reinhard

TARGET = (70.0, 20.0, -15.0, 10.0, 8.0, 7.0)
SOURCE = (65.0, 25.0, -10.0, 12.0, 9.0, 8.0)


def _images(seed: int, batch: int = 2, size: int = 24) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(batch, 3, size, size), dtype=np.uint8)
    pixels[:, :, :4, :4] = np.array([200, 120, 180], np.uint8)[None, :, None, None]  # repeated
    return torch.from_numpy(pixels)


def _packed(rgb) -> int:
    r, g, b = (int(v) for v in rgb)
    return (r << 16) | (g << 8) | b


def test_table_gives_reinhard_rounded_and_computes_each_colour_once():
    table = ColourTable(TARGET, SOURCE)
    assert table.values.shape == (1 << 24,) and bool((table.values == -1).all())
    images = _images(0)
    got = table(images)
    expected = reinhard(images.float(), TARGET, SOURCE)
    assert got.dtype == torch.float32 and got.shape == images.shape
    np.testing.assert_array_equal(got.numpy(), np.floor(expected.numpy() + 0.5))
    flat = images.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    distinct = {tuple(c) for c in flat.tolist()}
    assert int((table.values >= 0).sum()) == len(distinct)
    # an entry holds the rounded colour, coded R << 16 | G << 8 | B
    colour_in = images[0, :, 0, 0]
    colour_out = got[0, :, 0, 0]
    assert int(table.values[_packed(colour_in)]) == _packed(colour_out)
    # the same images again: nothing new to compute, the same result
    assert table.fill(colour._colour_codes(images)) == 0
    assert torch.equal(table(images), got)
    # new images: only their new colours are computed
    more = _images(1)
    new = {tuple(c) for c in more.permute(0, 2, 3, 1).reshape(-1, 3).numpy().tolist()} - distinct
    assert table.fill(colour._colour_codes(more)) == len(new)
    np.testing.assert_array_equal(
        table(more).numpy(), np.floor(reinhard(more.float(), TARGET, SOURCE).numpy() + 0.5))


def test_hand_worked_entry_of_a_neutral_grey():
    """Grey (128, 128, 128) has a* = b* = 0 and L* = 53.585 (skimage); with a source of spread
    1 and mean (53.585, 0, 0) and a target of the same spread, it stays grey."""
    source = (53.585, 0.0, 0.0, 1.0, 1.0, 1.0)
    target = (53.585, 0.0, 0.0, 1.0, 1.0, 1.0)
    grey = torch.full((1, 3, 1, 1), 128, dtype=torch.uint8)
    assert ColourTable(target, source)(grey).flatten().tolist() == [128.0, 128.0, 128.0]
    # L* moved up by 10: a lighter grey, still neutral
    lighter = ColourTable((63.585, 0.0, 0.0, 1.0, 1.0, 1.0), source)(grey).flatten().tolist()
    assert lighter[0] == lighter[1] == lighter[2] and lighter[0] > 150


def test_black_and_white_are_kept_once_computed(monkeypatch):
    """An entry of 0 (a colour normalised to black) is a known colour, not a missing one; white
    stays white (255.5 truncates to 255)."""
    identity = (50.0, 10.0, 10.0, 5.0, 5.0, 5.0)
    table = ColourTable(identity, identity)
    pixels = torch.zeros((1, 3, 2, 2), dtype=torch.uint8)
    pixels[0, :, 1, 1] = 255
    assert table(pixels)[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert table(pixels)[0, :, 1, 1].tolist() == [255.0, 255.0, 255.0]
    assert int(table.values[0]) == 0 and int(table.values[(1 << 24) - 1]) == (1 << 24) - 1
    assert table.fill(colour._colour_codes(pixels)) == 0
    calls = []
    monkeypatch.setattr(table, "fill", lambda codes: calls.append(codes) or 0)
    table(pixels)
    assert calls == []  # nothing looked missing


def test_table_refuses_float_images():
    with pytest.raises(TypeError, match="uint8"):
        ColourTable(TARGET, SOURCE)(torch.zeros((1, 3, 2, 2)))


def test_tables_are_shared_per_statistics_and_the_oldest_dropped(monkeypatch):
    monkeypatch.setattr(colour, "_TABLES", type(colour._TABLES)())
    first = colour_table(TARGET, SOURCE)
    assert colour_table(list(TARGET), list(SOURCE)) is first  # the same statistics, any type
    second = colour_table(TARGET, (60.0, 25.0, -10.0, 12.0, 9.0, 8.0))
    assert second is not first
    assert colour_table(TARGET, SOURCE) is first  # now the most recently used
    third = colour_table(TARGET, (55.0, 25.0, -10.0, 12.0, 9.0, 8.0))
    assert len(colour._TABLES) == colour.MAX_TABLES == 2
    assert colour_table(TARGET, SOURCE) is first  # kept: second was the least recent
    assert colour_table(TARGET, (60.0, 25.0, -10.0, 12.0, 9.0, 8.0)) is not second
    assert third is not first


def test_threads_sharing_a_table_get_the_serial_results():
    table = ColourTable(TARGET, SOURCE)
    batches = [_images(seed, batch=3, size=32) for seed in range(8)]
    expected = [torch.from_numpy(np.floor(reinhard(b.float(), TARGET, SOURCE).numpy() + 0.5))
                for b in batches]
    results: dict[int, torch.Tensor] = {}
    errors = []

    def work(index):
        try:
            for _ in range(3):
                results[index] = table(batches[index])
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index, want in enumerate(expected):
        assert torch.equal(results[index], want), index
