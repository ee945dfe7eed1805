"""Training the joint model from region labels: initialisation from WSL, crops, learning, scores,
Label_prop's Eq. 1."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_wsl_al.core.al.losses import RegionLossConfig
from napari_wsl_al.core.al.train import (
    RegionItem,
    RegionTrainConfig,
    _crop_around,
    joint_from_wsl,
    label_prop_loss,
    load_round_model,
    pad_to_stride,
    predict_image_classes,
    predict_items,
    pseudo_segmentations,
    segmentation_scores,
    train_dense,
    train_regions,
)
from napari_wsl_al.core.errors import ActiveLearningError
from napari_wsl_al.core.models.checkpoint import save_checkpoint
from napari_wsl_al.core.models.factory import ModelConfig, build_model
from napari_wsl_al.core.models.joint import IGNORE_INDEX
from napari_wsl_al.core.progress import run_to_end

SEG = ("background", "benign", "malignant")


def tiny_wsl(arch="maxmin"):
    config = ModelConfig(arch=arch, classes=("benign", "malignant"), depth=18, width=0.125)
    model = build_model(config)
    return model


def test_joint_from_wsl_copies_backbone_and_classifier():
    wsl = tiny_wsl()
    joint, config = joint_from_wsl(wsl, SEG)
    assert config.arch == "joint" and config.seg_classes == SEG
    for name, tensor in wsl.state_dict().items():
        if name.startswith("backbone."):
            assert torch.equal(joint.state_dict()[name], tensor)
        if name.startswith("classifier_head."):
            mapped = "classification_head." + name[len("classifier_head.") :]
            assert torch.equal(joint.state_dict()[mapped], tensor)


def test_joint_model_reads_at_the_resolution_asked_for(tmp_path):
    wsl = build_model(ModelConfig(arch="wildcat", classes=("benign", "malignant"), depth=18,
                                  width=0.125, mpp=2.48))
    joint, config = joint_from_wsl(wsl, SEG)
    assert config.mpp == joint.mpp == 2.48  # the weakly-supervised model's by default
    joint, config = joint_from_wsl(wsl, SEG, mpp=1.24)
    assert config.mpp == joint.mpp == 1.24 and isinstance(config.mpp, float)
    wsl_path = save_checkpoint(tmp_path / "wsl.pt", wsl, wsl.config)
    assert load_round_model(wsl_path, SEG, mpp=0.9)[1].mpp == 0.9
    assert load_round_model(wsl_path, SEG)[1].mpp == 2.48
    # a round's joint checkpoint keeps the resolution it was trained at
    round_path = save_checkpoint(tmp_path / "round.pt", joint, config)
    model, loaded = load_round_model(round_path, SEG, mpp=0.5)
    assert loaded.mpp == model.mpp == 1.24


def test_load_round_model_checks_segmentation_classes(tmp_path):
    joint, config = joint_from_wsl(tiny_wsl(), SEG)
    path = save_checkpoint(tmp_path / "round.pt", joint, config)
    _, loaded = load_round_model(path, SEG)
    assert loaded.seg_classes == SEG
    with pytest.raises(ActiveLearningError, match="segments"):
        load_round_model(path, ("background", "tumour"))
    wsl_path = save_checkpoint(tmp_path / "wsl.pt", tiny_wsl(), tiny_wsl().config)
    _, converted_config = load_round_model(wsl_path, SEG)
    assert converted_config.arch == "joint"


def test_pad_to_stride():
    image = np.ones((33, 64, 3), np.uint8)
    padded = pad_to_stride(image, 32)
    assert padded.shape == (64, 64, 3)
    labels = pad_to_stride(np.ones((10, 10), np.int64), 8, fill=0)
    assert labels.shape == (16, 16) and labels[10:].sum() == 0 and labels[:10, :10].sum() == 100
    same = np.zeros((32, 32))
    assert pad_to_stride(same, 32) is same


def test_crop_around_pads_outside_with_fill():
    image = np.arange(16).reshape(4, 4)
    (crop,) = _crop_around([image], (0, 0), 6, [-1])
    assert crop.shape == (6, 6)
    # the 4x4 image sits inside the 6x6 crop, the rest is fill
    assert (crop == -1).sum() == 36 - 16
    assert sorted(crop[crop >= 0].tolist()) == list(range(16))
    big = np.arange(100).reshape(10, 10)
    (inner,) = _crop_around([big], (5, 5), 4, [0])
    assert inner.tolist() == big[3:7, 3:7].tolist()


def _stripes_items(n=3, size=64):
    """Images whose left half is dark (class 1) and right half bright (class 0)."""
    items, truths = [], []
    rng = np.random.default_rng(0)
    offset = 0
    for k in range(n):
        image = np.full((size, size, 3), 220, np.uint8)
        image[:, : size // 2] = (90, 40, 120)
        image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
        sp = np.zeros((size, size), np.int64)
        sp[:, : size // 2] = offset + 1
        sp[:, size // 2 :] = offset + 2
        offset += 2
        truth = np.zeros((size, size), np.int64)
        truth[:, : size // 2] = 1
        items.append(RegionItem(f"img{k}", image, sp))
        truths.append(truth)
    return items, truths


def test_train_regions_learns_labelled_regions_and_ignores_unlabelled():
    torch.manual_seed(0)
    items, truths = _stripes_items()
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    table = np.zeros((7, 3), bool)
    table[1, 1] = True  # item 0: dark half = benign
    table[2, 0] = True  # item 0: bright half = background
    config = RegionTrainConfig(steps=80, batch_size=2, crop_size=32, lr=5e-3)
    before = segmentation_scores(model, items[1:], truths[1:])
    result = run_to_end(train_regions(model, items, table, config))
    after = segmentation_scores(model, items[1:], truths[1:])
    assert result["labelled_images"] == 1
    assert len(result["history"]) == 80
    assert np.mean(result["history"][-5:]) < np.mean(result["history"][:5])
    assert after["dice"] > 0.85 and after["dice"] > before["dice"]
    assert bool(model.segmentation_trained)


def test_train_regions_without_labels_refuses():
    items, _ = _stripes_items(1)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    with pytest.raises(ActiveLearningError, match="no labelled region"):
        run_to_end(train_regions(model, items, np.zeros((3, 3), bool)))


def test_stage2_runs_and_reports_pseudo_pixels():
    items, _ = _stripes_items(2)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    table = np.zeros((5, 3), bool)
    table[1, [0, 1]] = True  # a multi-class answer on the dark half
    table[2, 0] = True
    config = RegionTrainConfig(steps=10, stage2_steps=5, batch_size=2, crop_size=32)
    adjacency = np.array([[1, 2], [3, 4]])
    result = run_to_end(train_regions(model, items, table, config, adjacency=adjacency))
    assert len(result["history"]) == 15
    # both halves of item 0 are labelled: every pixel of it gets a pseudo label
    assert result["stage2_pixels"] >= 64 * 64


def test_train_dense_and_scores_against_truth():
    torch.manual_seed(0)
    items, truths = _stripes_items(3)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    truths[1][:4] = IGNORE_INDEX  # ignored pixels are left out of loss and scores
    before = segmentation_scores(model, items, truths)
    result = run_to_end(
        train_dense(
            model, items, truths, RegionTrainConfig(steps=80, batch_size=4, crop_size=32, lr=5e-3)
        )
    )
    assert len(result["history"]) == 80
    scores = segmentation_scores(model, items, truths)
    assert np.mean(result["history"][-5:]) < np.mean(result["history"][:5])
    # trained, the stripes are found (0.94-0.96 with one or two torch threads)
    assert scores["dice"] > before["dice"] + 0.1 and scores["dice"] > 0.9 and scores["argmax_dice"] > 0.9 and 0.8 < scores["miou"] <= 1


def test_predict_items_shapes_and_mc():
    items, _ = _stripes_items(1, size=40)
    model, _ = joint_from_wsl(
        build_model(
            ModelConfig(arch="maxmin", classes=("benign", "malignant"), width=0.125, dropout=0.2)
        ),
        SEG,
    )
    _, probs, feats, mc = next(predict_items(model, items, features=True, mc_passes=3))
    assert probs.shape == (3, 40, 40)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert feats.shape[1:] == (40, 40)
    assert mc.shape == (3, 3, 40, 40)


def test_a_loss_that_is_not_finite_stops_training(monkeypatch):
    from napari_wsl_al.core.al import train as train_module
    from napari_wsl_al.core.errors import TrainingError

    items, _ = _stripes_items(1)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    table = np.zeros((3, 3), bool)
    table[1, 1] = True

    def nan_loss(seg_logits, *args, **kwargs):
        return seg_logits.sum() * float("nan"), {}

    monkeypatch.setattr(train_module, "region_loss", nan_loss)
    with pytest.raises(TrainingError, match="not finite at step 1"):
        run_to_end(train_regions(model, items, table, RegionTrainConfig(steps=3, crop_size=32)))


def test_progress_every_ten_steps_and_at_the_end():
    items, _ = _stripes_items(1, size=32)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    table = np.zeros((3, 3), bool)
    table[1, 1] = True
    records = []
    run_to_end(
        train_regions(model, items, table, RegionTrainConfig(steps=23, batch_size=2, crop_size=32)),
        records.append,
    )
    assert [r.step for r in records] == [10, 20, 23]
    assert all(r.total == 23 and "loss" in r.metrics for r in records)


def _label_prop_batch():
    """Two 1 x 2 crops, two classes: crop 0 oracle-labelled (region 1 = class 1), crop 1
    pseudo-labelled (background, then class 1)."""
    logits = torch.tensor([
        [[[0.0, 0.0]], [[math.log(3.0), 0.0]]],  # P(1) = 3/4, 1/2
        [[[math.log(4.0), 0.0]], [[0.0, math.log(9.0)]]],  # P(0) = 4/5, P(1) = 9/10
    ], requires_grad=True)
    superpixels = torch.tensor([[[1, 1]], [[0, 0]]])
    classes = torch.tensor([[False, False], [False, True]])
    pseudo = torch.tensor([[[IGNORE_INDEX, IGNORE_INDEX]], [[0, 1]]])
    return logits, superpixels, classes, pseudo


def test_label_prop_loss_is_equation_1_by_hand():
    logits, superpixels, classes, pseudo = _label_prop_batch()
    # L: lambda_CE * mean over the region of -log P(1): 16 (ln 4/3 + ln 2) / 2
    loss_l = 16 * (math.log(4 / 3) + math.log(2)) / 2
    # P: lambda_CE * mean pixel cross-entropy on the pseudo labels: 16 (ln 5/4 + ln 10/9) / 2
    loss_p = 16 * (math.log(5 / 4) + math.log(10 / 9)) / 2
    loss, parts = label_prop_loss(logits, superpixels, classes, pseudo,
                                  torch.tensor([False, True]), weight=0.1)
    # (n_L loss_L + lambda n_P loss_P) / (n_L + n_P)
    assert loss.item() == pytest.approx((loss_l + 0.1 * loss_p) / 2, rel=1e-6)
    assert parts["labelled"] == pytest.approx(loss_l, rel=1e-6)
    assert parts["pseudo"] == pytest.approx(loss_p, rel=1e-6)
    assert (parts["labelled_crops"], parts["pseudo_crops"]) == (1.0, 1.0)
    # the pseudo crop's gradient is lambda times what it would be alone
    loss.backward()
    pseudo_grad = logits.grad[1].clone()
    logits.grad = None
    alone, _ = label_prop_loss(logits, superpixels, classes, pseudo, torch.tensor([False, True]),
                               weight=1.0)
    alone.backward()
    torch.testing.assert_close(pseudo_grad, 0.1 * logits.grad[1])
    # lambda 0: the oracle part alone, still divided by the whole batch
    zero, _ = label_prop_loss(logits, superpixels, classes, pseudo, torch.tensor([False, True]),
                              weight=0.0)
    assert zero.item() == pytest.approx(loss_l / 2, rel=1e-6)
    # other loss weights scale both parts alike
    halved, _ = label_prop_loss(logits, superpixels, classes, pseudo, torch.tensor([False, True]),
                                weight=0.1, config=RegionLossConfig(lambda_ce=8.0))
    assert halved.item() == pytest.approx((loss_l + 0.1 * loss_p) / 4, rel=1e-6)
    # both crops as pseudo-labelled: crop 0 has no pseudo label, so the mean is crop 1's
    only_pseudo, _ = label_prop_loss(logits, superpixels, classes, pseudo,
                                     torch.tensor([True, True]), weight=0.5)
    assert only_pseudo.item() == pytest.approx(0.5 * 2 * loss_p / 2, rel=1e-6)
    with pytest.raises(ActiveLearningError, match="lambda"):
        label_prop_loss(logits, superpixels, classes, pseudo, torch.tensor([False, True]), -1.0)
    with pytest.raises(ActiveLearningError, match="is_pseudo"):
        label_prop_loss(logits, superpixels, classes, pseudo, torch.tensor([False]), 0.1)


def test_pseudo_labelled_images_teach_what_the_oracle_labels_lack():
    items, truths = _stripes_items(3)
    table = np.zeros((7, 3), bool)
    table[2, 0] = True  # the oracle labelled only the background half of image 0
    maps = [None, truths[1].astype(np.uint8), truths[2].astype(np.uint8)]
    config = RegionTrainConfig(steps=60, batch_size=2, crop_size=32, lr=5e-3)
    dice = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model, _ = joint_from_wsl(tiny_wsl(), SEG)
        result = run_to_end(train_regions(model, items, table, config, pseudo_maps=maps,
                                          pseudo_weight=weight))
        assert (result["labelled_images"], result["pseudo_images"]) == (1, 2)
        scores = segmentation_scores(model, items, truths)
        dice[weight] = scores["dice"], scores["argmax_dice"]
    # with lambda 0 nothing says what the foreground is; with the pseudo-labelled images it is
    # learnt
    # (with lambda 0 nothing pushes the dark pixels' background probability either way, so
    # only the most probable class is checked there: benign never had a target)
    assert dice[0.0][1] < 0.3 and dice[1.0][1] > 0.8
    assert dice[1.0][0] > 0.8 and dice[1.0][0] > dice[0.0][0]
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    with pytest.raises(ActiveLearningError, match="2 pseudo maps for 3 images"):
        run_to_end(train_regions(model, items, table, config, pseudo_maps=maps[:2]))
    with pytest.raises(ActiveLearningError, match="the pseudo map of img1"):
        run_to_end(train_regions(model, items, table, config,
                                 pseudo_maps=[None, maps[1][:10], None]))
    with pytest.raises(ActiveLearningError, match="lambda"):
        run_to_end(train_regions(model, items, table, config, pseudo_maps=maps,
                                 pseudo_weight=-0.1))


def test_pseudo_segmentations_and_image_classes_come_from_the_two_heads():
    torch.manual_seed(0)
    items, _ = _stripes_items(2)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    classes = predict_image_classes(model, items)
    assert classes.shape == (2,) and classes.dtype == np.int64 and set(classes) <= {0, 1}
    masks = pseudo_segmentations(model, items, [2, 1])
    for (_, probs, _, _), mask, foreground in zip(predict_items(model, items), masks, (2, 1)):
        np.testing.assert_array_equal(mask, np.where(probs[0] < 0.5, foreground, 0))
    with pytest.raises(ActiveLearningError, match="1 foreground classes for 2 images"):
        pseudo_segmentations(model, items, [1])


def test_segmentation_labels_by_hand():
    from napari_wsl_al.core.al.train import segmentation_labels

    # pixels: background sure; benign; foreground 0.6 split 0.35 / 0.25 (argmax: background);
    # P(background) exactly 0.5 (background); malignant
    probs = np.array([[0.9, 0.2, 0.4, 0.5, 0.1],
                      [0.05, 0.7, 0.35, 0.1, 0.1],
                      [0.05, 0.1, 0.25, 0.4, 0.8]], np.float32)
    labels = segmentation_labels(probs)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 1, 1, 0, 2])
    np.testing.assert_array_equal(segmentation_labels(probs[:, None, :]), [[0, 1, 1, 0, 2]])


def test_scores_by_hand_argmax_and_foreground_map(monkeypatch):
    from napari_wsl_al.core.al import train

    # five pixels, truth: background, benign, benign, malignant, malignant; the third pixel's
    # foreground (0.6) is split between the two classes, each below the background's 0.4; the
    # fifth is called benign
    probs = np.array([[[0.9, 0.2, 0.4, 0.1, 0.3]], [[0.05, 0.7, 0.35, 0.1, 0.6]],
                      [[0.05, 0.1, 0.25, 0.8, 0.1]]], np.float32)
    truth = np.array([[0, 1, 1, 2, 2]])

    def fixed(model, items, device=None):
        yield 0, probs, None, None

    monkeypatch.setattr(train, "predict_items", fixed)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    item = RegionItem("x", np.zeros((1, 5, 3), np.uint8), np.zeros((1, 5), np.int64))
    scores = segmentation_scores(model, [item], [truth])
    # foreground where 1 - P(background) > 0.5: pixels 1-4, the truth's 1-4: Dice 1
    assert scores["dice"] == pytest.approx(1.0)
    assert scores["fg_dice"] == pytest.approx(1.0)
    # argmax: foreground at pixels 1, 3, 4 of the truth's 1-4: Dice 2 * 3 / (3 + 4)
    assert scores["argmax_dice"] == pytest.approx(6 / 7)
    # labels 0, 1, 1, 2, 1: IoU background 1, benign 2/3, malignant 1/2
    assert scores["miou"] == pytest.approx((1.0 + 2 / 3 + 0.5) / 3)
    # argmax classes 0, 1, 0, 2, 1: IoU background 1/2, benign 1/3, malignant 1/2
    assert scores["argmax_miou"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)


def test_scores_add_up_the_images_by_hand(monkeypatch):
    from napari_wsl_al.core.al import train

    # image A as in the test above; image B: truth background, malignant; both pixels called
    # foreground (benign, malignant) by either rule
    first = np.array([[[0.9, 0.2, 0.4, 0.1, 0.3]], [[0.05, 0.7, 0.35, 0.1, 0.6]],
                      [[0.05, 0.1, 0.25, 0.8, 0.1]]], np.float32)
    second = np.array([[[0.3, 0.2]], [[0.6, 0.1]], [[0.1, 0.7]]], np.float32)
    truths = [np.array([[0, 1, 1, 2, 2]]), np.array([[0, 2]])]

    def fixed(model, items, device=None):
        yield 0, first, None, None
        yield 1, second, None, None

    monkeypatch.setattr(train, "predict_items", fixed)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    items = [RegionItem(f"x{i}", np.zeros((1, t.shape[1], 3), np.uint8),
                        np.zeros((1, t.shape[1]), np.int64)) for i, t in enumerate(truths)]
    scores = segmentation_scores(model, items, truths)
    # Dice per image, then the mean: B's foreground {1} against {0, 1}: 2/3
    assert scores["dice"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert scores["argmax_dice"] == pytest.approx((6 / 7 + 2 / 3) / 2)
    # one confusion matrix over both images (rows truth, columns prediction):
    # labels [[1, 1, 0], [0, 2, 0], [0, 1, 2]]: IoU 1/2, 2/4, 2/3
    assert scores["miou"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    # argmax [[1, 1, 0], [1, 1, 0], [0, 1, 2]]: IoU 1/3, 1/4, 2/3
    assert scores["argmax_miou"] == pytest.approx((1 / 3 + 1 / 4 + 2 / 3) / 3)


def test_scores_of_no_images_are_not_numbers():
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    scores = segmentation_scores(model, [], [])
    assert np.isnan(scores["dice"]) and np.isnan(scores["fg_dice"])
    assert np.isnan(scores["argmax_dice"])


class _TwoWeights(torch.nn.Module):
    """The least a round's optimiser needs: parameters and a ``segmentation_trained`` flag."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.register_buffer("segmentation_trained", torch.zeros(()))


