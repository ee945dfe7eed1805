"""Tests of the acquisition functions against hand-computed numbers and worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_wsl_al.core.al import acquisition
from napari_wsl_al.core.al.acquisition import (
    STRATEGIES,
    RegionStats,
    Selection,
    SelectionConfig,
    colour_histograms,
    items_per_class,
    js_divergence,
    label_prop_candidates,
    score_images,
    score_regions,
    select_regions,
    select_with_config,
)
from napari_wsl_al.core.errors import ActiveLearningError

LN2 = math.log(2.0)
H_01 = 0.3250829733914482  # -(0.9 ln 0.9 + 0.1 ln 0.1) = binary entropy of 0.1 (or 0.9)
H_02 = 0.5004024235381879  # binary entropy of 0.2 (or 0.8)
H_03 = 0.6108643020548935  # binary entropy of 0.3 (or 0.7)
H_04 = 0.6730116670092565  # binary entropy of 0.4 (or 0.6)
H_001 = 0.056001534354847386  # binary entropy of 0.01 (or 0.99)


def stats_of(ids, probs, n_regions=None, mc_probs=None):
    probs = np.asarray(probs, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    n_regions = int(ids.max()) if n_regions is None else n_regions
    return RegionStats(n_regions, probs.shape[1]).add(ids, probs, mc_probs=mc_probs)


# --- RegionStats -----------------------------------------------------------------------------


def test_entropy_ovr_entropy_and_probabilities_by_hand():
    stats = stats_of([1, 1, 2, 3], [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.7, 0.2, 0.1],
                                    [0.1, 0.9, 0.0]], n_regions=4)
    assert stats.pixel_count.tolist() == [0, 2, 1, 1, 0]
    np.testing.assert_allclose(stats.mean_entropy, [0, LN2, 0.8018185525433372, H_01, 0],
                               rtol=1e-6)
    np.testing.assert_allclose(stats.entropy_sum[1], 2 * LN2, rtol=1e-6)
    np.testing.assert_allclose(stats.entropy_max, [0, LN2, 0.8018185525433372, H_01, 0],
                               rtol=1e-6)
    # H_c = -p ln p - (1 - p) ln(1 - p) per class
    np.testing.assert_allclose(stats.ovr_entropy("mean")[1], [LN2, LN2, 0], atol=1e-6)
    np.testing.assert_allclose(stats.ovr_entropy("max")[2], [H_03, H_02, H_01], rtol=1e-6)
    np.testing.assert_allclose(stats.ovr_entropy_sum[1], [2 * LN2, 2 * LN2, 0], atol=1e-6)
    np.testing.assert_allclose(stats.mean_probability[1], [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(stats.probability_sum[1], [1.0, 1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(stats.mean_probability[4], [0, 0, 0])
    # Eq. 3: mean probability over all pixels
    np.testing.assert_allclose(stats.class_distribution, [1.8 / 4, 2.1 / 4, 0.1 / 4], rtol=1e-6)
    assert stats.has_pixels.tolist() == [False, True, True, True, False]
    assert stats.dominant_class.tolist() == [-1, 0, 0, 1, -1]


def test_bvsb_ratio_best_class_ties_and_degenerate_rows():
    # u = p_second / p_best; (0.5, 0.5, 0) ties: best class 0, u = 1
    stats = stats_of([1, 1, 2, 3, 4], [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0],
                                       [0.0, 0.0, 0.0], [0.1, 0.2, 0.7]])
    assert stats.predicted_count.tolist() == [[0, 0, 0], [1, 0, 1], [1, 0, 0], [1, 0, 0],
                                              [0, 0, 1]]
    np.testing.assert_allclose(stats.bvsb_sum_by_class[1], [0.5, 0, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(stats.bvsb_sum_by_class[3], [0, 0, 0])
    np.testing.assert_allclose(stats.mean_bvsb, [0, (0.5 + 1 / 3) / 2, 1.0, 0.0, 2 / 7],
                               rtol=1e-6)
    # a region of only (0,0,0) rows: no entropy, no NaN
    assert stats.mean_entropy[3] == 0 and stats.ovr_entropy_max[3].tolist() == [0, 0, 0]
    # second best must be the second largest, not the smallest
    two = stats_of([1], [[0.1, 0.3, 0.6]])
    np.testing.assert_allclose(two.mean_bvsb[1], 0.5, rtol=1e-6)


def test_ids_zero_and_non_finite_pixels_are_ignored_and_values_clipped():
    stats = stats_of([0, 1, 1, 2], [[0.5, 0.5], [np.nan, 0.5], [1.2, -0.2], [np.inf, 0.0]],
                     n_regions=2)
    assert stats.pixel_count.tolist() == [0, 1, 0]
    assert stats.mean_entropy[1] == 0.0  # (1.2, -0.2) clipped to (1, 0)
    np.testing.assert_allclose(stats.probability_sum[1], [1.0, 0.0])
    mc = np.array([[[0.5, 0.5], [0.5, 0.5], [0.4, 0.6]], [[0.5, 0.5], [0.5, np.nan], [0.2, 0.8]]],
                  dtype=np.float32)
    with_mc = stats_of([1, 1, 2], [[0.5, 0.5]] * 3, mc_probs=mc)
    assert with_mc.pixel_count.tolist() == [0, 1, 1]
    assert with_mc.mc_pixel_count.tolist() == [0, 1, 1]


def test_mc_dropout_variance_by_hand():
    # region 1: passes (0.2, 0.8) and (0.4, 0.6): variance 0.01 per class
    # region 2: identical passes: 0
    mc = np.array([[[0.2, 0.8], [0.5, 0.5]], [[0.4, 0.6], [0.5, 0.5]]], dtype=np.float32)
    stats = stats_of([1, 2], [[0.3, 0.7], [0.5, 0.5]], n_regions=3, mc_probs=mc)
    assert stats.has_mc
    np.testing.assert_allclose(stats.mc_mean_variance, [0, 0.01, 0, 0], atol=1e-7)
    np.testing.assert_allclose(stats.mc_variance_sum[1], 0.01, rtol=1e-5)
    scores = score_regions(stats, "mc_dropout")
    assert scores[1] > scores[2] and scores[3] == -np.inf
    plain = stats_of([1, 2], [[0.3, 0.7], [0.5, 0.5]])
    assert not plain.has_mc
    with pytest.raises(ActiveLearningError, match="MC-dropout"):
        score_regions(plain, "mc_dropout")


def test_streaming_in_chunks_and_blocks_equals_one_shot(monkeypatch):
    rng = np.random.default_rng(3)
    n_pixels, n_classes, n_regions = 600, 3, 40
    ids = rng.integers(0, n_regions + 1, n_pixels)
    logits = rng.normal(size=(n_pixels, n_classes)) * 2
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    mc = np.clip(probs[None] + rng.normal(scale=0.1, size=(3, n_pixels, n_classes)), 0, 1)
    whole = RegionStats(n_regions, n_classes).add(ids, probs, mc_probs=mc)
    chunked = RegionStats(n_regions, n_classes)
    for part in np.split(np.arange(n_pixels), [50, 51, 333]):
        chunked.add(ids[part], probs[part], mc_probs=mc[:, part])
    monkeypatch.setattr(acquisition, "BLOCK_PIXELS", 7)
    blocked = RegionStats(n_regions, n_classes).add(ids.reshape(20, 30), probs, mc_probs=mc)
    first, second = RegionStats(n_regions, n_classes), RegionStats(n_regions, n_classes)
    first.add(ids[:300], probs[:300], mc_probs=mc[:, :300])
    second.add(ids[300:], probs[300:], mc_probs=mc[:, 300:])
    assert first.merge(second) is first
    names = ("pixel_count", "entropy_sum", "entropy_max", "bvsb_sum_by_class", "predicted_count",
             "probability_sum", "ovr_entropy_sum", "ovr_entropy_max", "mc_variance_sum",
             "mc_pixel_count")
    for other in (chunked, blocked, first):
        for name in names:
            np.testing.assert_allclose(getattr(other, name), getattr(whole, name), rtol=1e-9,
                                       err_msg=name)
    assert whole.pixel_count.sum() == np.count_nonzero(ids)
    for strategy in ("entropy", "bvsb", "pixbal", "oreal", "classbal", "mc_dropout"):
        np.testing.assert_allclose(score_regions(chunked, strategy),
                                   score_regions(whole, strategy))


def test_merge_keeps_maxima_and_rejects_other_shapes():
    first = stats_of([1], [[0.5, 0.5]], n_regions=2)
    second = stats_of([1, 2], [[0.9, 0.1], [0.9, 0.1]])
    first.merge(second)
    np.testing.assert_allclose(first.entropy_max, [0, LN2, H_01], rtol=1e-6)
    np.testing.assert_allclose(first.ovr_entropy_max[1], [LN2, LN2], rtol=1e-6)
    assert first.pixel_count.tolist() == [0, 2, 1]
    with pytest.raises(ActiveLearningError, match="cannot merge"):
        first.merge(RegionStats(3, 2))
    with pytest.raises(ActiveLearningError, match="cannot merge"):
        first.merge(RegionStats(2, 3))


def test_region_stats_rejects_bad_input():
    with pytest.raises(ActiveLearningError, match="n_regions"):
        RegionStats(-1, 2)
    with pytest.raises(ActiveLearningError, match="n_classes"):
        RegionStats(3, 1)
    assert RegionStats(0, 2).add([], np.zeros((0, 2))).pixel_count.tolist() == [0]
    nothing = RegionStats(2, 2).add([0, 0], [[0.5, 0.5], [0.9, 0.1]])
    assert nothing.pixel_count.tolist() == [0, 0, 0] and not nothing.has_pixels.any()
    assert nothing.class_distribution.tolist() == [0.0, 0.0]
    stats = RegionStats(3, 2)
    with pytest.raises(ActiveLearningError, match="integers"):
        stats.add(np.array([1.0]), [[0.5, 0.5]])
    with pytest.raises(ActiveLearningError, match="expected \\(1, 2\\)"):
        stats.add([1], [[0.2, 0.3, 0.5]])
    with pytest.raises(ActiveLearningError, match="outside 0..3"):
        stats.add([4], [[0.5, 0.5]])
    with pytest.raises(ActiveLearningError, match="outside 0..3"):
        stats.add([-1], [[0.5, 0.5]])
    for bad_mc in (np.zeros((1, 2, 2)), np.zeros((1, 2)), np.zeros((0, 1, 2))):
        with pytest.raises(ActiveLearningError, match="mc_probs"):
            stats.add([1], [[0.5, 0.5]], mc_probs=bad_mc)
    stats.add(np.array([3], dtype=np.uint8), [[0.5, 0.5]])
    assert stats.pixel_count.tolist() == [0, 0, 0, 1]
    with pytest.raises(ActiveLearningError, match="aggregation"):
        stats.ovr_entropy("median")


# --- scores --------------------------------------------------------------------------------


def test_uncertain_region_beats_confident_region_for_every_uncertainty_strategy():
    stats = stats_of([1, 2], [[0.99, 0.01], [0.5, 0.5]])
    for strategy in ("entropy", "bvsb", "classbal", "pixbal", "oreal"):
        scores = score_regions(stats, strategy)
        assert scores[2] > scores[1], strategy
        assert scores[0] == -np.inf
        assert select_regions(stats, strategy, 1).ids.tolist() == [2], strategy
    np.testing.assert_allclose(score_regions(stats, "entropy")[1:], [H_001, LN2], rtol=1e-5)
    np.testing.assert_allclose(score_regions(stats, "bvsb")[1:], [0.01 / 0.99, 1.0], rtol=1e-5)
    np.testing.assert_allclose(score_regions(stats, "oreal")[1:], [H_001, LN2], rtol=1e-5)


def test_max_and_mean_aggregation_differ_on_a_region_with_one_uncertain_pixel():
    # region 1: three (0.99, 0.01) pixels and one (0.5, 0.5); region 2: four (0.8, 0.2)
    ids = [1, 1, 1, 1, 2, 2, 2, 2]
    probs = [[0.99, 0.01]] * 3 + [[0.5, 0.5]] + [[0.8, 0.2]] * 4
    stats = stats_of(ids, probs)
    mean_entropy = score_regions(stats, "entropy")
    np.testing.assert_allclose(mean_entropy[1:], [(3 * H_001 + LN2) / 4, H_02], rtol=1e-5)
    np.testing.assert_allclose(score_regions(stats, "entropy", aggregation="max")[1:],
                               [LN2, H_02], rtol=1e-5)
    assert stats.entropy_max[0] == 0.0  # scoring leaves the statistics alone
    returned = stats.ovr_entropy("max")
    returned[:] = 5.0
    assert stats.ovr_entropy_max[0].tolist() == [0.0, 0.0]
    assert select_regions(stats, "entropy", 1).ids.tolist() == [2]
    assert select_regions(stats, "entropy", 1, aggregation="max").ids.tolist() == [1]
    assert select_regions(stats, "oreal", 1).ids.tolist() == [1]
    assert select_regions(stats, "oreal", 1, aggregation="mean").ids.tolist() == [2]
    assert select_regions(stats, "oreal", 1).params["aggregation"] == "max"
    assert select_regions(stats, "entropy", 1).params["aggregation"] == "mean"
    assert "aggregation" not in select_regions(stats, "bvsb", 1, aggregation="max").params
    with pytest.raises(ActiveLearningError, match="aggregation"):
        score_regions(stats, "entropy", aggregation="sum")


def test_pixbal_equation_4_and_the_effect_of_nu():
    # BvSB u = 2/3 for (0.6, 0.4) and (0.4, 0.6), 1/9 for (0.9, 0.1); region 4 mixes two classes
    ids = [1, 1, 2, 3, 4, 4]
    probs = [[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]]
    stats = stats_of(ids, probs)
    p0 = (0.6 + 0.6 + 0.4 + 0.9 + 0.6 + 0.4) / 6  # 0.58333
    np.testing.assert_allclose(stats.class_distribution, [p0, 1 - p0], rtol=1e-6)
    # nu = 0: plain mean BvSB; regions 1 and 2 tie and the lower id goes first
    np.testing.assert_allclose(score_regions(stats, "pixbal", nu=0)[1:],
                               [2 / 3, 2 / 3, 1 / 9, 2 / 3], rtol=1e-5)
    assert select_regions(stats, "pixbal", 2, nu=0).ids.tolist() == [1, 2]
    nu = 2.0
    w0, w1 = (1 + nu * p0) ** -2, (1 + nu * (1 - p0)) ** -2
    expected = [2 / 3 * w0, 2 / 3 * w1, 1 / 9 * w0, (2 / 3 * w0 + 2 / 3 * w1) / 2]
    np.testing.assert_allclose(score_regions(stats, "pixbal", nu=nu)[1:], expected, rtol=1e-5)
    selection = select_regions(stats, "pixbal", 2, nu=nu)
    assert selection.ids.tolist() == [2, 4]  # the rarer predicted class first
    assert selection.params["nu"] == nu
    np.testing.assert_allclose(selection.scores, [expected[1], expected[3]], rtol=1e-5)
    with pytest.raises(ActiveLearningError, match="nu"):
        score_regions(stats, "pixbal", nu=-1)


def test_classbal_normalised_bvsb_times_dominant_class_weight():
    # u: r1 2/3, r2 1/9, r3 0.45/0.55, r4 2/3; dominant classes 0, 0, 0, 1
    stats = stats_of([1, 2, 3, 4], [[0.6, 0.4], [0.9, 0.1], [0.55, 0.45], [0.4, 0.6]])
    low, high = 1 / 9, 0.45 / 0.55
    normalised = (2 / 3 - low) / (high - low)  # 0.785714
    expected = [normalised * math.exp(-0.75), 0.0, math.exp(-0.75), normalised * math.exp(-0.25)]
    np.testing.assert_allclose(score_regions(stats, "classbal")[1:], expected, rtol=1e-5)
    assert select_regions(stats, "classbal", 4).ids.tolist() == [4, 3, 1, 2]
    assert select_regions(stats, "bvsb", 4).ids.tolist() == [3, 1, 4, 2]
    # equal uncertainty everywhere: the class weight alone ranks
    flat = stats_of([1, 2, 3], [[0.6, 0.4], [0.6, 0.4], [0.4, 0.6]], n_regions=4)
    np.testing.assert_allclose(score_regions(flat, "classbal")[1:],
                               [math.exp(-2 / 3), math.exp(-2 / 3), math.exp(-1 / 3), -np.inf],
                               rtol=1e-6)
    empty = RegionStats(2, 2)
    assert score_regions(empty, "classbal").tolist() == [-np.inf] * 3


def test_scores_are_minus_inf_for_id_zero_and_empty_regions_and_unknown_strategy_fails():
    stats = stats_of([1, 3], [[0.5, 0.5], [0.7, 0.3]], n_regions=4)
    for strategy in ("random", "entropy", "bvsb", "classbal", "pixbal", "oreal"):
        scores = score_regions(stats, strategy, rng=0)
        assert scores.shape == (5,)
        assert np.isneginf(scores[[0, 2, 4]]).all(), strategy
        assert np.isfinite(scores[[1, 3]]).all(), strategy
    with pytest.raises(ActiveLearningError, match="unknown acquisition strategy"):
        score_regions(stats, "coreset")
    with pytest.raises(ActiveLearningError, match="unknown acquisition strategy"):
        select_regions(stats, "coreset", 1)


# --- selection -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_never_holds_labelled_empty_or_zero_regions(strategy):
    ids = [0, 0, 1, 2, 3, 5, 6]
    probs = [[0.5, 0.5]] * 2 + [[0.6, 0.4], [0.5, 0.5], [0.7, 0.3], [0.55, 0.45], [0.9, 0.1]]
    mc = np.stack([np.asarray(probs), np.asarray(probs)[:, ::-1]]).astype(np.float32)
    stats = stats_of(ids, probs, n_regions=7, mc_probs=mc)
    selection = select_regions(stats, strategy, 10, labelled=np.array([2, 6]), rng=1)
    assert sorted(selection.ids.tolist()) == [1, 3, 5]  # n > candidates: all of them
    assert selection.ids.dtype == np.int64 and selection.classes.dtype == np.int64
    assert selection.scores.shape == selection.ids.shape == selection.classes.shape
    assert len(selection) == 3 and selection.strategy == strategy
    assert select_regions(stats, strategy, 0, rng=1).ids.tolist() == []
    np.testing.assert_allclose(selection.scores,
                               score_regions(stats, strategy, rng=1)[selection.ids])


def test_scores_are_in_selection_order_and_ties_go_to_the_lower_id():
    stats = stats_of([1, 2, 3, 4], [[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.5, 0.5]])
    selection = select_regions(stats, "bvsb", 3)
    assert selection.ids.tolist() == [4, 2, 3]
    np.testing.assert_allclose(selection.scores, [1.0, 2 / 3, 2 / 3], rtol=1e-6)
    assert selection.classes.tolist() == [-1, -1, -1]
    assert selection.params == {"n": 3, "no_adjacent": False}
    assert select_regions(stats, "bvsb", 3, labelled=[]).ids.tolist() == [4, 2, 3]
    assert select_regions(stats, "bvsb", 3, labelled={4, 2}).ids.tolist() == [3, 1]
    # many ties (u = 2/3, 1/4, 1/9 in turn): each score level in id order
    many = stats_of(np.arange(1, 61), [[0.6, 0.4], [0.8, 0.2], [0.9, 0.1]] * 20)
    expected = [i for start in (1, 2, 3) for i in range(start, 61, 3)]
    assert select_regions(many, "bvsb", 60).ids.tolist() == expected


def test_no_adjacent_greedy_skips_neighbours_of_earlier_picks():
    # chain 1-2-3-4-5, uncertainty decreasing with the id
    probs = [[0.5, 0.5], [0.55, 0.45], [0.6, 0.4], [0.65, 0.35], [0.7, 0.3]]
    stats = stats_of([1, 2, 3, 4, 5], probs)
    chain = np.array([[1, 2], [2, 3], [3, 4], [4, 5]])
    assert select_regions(stats, "entropy", 3, adjacency=chain).ids.tolist() == [1, 2, 3]
    spaced = select_regions(stats, "entropy", 5, adjacency=chain, no_adjacent=True)
    assert spaced.ids.tolist() == [1, 3, 5]
    assert spaced.params["no_adjacent"] is True
    # the pair list works in either direction; a labelled region blocks nothing
    reverse = chain[:, ::-1]
    assert select_regions(stats, "entropy", 2, adjacency=reverse, no_adjacent=True,
                          labelled=[1]).ids.tolist() == [2, 4]
    assert select_regions(stats, "entropy", 2, adjacency=[[1, 2], [1, 3]], no_adjacent=True,
                          ).ids.tolist() == [1, 4]
    for seed in range(5):
        picks = set(select_regions(stats, "random", 5, adjacency=chain, no_adjacent=True,
                                   rng=seed).ids.tolist())
        assert not any(a in picks and b in picks for a, b in chain.tolist())
    assert select_regions(stats, "entropy", 2, adjacency=np.zeros((0, 2), int),
                          no_adjacent=True).ids.tolist() == [1, 2]
    assert select_regions(stats, "entropy", 2, adjacency=[], no_adjacent=True).ids.tolist() == [
        1, 2]


def test_random_is_deterministic_per_seed_and_covers_candidates():
    stats = stats_of(np.arange(1, 51), [[0.5, 0.5]] * 50)
    first = select_regions(stats, "random", 10, rng=np.random.default_rng(7))
    again = select_regions(stats, "random", 10, rng=7)
    other = select_regions(stats, "random", 10, rng=8)
    assert first.ids.tolist() == again.ids.tolist()
    assert first.ids.tolist() != other.ids.tolist()
    assert len(set(first.ids.tolist())) == 10
    assert np.all(np.diff(first.scores) <= 0)


def test_select_rejects_bad_arguments():
    stats = stats_of([1, 2], [[0.5, 0.5], [0.6, 0.4]])
    with pytest.raises(ActiveLearningError, match="n must be"):
        select_regions(stats, "bvsb", -1)
    with pytest.raises(ActiveLearningError, match="needs the region adjacency"):
        select_regions(stats, "bvsb", 1, no_adjacent=True)
    with pytest.raises(ActiveLearningError, match="labelled ids"):
        select_regions(stats, "bvsb", 1, labelled=[3])
    with pytest.raises(ActiveLearningError, match="labelled ids must be integer"):
        select_regions(stats, "bvsb", 1, labelled=[1.5])
    with pytest.raises(ActiveLearningError, match="adjacency pairs"):
        select_regions(stats, "bvsb", 1, adjacency=[[1, 5]])
    with pytest.raises(ActiveLearningError, match="shape \\(E, 2\\)"):
        select_regions(stats, "bvsb", 1, adjacency=[[1, 2, 1]])
    with pytest.raises(ActiveLearningError, match="shape \\(E, 2\\)"):
        select_regions(stats, "bvsb", 1, adjacency=[1, 2])
    assert select_regions(RegionStats(0, 2), "oreal", 3).ids.tolist() == []


# --- OREAL -----------------------------------------------------------------------------------


def test_items_per_class_reproduces_algorithm_1_by_hand():
    # counts + delta: (5,0,2) -> c1 (5,1,2) -> c1 (5,2,2) -> tie c1 (5,3,2) -> c2 (5,3,3)
    #                 -> tie c1 (5,4,3) -> c2 (5,4,4)
    assert items_per_class([5, 0, 2], 6).tolist() == [0, 4, 2]
    assert items_per_class([0, 0, 0], 7).tolist() == [3, 2, 2]
    assert items_per_class([3, 1], 0).tolist() == [0, 0]
    assert items_per_class(np.array([1, 9]), 3).dtype == np.int64
    with pytest.raises(ActiveLearningError, match="non-negative"):
        items_per_class([1, -1], 2)
    with pytest.raises(ActiveLearningError, match="non-negative"):
        items_per_class([], 2)
    with pytest.raises(ActiveLearningError, match="budget"):
        items_per_class([1, 1], -1)


# Eight one-pixel regions, K = 3 (0 = background); H_c of the dominant class in brackets.
OREAL_PROBS = [
    [0.2, 0.7, 0.1],  # r1 dominant 1 (H_03)
    [0.1, 0.6, 0.3],  # r2 dominant 1 (H_04)
    [0.05, 0.9, 0.05],  # r3 dominant 1 (H_01)
    [0.3, 0.1, 0.6],  # r4 dominant 2 (H_04)
    [0.1, 0.1, 0.8],  # r5 dominant 2 (H_02)
    [0.5, 0.3, 0.2],  # r6 dominant 0 (LN2)
    [0.8, 0.1, 0.1],  # r7 dominant 0 (H_02)
    [0.6, 0.35, 0.05],  # r8 dominant 0 (H_04)
]
OREAL_ADJACENCY = [[2, 7], [3, 8], [6, 9]]


def oreal_stats():
    return stats_of(np.arange(1, 9), OREAL_PROBS, n_regions=9)


def test_oreal_class_balanced_picks_with_leftover_filled_from_global_ranking():
    # n_c = (9, 1, 3) with the real background count: delta = ITEMSPERCLASS = (0, 4, 2);
    # class 1 has only 3 regions: r2 > r1 > r3 by H_1; class 2: r4 > r5 by H_2;
    # the unused slot goes to the best remaining region by its dominant-class H: r6 (ln 2)
    stats = oreal_stats()
    selection = select_regions(stats, "oreal", 6, class_counts=[9, 1, 3], n_background=None,
                               adjacency=OREAL_ADJACENCY)
    assert selection.ids.tolist() == [2, 1, 3, 4, 5, 6]
    assert selection.classes.tolist() == [1, 1, 1, 2, 2, -1]
    np.testing.assert_allclose(selection.scores, [H_04, H_03, H_01, H_04, H_02, LN2], rtol=1e-5)
    assert selection.params["items_per_class"] == [0, 4, 2]
    assert selection.params["class_counts"] == [9, 1, 3]
    np.testing.assert_allclose(score_regions(stats, "oreal")[1:9],
                               [H_03, H_04, H_01, H_04, H_02, LN2, H_02, H_04], rtol=1e-5)


def test_oreal_background_oversampling_and_context_sampling():
    stats = oreal_stats()
    # n_b forced to 0: counts (0, 1, 3) -> delta (4, 2, 0)
    assert select_regions(stats, "oreal", 6, class_counts=[9, 1, 3]).params[
        "items_per_class"] == [4, 2, 0]
    # zero counts: delta (2, 2, 2); foreground r2, r1 | r4, r5; background: context first
    # (r7 touches the pick r2; r8 touches r3, which was not picked), then r6 by H_0
    selection = select_regions(stats, "oreal", 6, adjacency=OREAL_ADJACENCY)
    assert selection.ids.tolist() == [2, 1, 4, 5, 7, 6]
    assert selection.classes.tolist() == [1, 1, 2, 2, -1, 0]
    np.testing.assert_allclose(selection.scores, [H_04, H_03, H_04, H_02, H_02, LN2], rtol=1e-5)
    assert selection.params["context"] is True
    assert selection.params["n_background"] == 0
    # without context, or without adjacency: the background by H_0 only
    for kwargs in ({"adjacency": OREAL_ADJACENCY, "context": False}, {}):
        plain = select_regions(stats, "oreal", 6, **kwargs)
        assert plain.ids.tolist() == [2, 1, 4, 5, 6, 8]
        assert plain.classes.tolist() == [1, 1, 2, 2, 0, 0]
        assert plain.params["context"] is False
    # no_adjacent wins over context: r7 touches r2, so it is skipped
    spaced = select_regions(stats, "oreal", 6, adjacency=OREAL_ADJACENCY, no_adjacent=True)
    assert spaced.ids.tolist() == [2, 1, 4, 5, 6, 8]
    # pairs in either order; a class with no quota takes nothing even with no_adjacent
    flipped = select_regions(stats, "oreal", 6, adjacency=[[7, 2], [8, 3]])
    assert flipped.ids.tolist() == [2, 1, 4, 5, 7, 6]
    quota = select_regions(stats, "oreal", 3, items_per_class=[0, 1, 2],
                           adjacency=OREAL_ADJACENCY, no_adjacent=True)
    assert quota.ids.tolist() == [2, 4, 5] and quota.classes.tolist() == [1, 2, 2]
    # more context regions than the background quota: the best ones by H_0
    wide = select_regions(stats, "oreal", 4, items_per_class=[1, 2, 1],
                          adjacency=[[2, 7], [2, 8], [2, 6]])
    assert wide.ids.tolist() == [2, 1, 4, 6]
    assert wide.classes.tolist() == [1, 1, 2, -1]


def test_oreal_explicit_items_no_background_class_and_errors():
    stats = oreal_stats()
    explicit = select_regions(stats, "oreal", 3, items_per_class=[0, 1, 2])
    assert explicit.ids.tolist() == [2, 4, 5]
    assert explicit.params["items_per_class"] == [0, 1, 2]
    # no background class: classes in index order, no context even with adjacency
    plain = select_regions(stats, "oreal", 3, background_class=None, adjacency=OREAL_ADJACENCY)
    assert plain.ids.tolist() == [6, 2, 4]
    assert plain.classes.tolist() == [0, 1, 2]
    assert plain.params["context"] is False and plain.params["background_class"] is None
    # another background class: class 2 is oversampled, class 0 treated as foreground
    other = select_regions(stats, "oreal", 3, background_class=2, class_counts=[0, 5, 7])
    assert other.params["items_per_class"] == [2, 0, 1]
    assert other.ids.tolist() == [6, 8, 4]
    with pytest.raises(ActiveLearningError, match="background_class"):
        select_regions(stats, "oreal", 3, background_class=3)
    with pytest.raises(ActiveLearningError, match="background_class"):
        select_regions(stats, "oreal", 3, background_class=-1)
    with pytest.raises(ActiveLearningError, match="class_counts"):
        select_regions(stats, "oreal", 3, class_counts=[1, 2])
    for bad in ([1, 1], [1, 1, 2], [-1, 2, 2]):
        with pytest.raises(ActiveLearningError, match="items_per_class"):
            select_regions(stats, "oreal", 3, items_per_class=bad)


# --- configuration ---------------------------------------------------------------------------


def test_selection_config_round_trips_and_validates():
    config = SelectionConfig(strategy="pixbal", n=5, aggregation="max", nu=6.0,
                             items_per_class=[1, 2, 2], n_background=None, context=False,
                             no_adjacent=True, seed=3)
    assert config.items_per_class == (1, 2, 2)
    data = config.to_json()
    assert data["items_per_class"] == [1, 2, 2] and data["n_background"] is None
    assert SelectionConfig.from_json(data) == config
    assert SelectionConfig.from_json(None) == SelectionConfig()
    assert SelectionConfig().to_json()["items_per_class"] is None
    defaults = SelectionConfig()
    assert (defaults.strategy, defaults.n, defaults.nu, defaults.n_background, defaults.context,
            defaults.no_adjacent, defaults.seed) == ("oreal", 20, 12.0, 0, True, False, 0)
    for bad in ({"strategy": "nope"}, {"n": -1}, {"aggregation": "sum"}, {"nu": -0.5},
                {"n_background": -1}):
        with pytest.raises(ActiveLearningError):
            SelectionConfig(**bad)
    with pytest.raises(ActiveLearningError, match="unknown selection settings"):
        SelectionConfig.from_json({"strategy": "bvsb", "budget": 3})


def test_select_with_config_passes_every_setting():
    stats = oreal_stats()
    config = SelectionConfig(strategy="oreal", n=6, context=True, no_adjacent=True)
    selection = select_with_config(stats, config, adjacency=OREAL_ADJACENCY)
    assert selection.ids.tolist() == [2, 1, 4, 5, 6, 8]
    counted = select_with_config(stats, SelectionConfig(n=6, n_background=None),
                                 class_counts=[9, 1, 3], labelled=[3])
    assert counted.ids.tolist() == [2, 1, 4, 5, 6, 8]
    assert counted.params["items_per_class"] == [0, 4, 2]
    explicit = select_with_config(stats, SelectionConfig(n=3, items_per_class=(0, 1, 2)))
    assert explicit.ids.tolist() == [2, 4, 5]
    by_mean = select_with_config(stats, SelectionConfig(strategy="entropy", n=2,
                                                        aggregation="max"))
    assert by_mean.params["aggregation"] == "max"
    pix = select_with_config(stats, SelectionConfig(strategy="pixbal", n=1, nu=0.0))
    assert pix.params["nu"] == 0.0
    seeded = select_with_config(stats, SelectionConfig(strategy="random", n=4, seed=5))
    assert seeded.ids.tolist() == select_regions(stats, "random", 4, rng=5).ids.tolist()
    given = select_with_config(stats, SelectionConfig(strategy="random", n=4, seed=5), rng=6)
    assert given.ids.tolist() == select_regions(stats, "random", 4, rng=6).ids.tolist()


def test_selection_is_frozen():
    selection = Selection(ids=np.array([1]), scores=np.array([0.5]), strategy="bvsb")
    assert selection.classes.tolist() == [] and selection.params == {}
    with pytest.raises(AttributeError):
        selection.strategy = "oreal"


# --- image level -----------------------------------------------------------------------------


def test_score_images_entropy_mc_dropout_and_random():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]])
    np.testing.assert_allclose(score_images(probs, "entropy"), [LN2, H_01, 0.0], atol=1e-12)
    assert score_images(np.array([[1.2, -0.2]]), "entropy").tolist() == [0.0]  # clipped
    # per-pixel maps (M, C, H, W): mean of the pixel entropies
    maps = np.zeros((1, 2, 1, 2))
    maps[0, :, 0, 0] = [0.5, 0.5]
    maps[0, :, 0, 1] = [1.0, 0.0]
    np.testing.assert_allclose(score_images(maps, "entropy"), [LN2 / 2])
    mc = np.array([[[0.2, 0.8], [0.5, 0.5], [1, 0]], [[0.4, 0.6], [0.5, 0.5], [1, 0]]])
    np.testing.assert_allclose(score_images(probs, "mc_dropout", mc_probs=mc), [0.01, 0, 0],
                               atol=1e-12)
    first = score_images(probs, "random", rng=4)
    assert first.shape == (3,) and first.tolist() == score_images(probs, "random", rng=4).tolist()
    with pytest.raises(ActiveLearningError, match="mc_probs"):
        score_images(probs, "mc_dropout")
    with pytest.raises(ActiveLearningError, match="mc_probs has shape"):
        score_images(probs, "mc_dropout", mc_probs=np.zeros((2, 3, 3)))
    with pytest.raises(ActiveLearningError, match="expected \\(M, C\\)"):
        score_images(np.array([0.5, 0.5]), "entropy")
    with pytest.raises(ActiveLearningError, match="unknown acquisition strategy"):
        score_images(probs, "bvsb")


def test_colour_histograms_by_hand():
    image = np.array([[[0, 128, 255], [255, 0, 8]]], dtype=np.uint8)  # 1 x 2 pixels
    # bins = 4: bin = value * 4 // 256: 0 -> 0, 8 -> 0, 128 -> 2, 255 -> 3
    histograms = colour_histograms([image], bins=4)
    assert histograms.shape == (1, 3, 4)
    np.testing.assert_allclose(histograms[0], [[0.5, 0, 0, 0.5], [0.5, 0, 0.5, 0],
                                               [0.5, 0, 0, 0.5]])
    big = np.full((3, 3, 3), 200, dtype=np.uint8)
    both = colour_histograms(iter([image, big]), bins=1)
    np.testing.assert_allclose(both, np.ones((2, 3, 1)))
    stacked = colour_histograms(np.stack([image, image]), bins=256)
    assert stacked[1, 2, 8] == 0.5 and stacked[1, 2, 255] == 0.5
    assert colour_histograms([], bins=8).shape == (0, 3, 8)
    for bad in (np.zeros((2, 2), np.uint8), np.zeros((2, 2, 4), np.uint8),
                np.zeros((2, 2, 3), np.uint16), np.zeros((0, 2, 3), np.uint8)):
        with pytest.raises(ActiveLearningError, match="image 0"):
            colour_histograms([bad])
    for bins in (0, 257):
        with pytest.raises(ActiveLearningError, match="bins"):
            colour_histograms([image], bins=bins)


def test_js_divergence_by_hand_symmetric_bounded_and_chunked(monkeypatch):
    # one plane each: JS((1,0),(0,1)) = 1 bit; JS((.5,.5),(1,0)) = H(.75,.25) - 1/2 = 0.311278
    first = np.array([[[1.0, 0.0]], [[0.5, 0.5]]])
    second = np.array([[[0.0, 1.0]], [[1.0, 0.0]], [[0.5, 0.5]]])
    expected = [[1.0, 0.0, 0.31127812445913283], [0.31127812445913283, 0.31127812445913283, 0]]
    np.testing.assert_allclose(js_divergence(first, second), expected, atol=1e-12)
    np.testing.assert_allclose(js_divergence(second, first), np.transpose(expected), atol=1e-12)
    # summed over planes, and unnormalised counts are normalised first
    two_planes = np.array([[[2.0, 0.0], [1.0, 1.0]]])
    other = np.array([[[0.0, 5.0], [3.0, 0.0]]])
    np.testing.assert_allclose(js_divergence(two_planes, other), [[1.31127812445913283]])
    rng = np.random.default_rng(0)
    many = rng.random((9, 3, 5))
    whole = js_divergence(many, many)
    assert np.all(whole >= 0) and np.all(whole <= 3)
    np.testing.assert_allclose(np.diag(whole), 0, atol=1e-12)
    np.testing.assert_allclose(whole, whole.T, atol=1e-12)
    # nearly identical histograms: rounding would give -2.2e-16 without the clip at 0
    close = np.array([[[0.4534978894806515, 0.13404169724716475, 0.40311298644712923,
                        0.20345524067614962]]])
    closer = close.copy()
    closer[0, 0, 0] = 0.45349788974296484
    assert js_divergence(close, closer)[0, 0] >= 0.0
    monkeypatch.setattr(acquisition, "JS_CHUNK_VALUES", 20)
    np.testing.assert_allclose(js_divergence(many, many), whole, atol=1e-12)
    with pytest.raises(ActiveLearningError, match="cannot be compared"):
        js_divergence(many, rng.random((2, 3, 4)))
    with pytest.raises(ActiveLearningError, match="expected \\(M, planes, bins\\)"):
        js_divergence(many[0], many)
    with pytest.raises(ActiveLearningError, match="positive sum"):
        js_divergence(np.zeros((1, 1, 2)), many[:, :1, :2])
    with pytest.raises(ActiveLearningError, match="non-negative"):
        js_divergence(np.array([[[-1.0, 2.0]]]), np.array([[[1.0, 1.0]]]))


def test_label_prop_picks_same_class_nearest_unlabelled_samples():
    histograms = np.array([[[1.0, 0.0]], [[0.9, 0.1]], [[0.5, 0.5]], [[1.0, 0.0]],
                           [[0.5, 0.5]], [[0.0, 1.0]]])
    classes = [0, 0, 0, 1, 0, 0]
    labelled = [True, False, False, False, True, False]
    d01 = 0.05189916032131564  # JS((1,0),(.9,.1)) = H(.95,.05) - H(.9,.1)/2
    indices, nearest, distances = label_prop_candidates(histograms, classes, labelled, 1)
    # sample 3 is identical to sample 0 but predicted as another class: never a neighbour
    assert indices.tolist() == [2, 1] and nearest.tolist() == [4, 0]
    np.testing.assert_allclose(distances, [0.0, d01], atol=1e-12)
    indices, nearest, distances = label_prop_candidates(histograms, classes, labelled, 2)
    # 0 -> {1, 2}, 4 -> {2, 1}: deduplicated, each with its nearest labelled sample
    assert indices.tolist() == [2, 1] and nearest.tolist() == [4, 0]
    indices, nearest, _ = label_prop_candidates(histograms, classes, labelled, 10)
    assert indices.tolist() == [2, 1, 5] and nearest.tolist() == [4, 0, 4]
    assert indices.dtype == np.int64 and nearest.dtype == np.int64
    # equal distances: the lower index first
    tie = label_prop_candidates(np.array([[[1.0, 1.0]]] * 3), [0, 0, 0], [True, False, False], 2)
    assert tie[0].tolist() == [1, 2] and tie[1].tolist() == [0, 0]
    alternating = np.array([[[1.0, 1.0]], [[1.0, 0.0]]] * 30)
    crowd = label_prop_candidates(alternating, np.zeros(60), np.arange(60) == 0, 5)
    assert crowd[0].tolist() == [2, 4, 6, 8, 10]
    shared = label_prop_candidates(np.array([[[1.0, 1.0]]] * 3), [0, 0, 0], [True, True, False], 1)
    assert shared[0].tolist() == [2] and shared[1].tolist() == [0]
    for empty in (label_prop_candidates(histograms, classes, labelled, 0),
                  label_prop_candidates(histograms, classes, [False] * 6, 2),
                  label_prop_candidates(histograms, classes, [True] * 6, 2)):
        assert [part.size for part in empty] == [0, 0, 0]
    with pytest.raises(ActiveLearningError, match="k must be"):
        label_prop_candidates(histograms, classes, labelled, -1)
    with pytest.raises(ActiveLearningError, match="one of each per sample"):
        label_prop_candidates(histograms, classes[:5], labelled, 1)
    with pytest.raises(ActiveLearningError, match="one of each per sample"):
        label_prop_candidates(histograms, classes, labelled[:5], 1)


def test_add_image_equals_flat_pixels_without_region_zero():
    rng = np.random.default_rng(5)
    region_map = np.array([[0, 1, 1], [2, 2, 0]])
    probs = rng.dirichlet(np.ones(3), size=6).T.reshape(3, 2, 3).astype(np.float32)
    mc = rng.dirichlet(np.ones(3), size=(4, 6)).transpose(0, 2, 1).reshape(4, 3, 2, 3)
    by_image = RegionStats(2, 3).add_image(region_map, probs, mc)
    keep = region_map.ravel() > 0
    flat = RegionStats(2, 3).add(
        region_map.ravel()[keep], probs.reshape(3, -1).T[keep],
        mc_probs=mc.reshape(4, 3, -1).transpose(0, 2, 1)[:, keep])
    np.testing.assert_allclose(by_image.mean_entropy, flat.mean_entropy)
    np.testing.assert_allclose(by_image.mc_mean_variance, flat.mc_mean_variance)
    assert by_image.has_pixels.tolist() == [False, True, True]


# --- ties of the max aggregation ---------------------------------------------------------------

H_049 = 0.6929471672244782  # binary entropy of 0.49: 2e-4 below ln 2


def _saturated_regions():
    """Regions 1 and 2 share the max one-vs-rest entropy ln 2 (a pixel at p = 0.5) and are
    predicted foreground; region 1's other pixels are confident, region 2's are not."""
    p_fg = [0.5, 0.99, 0.99,  # region 1: max ln 2, mean (ln 2 + 2 H(0.01)) / 3
            0.5, 0.7, 0.7,  # region 2: max ln 2, mean (ln 2 + 2 H(0.3)) / 3
            0.2, 0.2, 0.2,  # region 3: background, H(0.2)
            0.49, 0.49, 0.49]  # region 4: max = mean = H(0.49), 2e-4 below ln 2
    ids = np.repeat([1, 2, 3, 4], 3)
    return stats_of(ids, [[1 - p, p] for p in p_fg])


def test_tie_scores_are_the_other_aggregation():
    stats = _saturated_regions()
    mean_1, mean_2 = (LN2 + 2 * H_001) / 3, (LN2 + 2 * H_03) / 3
    np.testing.assert_allclose(acquisition.tie_scores(stats, "oreal")[1:],
                               [mean_1, mean_2, H_02, H_049], rtol=1e-5)
    np.testing.assert_allclose(acquisition.tie_scores(stats, "oreal", "mean")[1:],
                               [LN2, LN2, H_02, H_049], rtol=1e-5)
    np.testing.assert_allclose(acquisition.tie_scores(stats, "entropy", "max")[1:],
                               [mean_1, mean_2, H_02, H_049], rtol=1e-5)
    assert acquisition.tie_scores(stats, "bvsb") is None
    assert acquisition.tie_scores(stats, "random") is None


def test_oreal_max_ties_go_to_the_region_uncertain_on_average():
    stats = _saturated_regions()
    scores = score_regions(stats, "oreal")
    assert scores[1] == scores[2] == pytest.approx(LN2)  # tied, as on tissue edges
    # ITEMSPERCLASS([0, 0], 2) = [1, 1]: one foreground pick, one background pick
    exact = select_regions(stats, "oreal", 2, tie_tolerance=0.0)
    # foreground: region 2, not region 1 whose id is lower; background: region 4 (H(0.49))
    assert exact.ids.tolist() == [2, 4]
    assert exact.classes.tolist() == [1, 0]
    # the global ranking (entropy by max) breaks ties the same way
    assert select_regions(stats, "entropy", 4, aggregation="max",
                          tie_tolerance=0.0).ids.tolist() == [2, 1, 4, 3]
    # within the tolerance (1e-3 nats by default), region 4 (2e-4 below ln 2) ties as well
    # and is the most uncertain on average
    tolerant = select_regions(stats, "entropy", 4, aggregation="max")
    assert tolerant.ids.tolist() == [4, 2, 1, 3]
    np.testing.assert_allclose(tolerant.scores, [H_049, LN2, LN2, H_02], rtol=1e-5)
    # the order is the same every time, and the same whatever order the pixels came in
    shuffled = RegionStats(4, 2)
    order = np.random.default_rng(0).permutation(12)
    p_fg = np.array([0.5, 0.99, 0.99, 0.5, 0.7, 0.7, 0.2, 0.2, 0.2, 0.49, 0.49, 0.49])
    shuffled.add(np.repeat([1, 2, 3, 4], 3)[order], np.stack([1 - p_fg, p_fg], 1)[order])
    assert select_regions(shuffled, "entropy", 4, aggregation="max").ids.tolist() == [4, 2, 1, 3]
    with pytest.raises(ActiveLearningError, match="tie_tolerance"):
        select_regions(stats, "oreal", 2, tie_tolerance=-1.0)


def test_tie_groups_start_at_their_best_score():
    groups = acquisition._tie_groups(np.array([1.0, 0.9995, 0.999, 0.9984, 0.998, 0.5]), 1e-3)
    # 0.9984 is more than 1e-3 below 1.0 and starts a group with 0.998
    assert groups.tolist() == [0, 0, 0, 1, 1, 2]
    assert acquisition._tie_groups(np.array([2.0, 2.0, 1.0]), 0.0).tolist() == [0, 0, 1]
    assert acquisition._tie_groups(np.array([-np.inf, -np.inf]), 1e-3).tolist() == [0, 0]
    assert acquisition._tie_groups(np.zeros(0), 1e-3).size == 0


# --- glass --------------------------------------------------------------------------------------


def test_glass_pixels_bright_and_unsaturated_by_hand():
    colours = {
        (255, 255, 255): True,  # clear glass
        (250, 240, 245): True,  # darkest 240 > 0.8 * 255, saturation 10 / 250 = 0.04
        (250, 230, 240): False,  # saturation 20 / 250 = 0.08: pale stain
        (240, 200, 220): False,  # darkest 200 < 204: not bright
        (200, 120, 170): False,  # eosin
    }
    image = np.concatenate([np.full((6, 6, 3), colour, np.uint8) for colour in colours], axis=1)
    glass = acquisition.glass_pixels(image)
    for index, expected in enumerate(colours.values()):
        assert bool(glass[2:4, 6 * index + 2:6 * index + 4].all()) is expected
        assert bool(glass[2:4, 6 * index + 2:6 * index + 4].any()) is expected
    with pytest.raises(ActiveLearningError, match="uint8 RGB"):
        acquisition.glass_pixels(np.zeros((4, 4), np.uint8))


def test_glass_fraction_per_region_by_hand_and_merged():
    ids = np.array([1, 1, 1, 1, 2, 2, 3])
    glass = np.array([1, 1, 1, 0, 0, 0, 1], bool)
    probs = np.full((7, 2), 0.5, np.float32)
    first = RegionStats(4, 2).add(ids[:4], probs[:4], glass=glass[:4])
    first.merge(RegionStats(4, 2).add(ids[4:], probs[4:], glass=glass[4:]))
    np.testing.assert_allclose(first.glass_fraction, [0, 0.75, 0, 1, 0])
    assert first.glass_checked.tolist() == [0, 4, 2, 1, 0]
    # without images nothing is checked, and nothing is left out for glass
    plain = stats_of(ids, probs)
    assert plain.glass_checked.sum() == 0
    assert "glass_regions" not in select_regions(plain, "entropy", 3).params
    with pytest.raises(ActiveLearningError, match="glass has 3 values"):
        RegionStats(4, 2).add(ids, probs, glass=glass[:3])


def _tissue_with_glass_gaps():
    """A 160 x 160 tissue at 1 um/px crossed by gaps of glass: a crack of 8 x 120 px and squares
    of 24 x 24 px (576 um^2 each, far below the tissue mask's 20,000 um^2 floor)."""
    rng = np.random.default_rng(0)
    image = np.empty((160, 160, 3), np.float32)
    image[:] = (200, 120, 170)
    image[:, :80] = (150, 80, 160)  # hematoxylin-rich half
    gaps = np.zeros((160, 160), bool)
    for top, left in ((8, 8), (8, 120), (90, 40), (120, 120), (80, 96)):
        gaps[top:top + 24, left:left + 24] = True
    gaps[50:58, 20:140] = True  # a crack
    image[gaps] = (246, 245, 246)
    image = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
    return image, gaps


def test_small_glass_gaps_count_as_tissue_but_are_never_suggested():
    from napari_wsl_al.core.al.superpixels import SuperpixelConfig, superpixels_for_image
    from napari_wsl_al.core.data.tissue import tissue_mask_from_rgb

    image, gaps = _tissue_with_glass_gaps()
    tissue = tissue_mask_from_rgb(image, pixel_um=1.0).mask
    assert tissue.all()  # the gaps are too small to be glass for the tissue mask
    regions = superpixels_for_image(image, SuperpixelConfig(region_px=16), tissue).astype(np.int64)
    n_regions = int(regions.max())
    # a model that hesitates on glass (p = 0.5) and is sure of the tissue (0.9 / 0.1)
    p_fg = np.where(gaps, 0.5, np.where(np.arange(160)[None, :] < 80, 0.9, 0.1))
    probs = np.stack([1 - p_fg, p_fg]).astype(np.float32)
    stats = RegionStats(n_regions, 2).add_image(regions, probs, image=image)
    gap_share = (np.bincount(regions.ravel(), gaps.ravel(), n_regions + 1)
                 / np.maximum(np.bincount(regions.ravel(), minlength=n_regions + 1), 1))
    glassy = np.flatnonzero(stats.glass_fraction > 0.5)
    # the glass test finds the gaps, rims included
    assert set(np.flatnonzero(gap_share >= 0.8).tolist()) <= set(glassy.tolist())
    assert (gap_share[glassy] > 0.4).all()
    assert (stats.glass_fraction[gap_share == 0] == 0).all()
    assert glassy.size >= 6  # the squares and the crack make regions of their own
    for strategy in ("oreal", "entropy", "bvsb", "pixbal", "random"):
        before = select_regions(stats, strategy, 10, rng=0, max_glass_fraction=None)
        after = select_regions(stats, strategy, 10, rng=0)
        assert after.params["glass_regions"] == glassy.size
        assert not np.isin(after.ids, glassy).any(), strategy
        assert (gap_share[after.ids] < 0.5).all(), strategy
        assert len(after) == 10
        if strategy != "random":
            # without the glass test, the uncertain glass is suggested
            assert np.isin(before.ids, glassy).sum() >= 3, strategy
    everything = select_regions(stats, "entropy", n_regions)
    assert sorted(everything.ids.tolist()) == sorted(
        set(range(1, n_regions + 1)) - set(glassy.tolist()))
    config = SelectionConfig(strategy="entropy", n=n_regions, max_glass_fraction=None)
    assert len(select_with_config(stats, config)) == n_regions
    with pytest.raises(ActiveLearningError, match="max_glass_fraction"):
        SelectionConfig(max_glass_fraction=1.5)
    with pytest.raises(ActiveLearningError, match="pixels, the region map"):
        RegionStats(n_regions, 2).add_image(regions, probs, image=image[:64, :64])


# --- protected regions (Label_prop, WACV'21 Alg. 1) ---------------------------------------------


@pytest.mark.parametrize("strategy", ["entropy", "oreal", "random", "bvsb"])
def test_protected_regions_are_picked_only_when_nothing_else_is_left(strategy):
    # entropy falls with the id: 1 is the most uncertain
    p_fg = [0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15]
    stats = stats_of(np.arange(1, 9), [[1 - p, p] for p in p_fg])
    protected = [1, 2, 5]
    few = select_regions(stats, strategy, 3, protected=protected, labelled=[8], rng=3)
    assert not np.isin(few.ids, protected).any()
    assert few.params["protected"] == 3
    if strategy == "entropy":
        assert few.ids.tolist() == [3, 4, 6]
    # 4 open regions (3, 4, 6, 7) for 6 picks: all of them, then the best protected ones
    many = select_regions(stats, strategy, 6, protected=protected, labelled=[8], rng=3)
    assert set(many.ids[:4].tolist()) == {3, 4, 6, 7}
    assert set(many.ids[4:].tolist()) <= set(protected)
    if strategy != "random":
        assert many.ids[4:].tolist() == [1, 2]
    assert (many.classes[4:] == -1).all()
    # a labelled protected region is still never picked
    assert 5 not in select_regions(stats, strategy, 8, protected=protected,
                                   labelled=[5], rng=3).ids.tolist()


def test_protected_regions_keep_the_no_adjacent_rule():
    p_fg = [0.5, 0.45, 0.4, 0.35]
    stats = stats_of([1, 2, 3, 4], [[1 - p, p] for p in p_fg])
    chain = np.array([[1, 2], [2, 3], [3, 4]])
    picks = select_regions(stats, "entropy", 4, adjacency=chain, no_adjacent=True,
                           protected=[2, 4])
    # 1 and 3 are open; 3 blocks 2 and 4 (its neighbours) even though they are protected
    assert picks.ids.tolist() == [1, 3]
    with pytest.raises(ActiveLearningError, match="protected ids"):
        select_regions(stats, "entropy", 2, protected=[9])
