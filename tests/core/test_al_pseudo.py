"""Stage-2 pseudo labels (NeurIPS'23 Eq. 8, 11-13) on toy 2-D feature maps; Label_prop's
pseudo-labelled set and masks (WACV'21 Alg. 1) on hand-made histograms and maps."""

import math

import numpy as np
import pytest
import torch

from napari_wsl_al.core.al.pseudo import (
    LABEL_PROP_K,
    LABEL_PROP_LAMBDA,
    expand_labels,
    label_prop_mask,
    label_prop_set,
    localize_labels,
    prototype_thresholds,
    prototypes,
    stage2_labels,
)
from napari_wsl_al.core.errors import ActiveLearningError
from napari_wsl_al.core.models.joint import IGNORE_INDEX

X = IGNORE_INDEX
UNIFORM = [1 / 3, 1 / 3, 1 / 3]

# One row of pixels: (region id, feature f(x), P(.|x)). Region 1 is labelled {0, 1}, region 4
# {2}, region 7 {0} (absent); regions 2, 3 are unlabelled, 2 next to 1 and 4, 3 next to none.
PIXELS = [
    (1, (1.0, 0.0), [0.9, 0.05, 0.05]),  # prototype of class 0 in region 1
    (1, (0.8, 0.6), [0.5, 0.4, 0.1]),
    (1, (0.6, -0.8), [0.5, 0.2, 0.3]),
    (1, (0.0, 1.0), [0.1, 0.8, 0.1]),  # prototype of class 1 in region 1
    (1, (0.6, 0.8), [0.3, 0.6, 0.1]),
    (2, (0.9, 0.1), UNIFORM),  # cos 0.994 to proto 0 > 0.8
    (2, (0.1, 0.9), UNIFORM),  # cos 0.994 to proto 1 > 0.9
    (2, (0.7, 0.7), UNIFORM),  # cos 0.707 to protos 0 and 1: below both thresholds
    (2, (0.95, -0.3122), UNIFORM),  # cos 0.95 to proto 0, 0.820 to proto 2: class 0
    (2, (0.85, -0.5268), UNIFORM),  # cos 0.85 to proto 0, 0.931 to proto 2: class 2
    (3, (1.0, 0.0), UNIFORM),
    (4, (0.6, -0.8), [0.0, 0.0, 1.0]),  # prototype of class 2 in region 4
    (4, (0.0, -1.0), [0.2, 0.2, 0.6]),
    (4, (1.0, 0.0), [0.5, 0.1, 0.4]),
    (0, (1.0, 0.0), UNIFORM),
]
REGION_CLASSES = [(), {0, 1}, (), (), {2}, (), (), {0}]
ADJACENCY = [[1, 2], [2, 4], [2, 1], [1, 4], [0, 1], [1, 6], [7, 3]]


def toy(pixels=PIXELS, rows=REGION_CLASSES, n_classes=3):
    superpixels = torch.tensor([[[p[0] for p in pixels]]])
    features = torch.tensor([p[1] for p in pixels]).T.reshape(1, -1, 1, len(pixels))
    probs = torch.tensor([p[2] for p in pixels]).T.reshape(1, -1, 1, len(pixels))
    table = torch.zeros(len(rows), n_classes, dtype=torch.bool)
    for region, members in enumerate(rows):
        table[region, list(members)] = True
    return features, probs, superpixels, table


def test_prototypes_sit_at_the_most_confident_pixels():
    table, valid = prototypes(*toy())
    assert table.shape == (8, 3, 2) and valid.shape == (8, 3)
    assert valid.nonzero().tolist() == [[1, 0], [1, 1], [4, 2]]
    assert table[1, 0].tolist() == [1.0, 0.0]
    assert table[1, 1].tolist() == [0.0, 1.0]
    assert table[4, 2].tolist() == pytest.approx([0.6, -0.8])
    assert torch.all(table[~valid] == 0)


def test_localize_takes_the_nearest_prototype_inside_labelled_regions():
    labels = localize_labels(*toy())
    assert labels.dtype == torch.int64 and labels.shape == (1, 1, len(PIXELS))
    assert labels[0, 0].tolist() == [0, 0, 0, 1, 1] + [X] * 6 + [2, 2, 2] + [X]