def test_weight_average_follows_the_ema_recurrence_and_ends_the_training():
    from napari_wsl_al.core.al.train import _Optimiser

    model = _TwoWeights()
    optimiser = _Optimiser(model, RegionTrainConfig(lr=0.1, ema=0.5), total=3)
    expected = model.w.detach().clone()  # the average starts at the initial weights
    for target in (torch.tensor([3.0, 0.0]), torch.tensor([0.0, 5.0]), torch.tensor([1.0, 1.0])):
        optimiser.step(((model.w - target) ** 2).sum())
        expected = 0.5 * expected + 0.5 * model.w.detach()  # by hand: d * avg + (1 - d) * w
        torch.testing.assert_close(optimiser.average[0], expected)
    last = model.w.detach().clone()
    assert not torch.allclose(last, expected)
    optimiser.finish()
    torch.testing.assert_close(model.w.detach(), expected)  # the model ends averaged


def test_no_weight_average_by_default_and_its_decay_is_checked():
    from napari_wsl_al.core.al.train import _Optimiser

    model = _TwoWeights()
    optimiser = _Optimiser(model, RegionTrainConfig(lr=0.1), total=2)
    optimiser.step((model.w ** 2).sum())
    after = model.w.detach().clone()
    optimiser.finish()
    assert optimiser.average is None and torch.equal(model.w.detach(), after)
    for decay in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ema"):
            _Optimiser(_TwoWeights(), RegionTrainConfig(ema=decay), total=1)
    assert RegionTrainConfig.from_json(RegionTrainConfig(ema=0.9).to_json()).ema == 0.9


