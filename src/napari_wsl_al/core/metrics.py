"""Evaluation metrics: classification error, confusion matrices, F1+/F1-/IoU, AL-curve AUC, Gini.

Plain numpy. Pixel metrics take binary masks (0 = background, 1 = foreground); pixels whose
ground truth is negative (:data:`IGNORE_INDEX`, e.g. padding) are left out everywhere.
The localisation figures follow Belharbi et al. (Max-Min uncertainty, section 3.2, Eq. 14-15):
F1+ is the Dice index of the foreground masks, F1- that of the background masks. The paper
does not say how images are aggregated; here both are computed per image and averaged over
images by default (pass ``per_image=False`` to pool all pixels of all images instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: Ground-truth value of pixels without ground truth.
IGNORE_INDEX = -1


def classification_error(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of misclassified samples, in ``[0, 1]`` (the paper reports it x100).

    Returns NaN for no samples.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.shape[0]} labels but {y_pred.shape[0]} predictions")
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true != y_pred))


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts; rows are true classes, columns predictions.

    Entries with a negative true class (:data:`IGNORE_INDEX`) are skipped.
    """
    y_true = np.asarray(y_true).ravel().astype(np.int64)
    y_pred = np.asarray(y_pred).ravel().astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.shape[0]} labels but {y_pred.shape[0]} predictions")
    keep = y_true >= 0
    y_true, y_pred = y_true[keep], y_pred[keep]
    if y_true.size and (y_true.max() >= n_classes or y_pred.min() < 0 or y_pred.max() >= n_classes):
        raise ValueError(f"class indices must be in [0, {n_classes})")
    counts = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def pixel_confusion_matrix(
    gt_masks: Iterable[np.ndarray], pred_masks: Iterable[np.ndarray], n_classes: int = 2
) -> np.ndarray:
    """Confusion matrix summed over all pixels of all images (images may differ in size)."""
    total = np.zeros((n_classes, n_classes), dtype=np.int64)
    for gt, pred in zip(gt_masks, pred_masks, strict=True):
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"mask shapes differ: {gt.shape} vs {pred.shape}")
        total += confusion_matrix(gt, pred, n_classes)
    return total