def test_localize_uses_cosine_not_euclidean_distance():
    pixels = [(1, (1.0, 0.0), [0.9, 0.1]), (1, (5.0, 5.0), [0.1, 0.9]),
              (1, (10.0, 1.0), [0.5, 0.5]), (1, (1.0, 3.0), [0.5, 0.5])]
    labels = localize_labels(*toy(pixels, [(), {0, 1}], 2))
    assert labels[0, 0].tolist() == [0, 1, 0, 1]


def test_localize_never_picks_a_class_outside_the_answer():
    pixels = [(1, (1.0, 0.0), [0.6, 0.0, 0.4]), (1, (0.0, 1.0), [0.1, 0.0, 0.9]),
              (1, (0.1, 0.0), [0.0, 1.0, 0.0])]
    labels = localize_labels(*toy(pixels, [(), {0, 2}], 3))
    assert labels[0, 0].tolist() == [0, 2, 0]


def test_thresholds_are_medians_of_the_localised_cosines():
    alpha = prototype_thresholds(*toy())
    inf = math.inf
    assert alpha.shape == (8, 3)
    # region 1, class 0: cosines {1, 0.8, 0.6}; class 1: {1, 0.8} -> mean of the middle two
    assert alpha[1].tolist() == pytest.approx([0.8, 0.9, inf])
    assert alpha[4].tolist() == pytest.approx([inf, inf, 0.8])  # {1, 0.8, 0.6}
    for region in (0, 2, 3, 5, 6, 7):
        assert alpha[region].tolist() == [inf, inf, inf]


def test_threshold_of_an_even_group_and_tied_prototypes():
    pixels = [(1, (1.0, 0.0), [0.9, 0.1]), (1, (0.6, 0.8), [0.5, 0.5]),
              (1, (0.8, 0.6), [0.5, 0.5]), (1, (0.28, 0.96), [0.5, 0.5]),
              (1, (0.0, 1.0), [0.6, 0.4]), (2, (3.0, 4.0), [0.5, 0.5])]
    # class 1 prototype: the first of the tied pixels, (0.6, 0.8); class 0 keeps only (1, 0);
    # class 1 cosines 1, 0.96, 0.936, 0.8 -> (0.96 + 0.936) / 2 (0.88 with the second tied pixel)
    alpha = prototype_thresholds(*toy(pixels, [(), {0, 1}, {1}], 2))
    assert alpha[1].tolist() == pytest.approx([1.0, 0.948])
    assert alpha[2].tolist() == pytest.approx([math.inf, 1.0])
    assert localize_labels(*toy(pixels, [(), {0, 1}, {1}], 2))[0, 0].tolist() == [0, 1, 1, 1, 1, 1]


def test_expand_only_into_adjacent_unlabelled_regions_above_threshold():
    labels = expand_labels(*toy(), ADJACENCY)
    assert labels.shape == (1, 1, len(PIXELS))
    # region 2 only; region 3 has no labelled neighbour in the batch, region 0 is no region,
    # region 4 is labelled; pixel 7 is below every threshold; pixel 9 passes class 0 (0.85 > 0.8)
    # and class 2 of region 4 (0.931 > 0.8) and takes the higher cosine
    assert labels[0, 0].tolist() == [X] * 5 + [0, 1, X, 0, 2] + [X] * 5


def test_expand_needs_the_cosine_strictly_above_the_threshold():
    pixels = [(1, (1.0, 0.0), [0.9, 0.1]), (1, (0.8, 0.6), [0.5, 0.5]),
              (1, (0.6, -0.8), [0.5, 0.5]), (1, (0.0, 1.0), [0.1, 0.9]),
              (2, (0.8, 0.6), [0.5, 0.5]), (2, (0.81, 0.59), [0.5, 0.5])]
    # class 0 cosines {1, 0.8, 0.6}: alpha_0 = 0.8, met but not exceeded by the copy of (0.8, 0.6)
    labels = expand_labels(*toy(pixels, [(), {0, 1}, ()], 2), [[2, 1]])
    assert labels[0, 0].tolist() == [X, X, X, X, X, 0]


def test_expand_without_adjacent_pairs_labels_nothing():
    features, probs, superpixels, table = toy()
    assert torch.all(expand_labels(features, probs, superpixels, table,
                                   np.zeros((0, 2), np.int64)) == X)
    assert torch.all(expand_labels(features, probs, superpixels, table, [[3, 2]]) == X)


