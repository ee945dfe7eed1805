"""Evaluation metrics on cases computed by hand, in particular images without foreground.

F1+ and F1- are the Dice index ``2|G & S| / (|G| + |S|)`` of Max-Min (Sec. 3.2, Eq. 14-15),
the GlaS protocol's F1: when the ground truth has no foreground and the prediction has some,
``|G & S| = 0`` and ``|G| + |S| > 0``, so the score is 0. Only when both masks are empty is the
ratio undefined; :func:`dice` then returns its ``empty`` argument.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_wsl_al.core.metrics import (
    al_curve_auc,
    all_ones_baseline,
    classification_error,
    confusion_matrix,
    dice,
    dice_per_class,
    foreground_background_f1,
    gini_index,
    iou_per_class,
    mean_iou,
    pixel_confusion_matrix,
)


def test_dice_of_an_empty_ground_truth_and_a_non_empty_prediction_is_zero():
    # |G| = 0, |S| = 1: 2 * 0 / (0 + 1) = 0, whatever `empty` says
    nothing = np.zeros(4, bool)
    one = np.array([1, 0, 0, 0], bool)
    assert dice(nothing, one) == 0.0
    assert dice(nothing, one, empty=1.0) == 0.0
    assert dice(one, nothing) == 0.0
    assert dice(nothing, nothing) == 1.0 and dice(nothing, nothing, empty=0.5) == 0.5
    # masks are read as booleans: gt (2, 0) -> (1, 0), pred (1, 1): 2 * 1 / (1 + 2) = 2/3 ;
    # gt (1, 0), pred (3, 0) -> (1, 0): 2 * 1 / (1 + 1) = 1
    assert dice(np.array([2, 0]), np.array([1, 1])) == pytest.approx(2 / 3)
    assert dice(np.array([1, 0]), np.array([3, 0])) == 1.0


def test_f1_of_an_image_without_glands():
    # ground truth: no gland (4 pixels of background); prediction: 1 pixel of gland
    #   F1+ = 2 * 0 / (0 + 1) = 0
    #   F1- = 2 |G- & S-| / (|G-| + |S-|) = 2 * 3 / (4 + 3) = 6/7
    gt, pred = [np.zeros((2, 2), int)], [np.array([[0, 1], [0, 0]])]
    scores = foreground_background_f1(gt, pred)
    assert scores["f1_pos"] == 0.0
    assert scores["f1_neg"] == pytest.approx(6 / 7)
    pooled = foreground_background_f1(gt, pred, per_image=False)
    assert pooled["f1_pos"] == 0.0 and pooled["f1_neg"] == pytest.approx(6 / 7)
    # with a second image, all right (gland everywhere, predicted everywhere):
    #   per image F1+ = (0 + 1)/2, F1- = (6/7 + empty)/2
    #   pooled F1+ = 2 * 2 / (2 + 3) = 4/5 ; F1- = 2 * 3 / (4 + 3) = 6/7
    gt.append(np.ones((1, 2), int))
    pred.append(np.ones((1, 2), int))
    scores = foreground_background_f1(gt, pred, empty=0.5)
    assert scores["f1_pos"] == pytest.approx(0.5)
    assert scores["f1_neg"] == pytest.approx((6 / 7 + 0.5) / 2)
    pooled = foreground_background_f1(gt, pred, per_image=False)
    assert pooled["f1_pos"] == pytest.approx(4 / 5) and pooled["f1_neg"] == pytest.approx(6 / 7)
    assert pooled["n_images"] == 2


def test_pooled_f1_of_masks_that_both_lack_a_region_uses_empty():
    # one image, all gland, predicted all gland: pooled F1- has |G-| + |S-| = 0 -> `empty`
    gt, pred = [np.ones((2, 2), int)], [np.ones((2, 2), bool)]
    assert foreground_background_f1(gt, pred, per_image=False, empty=0.25)["f1_neg"] == 0.25
    assert foreground_background_f1(gt, pred, per_image=False)["f1_neg"] == 1.0
    # and the same for F1+ when neither has gland
    gt, pred = [np.zeros((2, 2), int)], [np.zeros((2, 2), bool)]
    assert foreground_background_f1(gt, pred, per_image=False, empty=0.25)["f1_pos"] == 0.25
    assert foreground_background_f1(gt, pred, per_image=False, empty=0.25)["f1_neg"] == 1.0
    none = foreground_background_f1([], [], per_image=False)
    assert none["n_images"] == 0 and np.isnan(none["f1_pos"]) and np.isnan(none["f1_neg"])
    # per image, an image whose masks both lack gland scores `empty` on F1+
    scores = foreground_background_f1([np.zeros(2, int)], [np.zeros(2, int)], empty=0.25)
    assert scores["f1_pos"] == 0.25 and scores["f1_neg"] == 1.0
    # as many predictions as ground truths
    with pytest.raises(ValueError):
        foreground_background_f1([np.zeros(2), np.zeros(2)], [np.zeros(2)])


def test_f1_leaves_out_ignored_pixels_and_checks_shapes():
    # pixel values: gt (1, -1, 0, -2), pred (1, 1, 1, 1): the two negative pixels are dropped
    #   kept gt (1, 0), pred (1, 1): F1+ = 2 * 1 / (1 + 2) = 2/3 ; F1- = 2 * 0 / (1 + 0) = 0
    scores = foreground_background_f1([np.array([1, -1, 0, -2])], [np.array([1, 1, 1, 1])])
    assert scores["f1_pos"] == pytest.approx(2 / 3) and scores["f1_neg"] == 0.0
    # predictions are foreground where > 0 (a probability-like 2 or a bool True)
    scores = foreground_background_f1([np.array([1, 0])], [np.array([2, 0])])
    assert scores["f1_pos"] == 1.0 and scores["f1_neg"] == 1.0
    with pytest.raises(ValueError, match="shapes"):
        foreground_background_f1([np.zeros(3)], [np.zeros(4)])


def test_all_ones_baseline_on_an_image_without_glands():
    # prediction: everything gland. gt without gland: F1+ = 0 / (0 + 4) = 0 ;
    # F1- = 0 / (4 + 0) = 0. gt (1, 1, 0, 0): F1+ = 2 * 2 / (2 + 4) = 2/3, F1- = 0
    scores = all_ones_baseline([np.zeros(4, int), np.array([1, 1, 0, 0])])
    assert scores["f1_pos"] == pytest.approx((0 + 2 / 3) / 2)
    assert scores["f1_neg"] == 0.0 and scores["n_images"] == 2
    # pooled: F1+ = 2 * 2 / (2 + 8) = 0.4
    pooled = all_ones_baseline([np.zeros(4, int), np.array([1, 1, 0, 0])], per_image=False)
    assert pooled["f1_pos"] == pytest.approx(0.4) and pooled["f1_neg"] == 0.0
    # all gland, predicted all gland: F1- has no pixel on either side -> `empty` (1 by default)
    assert all_ones_baseline([np.ones(3, int)], empty=0.75)["f1_neg"] == 0.75
    assert all_ones_baseline([np.ones(3, int)])["f1_neg"] == 1.0
    # pooled with `empty`: (1, 1) and (1,) all gland -> F1- = 0.75
    pooled = all_ones_baseline([np.ones(2, int), np.ones(1, int)], per_image=False, empty=0.75)
    assert pooled["f1_neg"] == 0.75 and pooled["f1_pos"] == 1.0


def test_pixel_confusion_matrix_three_classes_and_shape_check():
    # gt (0, 1, 2, 2), pred (0, 2, 2, 1) and gt (1,), pred (1,)
    #   rows true, columns predicted: (0,0) 1 ; (1,2) 1 ; (2,2) 1 ; (2,1) 1 ; (1,1) 1
    total = pixel_confusion_matrix(
        [np.array([0, 1, 2, 2]), np.array([1])], [np.array([0, 2, 2, 1]), np.array([1])], 3
    )
    assert total.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert total.dtype == np.int64
    with pytest.raises(ValueError, match=r"^mask shapes differ: \(2,\) vs \(3,\)$"):
        pixel_confusion_matrix([np.zeros(2)], [np.zeros(3)])
    with pytest.raises(ValueError):
        pixel_confusion_matrix([np.zeros(2), np.zeros(2)], [np.zeros(2)])


def test_confusion_matrix_checks():
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="^2 labels but 1 predictions$"):
        confusion_matrix([0, 1], [0], 2)
    for truth, predicted in (([0, 1], [0, -1]), ([0, 1], [0, 2]), ([2, 1], [0, 1])):
        with pytest.raises(ValueError, match=r"^class indices must be in \[0, 2\)$"):
            confusion_matrix(truth, predicted, 2)
    # a class index just inside the range is accepted
    assert confusion_matrix([1], [1], 2).tolist() == [[0, 0], [0, 1]]
    assert classification_error(np.array([[0, 1]]), np.array([[1, 1]])) == 0.5
    # one sample: an error of 0 or 1
    assert classification_error([1], [1]) == 0.0 and classification_error([1], [0]) == 1.0
    with pytest.raises(ValueError, match="^2 labels but 1 predictions$"):
        classification_error([0, 1], [0])


def test_iou_dice_and_mean_iou_with_absent_classes():
    # class 0: TP 2, FP 1, FN 0 -> IoU 2/3, Dice 4/5 ; class 1: nothing -> NaN
    # class 2: TP 0, FP 0, FN 1 -> IoU 0, Dice 0
    confusion = np.array([[2, 0, 0], [0, 0, 0], [1, 0, 0]])
    iou = iou_per_class(confusion)
    assert iou[0] == pytest.approx(2 / 3) and np.isnan(iou[1]) and iou[2] == 0.0
    per_class = dice_per_class(confusion)
    assert per_class[0] == pytest.approx(4 / 5) and np.isnan(per_class[1]) and per_class[2] == 0.0
    assert mean_iou(confusion) == pytest.approx((2 / 3 + 0) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" warning: NaN is returned as is
        assert np.isnan(mean_iou(np.zeros((2, 2))))
    # unions and sizes of 1 (rows true, columns predicted):
    #   [[1, 0], [0, 3]]: class 0 has TP 1 and union 1 -> IoU 1 ; class 1: 3/3
    #   [[1, 0], [1, 0]]: class 0: TP 1, union 2 -> IoU 1/2, Dice 2/(2 + 1) ;
    #                     class 1: TP 0, union 1 (one pixel, predicted 0) -> IoU 0, Dice 0
    assert iou_per_class(np.array([[1, 0], [0, 3]])).tolist() == [1.0, 1.0]
    assert iou_per_class(np.array([[1, 0], [1, 0]])).tolist() == [0.5, 0.0]
    assert dice_per_class(np.array([[1, 0], [1, 0]])).tolist() == pytest.approx([2 / 3, 0.0])


def test_al_curve_auc_edge_cases():
    # one round without normalising: no area
    assert al_curve_auc([5], [0.7], normalize=False) == 0.0
    assert np.isnan(al_curve_auc([], []))
    with pytest.raises(ValueError, match="^2 budgets but 1 scores$"):
        al_curve_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="^budgets must be increasing$"):
        al_curve_auc([1, 0], [0.5, 0.5])
    # steps below 1 are fine: (0 + 1)/2 * 0.5 over 0.5 = 0.5
    assert al_curve_auc([0, 0.5], [0.0, 1.0]) == pytest.approx(0.5)
    # span of 1 with three rounds: 0.25 * (0 + 1)/2 + 0.75 * (1 + 1)/2 = 0.875 (mean: 2/3)
    assert al_curve_auc([0, 0.25, 1], [0.0, 1.0, 1.0]) == pytest.approx(0.875)
    # unsigned counts are read as numbers: budgets (2, 1) decrease (no wrap-around to 255),
    # scores (200, 100) over budgets (0, 1): (200 + 100)/2 = 150 (not (300 mod 256)/2 = 22)
    with pytest.raises(ValueError, match="^budgets must be increasing$"):
        al_curve_auc(np.array([2, 1], dtype=np.uint8), [0.5, 0.5])
    assert al_curve_auc([0, 1], np.array([200, 100], dtype=np.uint8)) == 150.0
    # equal budgets: zero span -> the mean score
    assert al_curve_auc([3, 3], [0.2, 0.6]) == pytest.approx(0.4)
    # (0.5 + 1.0)/2 * 2 = 1.5 over a span of 2
    assert al_curve_auc([1, 3], [0.5, 1.0]) == pytest.approx(0.75)


def test_gini_index_by_hand():
    # [1, 2, 3]: sum |xi - xj| over ordered pairs = 2 (1 + 2 + 1) = 8 ; 2 n^2 mean = 2 * 9 * 2
    #   G = 8 / 36 = 2/9 ; normalised by (n - 1)/n = 2/3 -> 1/3
    assert gini_index([3, 1, 2]) == pytest.approx(2 / 9)
    assert gini_index([3, 1, 2], normalize=True) == pytest.approx(1 / 3)
    assert gini_index([7]) == 0.0 and gini_index([7], normalize=True) == 0.0
    # [0, 1]: (1 + 1) / (2 * 4 * 0.5) = 1/2 (total 1 is not "no counts")
    assert gini_index([1, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="^counts must be non-negative$"):
        gini_index([1, -1])
