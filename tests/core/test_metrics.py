"""Tests of the evaluation metrics against hand computations."""

from __future__ import annotations

import math

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


def test_classification_error():
    assert classification_error([0, 1, 1, 0], [0, 1, 0, 0]) == 0.25
    assert classification_error([1, 1], [1, 1]) == 0.0
    assert math.isnan(classification_error([], []))
    with pytest.raises(ValueError):
        classification_error([0, 1], [0])


def test_confusion_matrix_rows_true_columns_predicted_and_ignore():
    matrix = confusion_matrix([0, 0, 1, 2, 2, -1], [0, 1, 1, 2, 0, 2], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)


def test_pixel_confusion_matrix_over_images_of_different_sizes():
    gt = [np.array([[1, 0], [1, -1]]), np.array([[0, 0, 1]])]
    pred = [np.array([[1, 1], [0, 1]]), np.array([[0, 1, 1]])]
    # image 1: (1,1) (0,1) (1,0), ignored; image 2: (0,0) (0,1) (1,1)
    assert pixel_confusion_matrix(gt, pred).tolist() == [[1, 2], [1, 2]]


def test_dice_by_hand():
    gt = np.array([1, 1, 1, 0, 0], bool)
    pred = np.array([1, 1, 0, 1, 0], bool)
    assert dice(gt, pred) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool), empty=0.0) == 0.0
    assert dice(np.ones(3, bool), np.zeros(3, bool)) == 0.0


def test_f1_pos_and_neg_per_image_and_pooled():
    # image A (4 px): gt fg {0,1}, pred fg {0}
    #   F1+ = 2*1/(2+1) = 2/3 ; bg gt {2,3}, pred bg {1,2,3}: F1- = 2*2/(2+3) = 4/5
    # image B (2 px): gt fg {0, 1}, pred fg {0, 1}: F1+ = 1 ; F1- both empty = 1
    gt = [np.array([[1, 1], [0, 0]]), np.array([[1, 1]])]
    pred = [np.array([[1, 0], [0, 0]]), np.array([[1, 1]])]
    scores = foreground_background_f1(gt, pred)
    assert scores["f1_pos"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["f1_neg"] == pytest.approx((4 / 5 + 1) / 2)
    assert scores["n_images"] == 2
    pooled = foreground_background_f1(gt, pred, per_image=False)
    # fg: inter 3, |G| 4, |S| 3 -> 6/7 ; bg: inter 2, |G| 2, |S| 3 -> 4/5
    assert pooled["f1_pos"] == pytest.approx(6 / 7)
    assert pooled["f1_neg"] == pytest.approx(4 / 5)
    ignored = foreground_background_f1([np.array([1, -1, 0])], [np.array([1, 1, 0])])
    assert ignored["f1_pos"] == 1.0 and ignored["f1_neg"] == 1.0
    assert math.isnan(foreground_background_f1([], [])["f1_pos"])


def test_all_ones_baseline_matches_two_p_over_one_plus_p():
    # foreground fraction p: F1+ = 2p / (1 + p), F1- = 0 whenever there is background
    gt = [np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])]
    scores = all_ones_baseline(gt)
    assert scores["f1_pos"] == pytest.approx((2 * 0.5 / 1.5 + 2 * 0.25 / 1.25) / 2)
    assert scores["f1_neg"] == 0.0


def test_iou_and_mean_iou_from_confusion():
    confusion = np.array([[3, 1], [2, 4]])
    # class 0: 3 / (3 + 1 + 2) ; class 1: 4 / (4 + 2 + 1)
    assert iou_per_class(confusion) == pytest.approx([3 / 6, 4 / 7])
    assert mean_iou(confusion) == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert dice_per_class(confusion) == pytest.approx([6 / 9, 8 / 11])
    absent = np.array([[2, 0, 0], [0, 0, 0], [0, 0, 1]])
    assert np.isnan(iou_per_class(absent)[1]) and mean_iou(absent) == 1.0


def test_al_curve_auc_trapezoid_normalised():
    assert al_curve_auc([0, 10, 20], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    # trapezoids: (0.2+0.6)/2*10 + (0.6+0.8)/2*30 = 4 + 21 = 25, over 40
    assert al_curve_auc([0, 10, 40], [0.2, 0.6, 0.8], normalize=False) == pytest.approx(25.0)
    assert al_curve_auc([0, 10, 40], [0.2, 0.6, 0.8]) == pytest.approx(25.0 / 40)
    assert al_curve_auc([5], [0.7]) == 0.7
    with pytest.raises(ValueError):
        al_curve_auc([0, 2, 1], [0, 0, 0])


def test_gini_index():
    assert gini_index([5, 5, 5, 5]) == 0.0
    # one class has everything: (n - 1) / n, or 1 normalised
    assert gini_index([0, 0, 0, 8]) == pytest.approx(3 / 4)
    assert gini_index([0, 0, 0, 8], normalize=True) == pytest.approx(1.0)
    # by the definition sum |xi - xj| / (2 n^2 mean): [1, 3] -> (2 + 2) / (2 * 4 * 2) = 0.25
    assert gini_index([1, 3]) == pytest.approx(0.25)
    values = np.array([2.0, 7.0, 1.0, 4.0])
    pairwise = np.abs(values[:, None] - values[None, :]).sum() / (2 * 16 * values.mean())
    assert gini_index(values) == pytest.approx(pairwise)
    assert gini_index([0, 0]) == 0.0