def test_stage2_combines_localisation_and_expansion():
    labels = stage2_labels(*toy(), torch.tensor(ADJACENCY))
    expected = [0, 0, 0, 1, 1, 0, 1, X, 0, 2, X, 2, 2, 2, X]
    assert labels[0, 0].tolist() == expected
    assert stage2_labels(*toy())[0, 0].tolist() == localize_labels(*toy())[0, 0].tolist()


def test_stage2_accepts_numpy_and_batches():
    features, probs, superpixels, table = toy()
    two_features = np.concatenate([features.numpy(), features.numpy()[..., ::-1]])
    two_probs = np.concatenate([probs.numpy(), probs.numpy()[..., ::-1]])
    shifted = superpixels.numpy()[..., ::-1] + 10 * (superpixels.numpy()[..., ::-1] > 0)
    two_superpixels = np.concatenate([superpixels.numpy(), shifted])
    rows = np.zeros((18, 3), bool)
    rows[:8] = table.numpy()
    rows[10:18] = table.numpy()
    rows[10] = False
    adjacency = np.array(ADJACENCY + [[11, 12], [12, 14]])
    labels = stage2_labels(two_features, two_probs, two_superpixels, rows, adjacency)
    expected = [0, 0, 0, 1, 1, 0, 1, X, 0, 2, X, 2, 2, 2, X]
    assert labels[0, 0].tolist() == expected
    assert labels[1, 0].tolist() == expected[::-1]


def test_nan_probabilities_leave_the_region_unlabelled():
    pixels = [(1, (1.0, 0.0), [math.nan, math.nan]), (1, (0.0, 1.0), [math.nan, math.nan]),
              (2, (1.0, 0.0), [0.8, 0.2]), (3, (1.0, 0.0), [0.5, 0.5])]
    features, probs, superpixels, table = toy(pixels, [(), {0, 1}, {0}, ()], 2)
    labels = stage2_labels(features, probs, superpixels, table, [[1, 3]])
    assert labels[0, 0].tolist() == [X, X, 0, X]
    _, valid = prototypes(features, probs, superpixels, table)
    assert valid[1].tolist() == [False, False]


def test_nothing_labelled_gives_nothing():
    features, probs, superpixels, table = toy(rows=[()] * 8)
    assert torch.all(stage2_labels(features, probs, superpixels, table, ADJACENCY) == X)
    table_, valid = prototypes(features, probs, superpixels, table)
    assert not valid.any() and torch.all(table_ == 0)


@pytest.mark.parametrize("change, match", [
    (lambda f, p, s, t: (f[..., :3], p, s, t), "do not fit"),
    (lambda f, p, s, t: (f[0], p, s, t), "do not fit"),
    (lambda f, p, s, t: (f, p[0], s, t), "probs"),
    (lambda f, p, s, t: (f, p, s, t[:, :2]), "region_classes"),
    (lambda f, p, s, t: (f, p, s, t[:4]), "region ids"),
])
def test_bad_maps_raise(change, match):
    with pytest.raises(ActiveLearningError, match=match):
        stage2_labels(*change(*toy()))


@pytest.mark.parametrize("adjacency, match", [
    (np.zeros((3,), np.int64), "E, 2"),
    (np.zeros((2, 3), np.int64), "E, 2"),
    (np.array([[1, 8]]), "outside"),
    (np.array([[-1, 2]]), "outside"),
])
def test_bad_adjacency_raises(adjacency, match):
    with pytest.raises(ActiveLearningError, match=match):
        expand_labels(*toy(), adjacency)


def test_adjacency_may_name_the_last_region_id():
    labels = expand_labels(*toy(), np.array([[7, 2]]))
    assert torch.all(labels == X)


def test_row_zero_never_labels_pixels_without_a_region():
    features, probs, superpixels, table = toy()
    table[0] = True
    labels = stage2_labels(features, probs, superpixels, table, ADJACENCY)
    assert labels[0, 0].tolist() == [0, 0, 0, 1, 1, 0, 1, X, 0, 2, X, 2, 2, 2, X]


