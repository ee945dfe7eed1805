"""Self-training in a round: confident pseudo labels of the unlabelled pixels, made part-way
through the steps and added to the region loss with their weight."""

import numpy as np
import pytest
import torch
from test_al_train import SEG, _stripes_items, tiny_wsl

from napari_wsl_al.core.al import train as train_module
from napari_wsl_al.core.al.train import (
    RegionTrainConfig,
    confident_labels,
    joint_from_wsl,
    self_training_maps,
    train_regions,
)
from napari_wsl_al.core.errors import ActiveLearningError
from napari_wsl_al.core.models.joint import IGNORE_INDEX
from napari_wsl_al.core.progress import run_to_end

I = IGNORE_INDEX


def test_confident_labels_by_hand():
    # 3 classes on a 2 x 3 image; region 1 (left column) is labelled
    probs = np.array([
        [[0.95, 0.20, 0.05], [0.50, 0.10, 0.30]],   # background
        [[0.03, 0.70, 0.90], [0.45, 0.85, 0.30]],   # benign
        [[0.02, 0.10, 0.05], [0.05, 0.05, 0.40]],   # malignant
    ])
    superpixels = np.array([[1, 2, 2], [1, 2, 3]])
    labelled = np.array([False, True, False, False])
    out = confident_labels(probs, superpixels, labelled, 0.8)
    # (0, 0) is confident background but its region is labelled; 0.70 and 0.40 are below 0.8
    assert out.dtype == np.uint8
    assert out.tolist() == [[I, I, 1], [I, 1, I]]
    # a threshold of exactly a probability leaves it out (strictly above)
    assert confident_labels(probs, superpixels, labelled, 0.85).tolist() == [[I, I, 1], [I, I, I]]
    nothing = np.zeros(4, bool)
    assert confident_labels(probs, superpixels, nothing, 0.5).tolist() == [[0, 1, 1], [I, 1, I]]
    # labelled regions given as 0 / 1 (e.g. from a count) mean the same
    as_ints = confident_labels(probs, superpixels, labelled.astype(np.int64), 0.8)
    assert as_ints.tolist() == [[I, I, 1], [I, 1, I]]


def test_self_training_maps_leave_labelled_regions_out():
    torch.manual_seed(0)
    items, _ = _stripes_items(2)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    labelled = np.zeros(5, bool)
    labelled[1] = True  # item 0, dark half
    maps = self_training_maps(model, items, labelled, 0.5)
    assert [m.shape for m in maps] == [(64, 64), (64, 64)]
    assert (maps[0][:, :32] == I).all()
    # with 3 classes a most probable class above 0.5 is the only one: compare with the model
    probs = next(train_module.predict_items(model, items[1:], "cpu"))[1]
    expected = np.where(probs.max(0) > 0.5, probs.argmax(0), I)
    assert np.array_equal(maps[1], expected)


WEIGHT = r"^the self-training weight must be >= 0, not"
THRESHOLD = r"^the self-training threshold must be in \[0.5, 1\), not"
START = r"^self_training_start must be in \(0, 1\), not"


@pytest.mark.parametrize("field, value, message", [
    ("self_training", -0.1, WEIGHT), ("self_training", float("nan"), WEIGHT),
    ("self_training", float("inf"), WEIGHT),
    ("self_training_threshold", 0.49, THRESHOLD), ("self_training_threshold", 1.0, THRESHOLD),
    ("self_training_start", 0.0, START), ("self_training_start", 1.0, START),
])
def test_self_training_settings_are_checked(field, value, message):
    with pytest.raises(ActiveLearningError, match=message):
        RegionTrainConfig(**{field: value})


def test_self_training_settings_at_their_bounds_and_in_json():
    config = RegionTrainConfig(self_training=0.0, self_training_threshold=0.5,
                               self_training_start=0.01)
    assert config.self_training == 0.0
    again = RegionTrainConfig.from_json(RegionTrainConfig(self_training=2.0).to_json())
    assert again.self_training == 2.0 and again.self_training_threshold == 0.9
    assert again.self_training_start == 0.5


def _stripes_table():
    table = np.zeros((7, 3), bool)
    table[1, 1] = True  # item 0: dark half = benign
    table[2, 0] = True  # item 0: bright half = background
    return table


def _run(weight, steps=40, start=0.5, messages=None, threshold=0.5):
    torch.manual_seed(0)
    items, _ = _stripes_items()
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    config = RegionTrainConfig(steps=steps, batch_size=4, crop_size=32, lr=5e-3,
                               self_training=weight, self_training_threshold=threshold,
                               self_training_start=start)
    callback = None if messages is None else (lambda record: messages.append(record))
    return run_to_end(train_regions(model, items, _stripes_table(), config), callback)


def test_self_training_starts_part_way_and_adds_its_weighted_loss():
    messages = []
    off = _run(0.0)
    one = _run(1.0, messages=messages)
    two = _run(2.0)
    three = _run(3.0)
    announced = [r for r in messages if r.message.startswith("self-training")]
    assert len(announced) == 1 and announced[0].step == 20
    assert off["self_training_pixels"] == 0
    # only items 1 and 2 (8192 pixels) hold unlabelled pixels; the same model labels them
    assert 0 < one["self_training_pixels"] == two["self_training_pixels"] <= 2 * 64 * 64
    # the first half is the same training whatever the weight
    assert one["history"][:20] == off["history"][:20] == three["history"][:20]
    # at the first self-training step models and crops are the same: the loss is
    # region loss + weight x pseudo-label cross-entropy
    ce = two["history"][20] - one["history"][20]
    assert ce > 0
    assert three["history"][20] - one["history"][20] == pytest.approx(2 * ce, rel=1e-4)


def test_self_training_draws_every_other_crop_anywhere(monkeypatch):
    items, _ = _stripes_items()
    seen = []
    crop = train_module._crop_around

    def recording(arrays, centre, size, fill):
        seen.append(next(i for i, item in enumerate(items) if arrays[0] is item.image))
        return crop(arrays, centre, size, fill)

    monkeypatch.setattr(train_module, "_crop_around", recording)
    torch.manual_seed(0)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    config = RegionTrainConfig(steps=40, batch_size=2, crop_size=32, self_training=1.0,
                               self_training_start=0.5)
    run_to_end(train_regions(model, items, _stripes_table(), config))
    before, after = seen[:40], seen[40:]
    assert set(before) == {0}  # only item 0 holds labels
    assert set(after[0::2]) == {0}  # the first crop of a step: around a labelled region
    assert set(after[1::2]) == {0, 1, 2}  # the second: anywhere in any image


def test_self_training_and_label_prop_are_exclusive():
    items, _ = _stripes_items(2)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    maps = [None, np.zeros((64, 64), np.uint8)]
    config = RegionTrainConfig(steps=4, batch_size=2, crop_size=32, self_training=1.0)
    with pytest.raises(ActiveLearningError, match="cannot be combined"):
        run_to_end(train_regions(model, items, _stripes_table()[:5], config, pseudo_maps=maps))