def dice(gt: np.ndarray, pred: np.ndarray, empty: float = 1.0) -> float:
    """Dice index (F1) ``2|G & S| / (|G| + |S|)`` of two boolean masks.

    Parameters
    ----------
    gt, pred : array of bool
        Ground-truth and predicted masks of one region, same shape.
    empty : float
        Value when both masks are empty (the prediction is right: 1 by default).
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    denominator = int(gt.sum()) + int(pred.sum())
    if denominator == 0:
        return float(empty)
    return 2.0 * int(np.logical_and(gt, pred).sum()) / denominator


def _valid_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: {gt.shape} vs {pred.shape}")
    valid = gt >= 0
    return gt[valid] > 0, pred[valid] > 0


def foreground_background_f1(
    gt_masks: Iterable[np.ndarray],
    pred_masks: Iterable[np.ndarray],
    per_image: bool = True,
    empty: float = 1.0,
) -> dict[str, float]:
    """F1+ (Dice of the foreground) and F1- (Dice of the background) of binary masks.

    Parameters
    ----------
    gt_masks, pred_masks : iterables of array
        Per image, ground truth (0 / 1, negative = ignored) and prediction (0 / 1 or bool).
    per_image : bool
        Average the per-image scores (default) or pool every pixel of every image into one
        score.
    empty : float
        Score of an image whose ground truth and prediction both lack the region.

    Returns
    -------
    dict
        ``{"f1_pos": F1+, "f1_neg": F1-, "n_images": N}``; F1 values in ``[0, 1]``, NaN when
        there is no image.
    """
    scores_pos, scores_neg = [], []
    intersection_pos = intersection_neg = size_pos = size_neg = 0
    n_images = 0
    for gt, pred in zip(gt_masks, pred_masks, strict=True):
        gt, pred = _valid_pair(gt, pred)
        if per_image:
            scores_pos.append(dice(gt, pred, empty))
            scores_neg.append(dice(~gt, ~pred, empty))
        else:
            intersection_pos += int(np.sum(gt & pred))
            intersection_neg += int(np.sum(~gt & ~pred))
            size_pos += int(gt.sum()) + int(pred.sum())
            size_neg += int((~gt).sum()) + int((~pred).sum())
        n_images += 1
    if n_images == 0:
        return {"f1_pos": float("nan"), "f1_neg": float("nan"), "n_images": 0}
    if per_image:
        return {
            "f1_pos": float(np.mean(scores_pos)),
            "f1_neg": float(np.mean(scores_neg)),
            "n_images": n_images,
        }
    return {
        "f1_pos": 2.0 * intersection_pos / size_pos if size_pos else float(empty),
        "f1_neg": 2.0 * intersection_neg / size_neg if size_neg else float(empty),
        "n_images": n_images,
    }


def all_ones_baseline(
    gt_masks: Iterable[np.ndarray], per_image: bool = True, empty: float = 1.0
) -> dict[str, float]:
    """F1+ / F1- of the trivial prediction "every pixel is foreground" (the paper's lower bound)."""
    gt_masks = [np.asarray(gt) for gt in gt_masks]
    return foreground_background_f1(
        gt_masks, [np.ones(gt.shape, dtype=bool) for gt in gt_masks], per_image, empty
    )


def pixel_average_precision(
    gt_masks: Iterable[np.ndarray], score_maps: Iterable[np.ndarray]
) -> dict[str, float]:
    """Pixel average precision (PxAP) of continuous foreground maps, pooled over images.

    The area under the precision-recall curve of "foreground where the score is at least
    ``s``" over every threshold ``s``: ``sum_k (R_k - R_{k-1}) P_k`` with the pixels of all
    images ranked by score and pixels of equal score taken together (as scikit-learn's
    ``average_precision_score``). It does not depend on a threshold (Choe et al., "Evaluating
    weakly supervised object localization methods right", CVPR 2020, Sec. 4.1). A map that
    carries no information about the foreground scores the foreground's share of the pixels,
    returned as ``prevalence``.

    Parameters
    ----------
    gt_masks : iterable of array
        Per image, ground truth (0 / 1, negative = ignored).
    score_maps : iterable of array
        Per image, the foreground score of every pixel (same shape).

    Returns
    -------
    dict
        ``{"pxap": AP, "prevalence": foreground fraction, "n_pixels": N}``; AP is NaN when
        no valid pixel is foreground.
    """
    truths, scores = [], []
    for gt, score in zip(gt_masks, score_maps, strict=True):
        gt = np.asarray(gt)
        score = np.asarray(score, dtype=np.float64)
        if gt.shape != score.shape:
            raise ValueError(f"mask and map shapes differ: {gt.shape} vs {score.shape}")
        valid = gt >= 0
        truths.append(gt[valid] > 0)
        scores.append(score[valid])
    truth = np.concatenate(truths) if truths else np.zeros(0, dtype=bool)
    score = np.concatenate(scores) if scores else np.zeros(0)
    positives = int(truth.sum())
    n_pixels = int(truth.size)
    prevalence = positives / n_pixels if n_pixels else float("nan")
    if positives == 0:
        return {"pxap": float("nan"), "prevalence": prevalence, "n_pixels": n_pixels}
    order = np.argsort(-score)  # any order within equal scores: each run is one threshold
    score, truth = score[order], truth[order]
    true_positives = np.cumsum(truth)
    # the last pixel of every run of equal scores: one threshold each
    last = np.flatnonzero(np.r_[score[1:] != score[:-1], True])
    true_positives = true_positives[last]
    precision = true_positives / (last + 1)
    recall = true_positives / positives
    gained = np.diff(np.r_[0.0, recall])
    return {"pxap": float(np.sum(gained * precision)), "prevalence": prevalence,
            "n_pixels": n_pixels}


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """Intersection over union of every class from a confusion matrix; NaN for absent classes."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in ground truth or prediction."""
    values = iou_per_class(confusion)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def dice_per_class(confusion: np.ndarray) -> np.ndarray:
    """Dice (F1) of every class from a confusion matrix; NaN for absent classes."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    sizes = confusion.sum(axis=0) + confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 0, 2.0 * intersection / np.where(sizes > 0, sizes, 1.0), np.nan)


def al_curve_auc(budgets: Sequence[float], scores: Sequence[float], normalize: bool = True) -> float:
    """Area under an active-learning curve (score vs. labelling budget), trapezoid rule.

    Parameters
    ----------
    budgets : sequence of float
        Budget of each round (samples, regions, clicks ...), increasing.
    scores : sequence of float
        Metric after each round (e.g. Dice in ``[0, 1]``).
    normalize : bool
        Divide by the budget range, so a constant curve at ``v`` has AUC ``v`` and a curve of
        scores in ``[0, 1]`` has an AUC in ``[0, 1]``.

    Returns
    -------
    float
        The area; for a single round, that round's score when normalised.
    """
    x = np.asarray(budgets, dtype=np.float64).ravel()
    y = np.asarray(scores, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{x.size} budgets but {y.size} scores")
    if x.size == 0:
        return float("nan")
    if np.any(np.diff(x) < 0):
        raise ValueError("budgets must be increasing")
    if x.size == 1:
        return float(y[0]) if normalize else 0.0
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    if not normalize:
        return area
    span = x[-1] - x[0]
    return area / span if span > 0 else float(np.mean(y))


def gini_index(counts: Sequence[float], normalize: bool = False) -> float:
    """Gini index of a class distribution (0 = perfectly balanced).

    ``G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))``, computed from the sorted counts.
    Its maximum, when one class has everything, is ``(n - 1) / n``; ``normalize=True``
    rescales it to 1. OREAL reports ``1 - G``.

    Parameters
    ----------
    counts : sequence of float
        Non-negative amount per class (labelled pixels, regions, images).
    normalize : bool
        Divide by ``(n - 1) / n``.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64).ravel())
    if np.any(x < 0):
        raise ValueError("counts must be non-negative")
    n = x.size
    total = x.sum()
    if n < 2 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    gini = float(2.0 * np.sum(ranks * x) / (n * total) - (n + 1.0) / n)
    if normalize:
        gini *= n / (n - 1.0)
    return max(0.0, gini)