def test_threshold_with_negative_cosines():
    pixels = [(1, (1.0, 0.0), [0.9, 0.1]), (1, (0.0, 1.0), [0.2, 0.8]),
              (1, (-1.0, -0.2), [0.5, 0.5])]
    # the last pixel: cos -0.981 to (1, 0), -0.196 to (0, 1) -> class 1
    alpha = prototype_thresholds(*toy(pixels, [(), {0, 1}], 2))
    assert alpha[1].tolist() == pytest.approx([1.0, (1.0 - 0.2 / math.sqrt(1.04)) / 2])


# --- Label_prop (WACV'21) -----------------------------------------------------------------------

# One plane of two bins per image. 0 and 6 are labelled (6 was pseudo-labelled before the oracle
# answered on it); 4 was pseudo-labelled in the previous round; 3 looks like 0 but is another
# class.
HISTOGRAMS = np.array([[[1.0, 0.0]], [[0.9, 0.1]], [[0.5, 0.5]], [[1.0, 0.0]], [[0.92, 0.08]],
                       [[0.0, 1.0]], [[0.95, 0.05]]])
IMAGE_CLASSES = [0, 0, 0, 1, 0, 0, 0]
LABELLED = [True, False, False, False, False, False, True]
PREVIOUS = [False, False, False, False, True, False, True]


def test_label_prop_set_takes_the_nearest_unlabelled_images_of_the_same_class():
    # k = 1: the nearest of 0 is 4 (0.92, 0.08), but 4 is already in P, so not in U: 1 instead;
    # the nearest of 6 in U is 1 too; 3 never (another class); 6 leaves P (now labelled)
    one = label_prop_set(HISTOGRAMS, IMAGE_CLASSES, LABELLED, PREVIOUS, k=1)
    assert np.flatnonzero(one).tolist() == [1, 4]
    # k = 2: then 2 (0.5, 0.5), nearer than 5 (0, 1) to both
    assert np.flatnonzero(label_prop_set(HISTOGRAMS, IMAGE_CLASSES, LABELLED, PREVIOUS,
                                         k=2)).tolist() == [1, 2, 4]
    # a large k takes every unlabelled image of class 0, never one of class 1
    assert np.flatnonzero(label_prop_set(HISTOGRAMS, IMAGE_CLASSES, LABELLED, PREVIOUS,
                                         k=LABEL_PROP_K)).tolist() == [1, 2, 4, 5]
    # without a previous P, 4 is in U and is the nearest of both 0 and 6
    assert np.flatnonzero(label_prop_set(HISTOGRAMS, IMAGE_CLASSES, LABELLED, None,
                                         k=1)).tolist() == [4]
    # nothing labelled: P keeps what it had, less nothing
    assert np.flatnonzero(label_prop_set(HISTOGRAMS, IMAGE_CLASSES, [False] * 7, PREVIOUS,
                                         k=3)).tolist() == [4, 6]
    with pytest.raises(ActiveLearningError, match="pseudo-labelled flags"):
        label_prop_set(HISTOGRAMS, IMAGE_CLASSES, LABELLED, PREVIOUS[:3], k=1)
    with pytest.raises(ActiveLearningError, match="one of each per image"):
        label_prop_set(HISTOGRAMS[:5], IMAGE_CLASSES, LABELLED, None, k=1)
    assert (LABEL_PROP_K, LABEL_PROP_LAMBDA) == (40, 0.1)  # the paper's values for GlaS


def test_label_prop_mask_is_the_foreground_in_the_image_class():
    # P(background) 0.7, 0.5, 0.3 and NaN over four pixels
    probs = np.array([[[0.7, 0.5, 0.3, np.nan]], [[0.2, 0.1, 0.6, 0.5]], [[0.1, 0.4, 0.1, 0.5]]])
    np.testing.assert_array_equal(label_prop_mask(probs, 2), [[0, 0, 2, X]])
    np.testing.assert_array_equal(label_prop_mask(probs, 1), [[0, 0, 1, X]])
    # without an image class: the most probable class of every pixel
    np.testing.assert_array_equal(label_prop_mask(probs), [[0, 0, 1, X]])
    assert label_prop_mask(probs, 2).dtype == np.uint8
    with pytest.raises(ActiveLearningError, match="foreground class 0"):
        label_prop_mask(probs, 0)
    with pytest.raises(ActiveLearningError, match="foreground class 3"):
        label_prop_mask(probs, 3)
    with pytest.raises(ActiveLearningError, match="K >= 2"):
        label_prop_mask(probs[0])