def test_round_optimiser_learning_rate_decays_on_a_cosine_to_zero():
    from napari_wsl_al.core.al.train import _Optimiser

    model = _TwoWeights()
    optimiser = _Optimiser(model, RegionTrainConfig(lr=0.4, weight_decay=0.0), total=4)
    rates = []
    for _ in range(4):
        rates.append(optimiser.optimizer.param_groups[0]["lr"])
        optimiser.step((model.w ** 2).sum())
    rates.append(optimiser.optimizer.param_groups[0]["lr"])
    # 0.4 * (1 + cos(pi * k / 4)) / 2 for k = 0..4, by hand
    expected = [0.4, 0.4 * (1 + math.sqrt(0.5)) / 2, 0.2, 0.4 * (1 - math.sqrt(0.5)) / 2, 0.0]
    assert rates == pytest.approx(expected, abs=1e-9)
    assert float(model.segmentation_trained) == 1.0  # a step marks the head as trained
    assert len(optimiser.history) == 4


def test_colour_jitter_config_and_its_checks():
    from napari_wsl_al.core.al.train import colour_jitter_config

    assert colour_jitter_config(0.0) is None
    jitter = colour_jitter_config(0.05)
    assert (jitter.hed, jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
        0.05, 0.1, 0.1, 0.1, 0.02)
    for bad in (-0.01, 1.5, float("nan")):
        with pytest.raises(ActiveLearningError, match="colour jitter"):
            RegionTrainConfig(colour_jitter=bad)
    assert RegionTrainConfig(colour_jitter=1.0).colour_jitter == 1.0
    config = RegionTrainConfig(colour_jitter=0.07)
    assert RegionTrainConfig.from_json(config.to_json()).colour_jitter == 0.07
    # settings saved before the option existed read with the default
    old = config.to_json()
    del old["colour_jitter"]
    assert RegionTrainConfig.from_json(old).colour_jitter == RegionTrainConfig().colour_jitter


