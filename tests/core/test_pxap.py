"""Pixel average precision (PxAP) against values worked out by hand and a brute-force sum."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_wsl_al.core.metrics import pixel_average_precision


def brute_force_ap(truth, scores):
    """sum over distinct thresholds t (descending) of (R(t) - R(previous t)) * P(t)."""
    truth = np.asarray(truth, bool)
    scores = np.asarray(scores, float)
    total, previous = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        chosen = scores >= t
        tp = int((chosen & truth).sum())
        recall = tp / truth.sum()
        total += (recall - previous) * tp / chosen.sum()
        previous = recall
    return total


def test_four_pixels_by_hand():
    # ranked 0.9 (fg), 0.8 (bg), 0.7 (fg), 0.6 (bg):
    # t=0.9: P=1, R=1/2; t=0.8: P=1/2, R=1/2; t=0.7: P=2/3, R=1; t=0.6: P=1/2, R=1
    # AP = 1/2 * 1 + 0 + 1/2 * 2/3 + 0 = 5/6
    result = pixel_average_precision([np.array([[1, 0], [1, 0]])],
                                     [np.array([[0.9, 0.8], [0.7, 0.6]])])
    assert result["pxap"] == pytest.approx(5 / 6)
    assert result["prevalence"] == 0.5 and result["n_pixels"] == 4


def test_equal_scores_are_one_threshold():
    # both pixels at 0.5: one threshold, P = 1/2, R = 1 (not 1 then 1/2, whatever the order)
    for truth in ([1, 0], [0, 1]):
        assert pixel_average_precision([np.array(truth)], [np.array([0.5, 0.5])])["pxap"] == 0.5
    # 0.9 (fg), then 0.5 (fg) and 0.5 (bg) together: 1/2 * 1 + 1/2 * 2/3 = 5/6
    result = pixel_average_precision([np.array([1, 0, 1])], [np.array([0.9, 0.5, 0.5])])
    assert result["pxap"] == pytest.approx(5 / 6)


def test_pooled_over_images_without_ignored_pixels():
    # image 1: fg at 0.8, ignored at 0.99, bg at 0.3; image 2: bg at 0.6, fg at 0.2
    # ranked: 0.8 fg (P 1, R 1/2), 0.6 bg, 0.3 bg, 0.2 fg (P 2/4, R 1): AP = 1/2 + 1/2 * 1/2
    result = pixel_average_precision(
        [np.array([1, -1, 0]), np.array([0, 1])],
        [np.array([0.8, 0.99, 0.3]), np.array([0.6, 0.2])])
    assert result["pxap"] == pytest.approx(0.75)
    assert result["prevalence"] == pytest.approx(2 / 4) and result["n_pixels"] == 4


def test_perfect_reversed_and_uninformative_maps():
    truth = np.array([1, 1, 0, 0, 0])
    assert pixel_average_precision([truth], [truth * 0.5 + 0.25])["pxap"] == 1.0
    # reversed: fg last; t at 0.2 (bg x3: P 0), then 0.1 (P 2/5, R 1): AP = 2/5
    reversed_map = np.array([0.1, 0.1, 0.2, 0.2, 0.2])
    assert pixel_average_precision([truth], [reversed_map])["pxap"] == pytest.approx(0.4)
    # a constant map scores the prevalence
    constant = pixel_average_precision([truth], [np.full(5, 0.3)])
    assert constant["pxap"] == pytest.approx(constant["prevalence"]) == pytest.approx(0.4)


def test_matches_the_brute_force_sum_on_random_maps_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        truth = rng.random(60) < rng.uniform(0.1, 0.9)
        truth[0] = True
        scores = rng.integers(0, 7, 60) / 6  # many ties
        expected = brute_force_ap(truth, scores)
        got = pixel_average_precision([truth.reshape(6, 10).astype(int)],
                                      [scores.reshape(6, 10)])["pxap"]
        assert got == pytest.approx(expected, abs=1e-12)


def test_no_foreground_no_pixels_and_shape_errors():
    none = pixel_average_precision([np.zeros((2, 2), int)], [np.ones((2, 2))])
    assert math.isnan(none["pxap"]) and none["prevalence"] == 0.0 and none["n_pixels"] == 4
    empty = pixel_average_precision([], [])
    assert math.isnan(empty["pxap"]) and math.isnan(empty["prevalence"])
    assert empty["n_pixels"] == 0
    ignored = pixel_average_precision([np.full((2, 2), -1)], [np.ones((2, 2))])
    assert math.isnan(ignored["pxap"]) and ignored["n_pixels"] == 0
    with pytest.raises(ValueError, match=r"shapes differ: \(2, 2\) vs \(2, 3\)"):
        pixel_average_precision([np.zeros((2, 2))], [np.zeros((2, 3))])
    with pytest.raises(ValueError):
        pixel_average_precision([np.zeros((2, 2))], [])


def test_integer_maps_are_ranked_by_value():
    # a map stored as uint8 (0-255): negating it must not wrap around
    truth = np.array([[1, 0, 0]])
    result = pixel_average_precision([truth], [np.array([[200, 10, 0]], dtype=np.uint8)])
    assert result["pxap"] == 1.0
    result = pixel_average_precision([truth], [np.array([[0, 10, 200]], dtype=np.uint8)])
    assert result["pxap"] == pytest.approx(1 / 3)