def test_augment_jitters_the_image_only_and_keeps_the_geometry():
    from napari_wsl_al.core.al.train import _augment, colour_jitter_config
    from napari_wsl_al.core.data.patches import stain_jitter

    rng = np.random.default_rng(3)
    image = rng.integers(30, 220, (8, 8, 3)).astype(np.uint8)
    labels = np.arange(64).reshape(8, 8)
    plain = _augment([image, labels], np.random.default_rng(11))
    jitter = colour_jitter_config(0.2)
    jittered = _augment([image, labels], np.random.default_rng(11), jitter)
    assert np.array_equal(plain[1], jittered[1])  # the same flips and turns
    # the image is the plain crop jittered with the draws that follow the geometry's
    draws = np.random.default_rng(11)
    draws.random(), draws.random(), draws.integers(0, 4)
    assert np.array_equal(jittered[0], stain_jitter(plain[0], draws, jitter))
    assert not np.array_equal(jittered[0], plain[0])
    # without jitter, the image moves exactly as the labels do
    positions = [np.argwhere(plain[1] == v)[0] for v in (0, 9, 63)]
    for value, (y, x) in zip((0, 9, 63), positions):
        assert np.array_equal(plain[0][y, x], image[value // 8, value % 8])


@pytest.mark.parametrize("jitter", [0.0, 0.05])
def test_training_jitters_every_crop_when_asked(monkeypatch, jitter):
    import napari_wsl_al.core.al.train as train_module

    calls = []
    original = train_module.stain_jitter

    def counting(image, rng, config):
        calls.append(config.hed)
        return original(image, rng, config)

    monkeypatch.setattr(train_module, "stain_jitter", counting)
    items, truths = _stripes_items()
    table = np.zeros((7, 3), bool)
    table[1, 1] = table[2, 0] = True
    config = RegionTrainConfig(steps=3, batch_size=2, crop_size=32, colour_jitter=jitter)
    model, _ = joint_from_wsl(tiny_wsl(), SEG)
    run_to_end(train_regions(model, items, table, config))
    assert calls == [jitter] * (6 if jitter else 0)
    calls.clear()
    run_to_end(train_dense(model, items, truths, replace(config, steps=2)))
    assert calls == [jitter] * (4 if jitter else 0)


def test_augment_draws_all_eight_flips_and_turns_alike_for_every_array():
    from napari_wsl_al.core.al.train import _augment

    image = np.arange(6).reshape(2, 3)
    labels = image * 10
    dihedral = {tuple(np.rot90(flipped, k).ravel()) + np.rot90(flipped, k).shape
                for flipped in (image, image[::-1]) for k in range(4)}
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        out_image, out_labels = _augment([image, labels], rng)
        assert np.array_equal(out_labels, out_image * 10)
        assert out_image.flags["C_CONTIGUOUS"]
        seen.add(tuple(out_image.ravel()) + out_image.shape)
    assert seen == dihedral and len(seen) == 8
