"""Stage-2 pixel pseudo labels from region labels: prototypes, label localisation and expansion.

Hwang et al., "Active learning for semantic segmentation with multi-class label query"
(``al-segmentation-multiclass-label-query-neurips2023``), Sec. 3.3. With the model of stage 1:

prototypes (Eq. 8)
    in every labelled region ``s`` with classes ``Y``, the feature vector ``f(x*_{s,c})`` at the
    pixel with the highest ``P(c|x)``, for each ``c in Y`` (the first pixel in batch order on ties);
intra-region label localisation (Eq. 11)
    every pixel of ``s`` takes the class of its nearest prototype by cosine similarity (a
    single-class region takes its class);
prototype-adaptive thresholds (Eq. 12)
    ``alpha_c(s)``, the median (mean of the two middle values for an even count) of the cosine to
    the prototype of ``c`` over the pixels of ``s`` labelled ``c``; ``+inf`` when no pixel is, so
    that ``c`` is not spread from ``s``;
label expansion (Eq. 13)
    a pixel of an unlabelled region next to labelled regions takes, among the prototypes ``(s, c)``
    of all its labelled neighbours ``s`` whose cosine exceeds ``alpha_c(s)``, the class of the one
    with the highest cosine; it stays unlabelled when none exceeds its threshold.

Features ``f(x)`` are the decoder features the last 1x1 classifier reads
(``JointModel(..., return_features=True)["seg_features"]``). Inputs follow
:mod:`napari_wsl_al.core.al.losses` (``superpixels`` ``(B, H, W)``, ``region_classes``
``(R+1, K)`` bool; row 0 and all-False rows are unlabelled); numpy arrays are accepted. Nothing
here needs a gradient; every function runs under ``torch.no_grad``. Pixels without a pseudo
label are ``IGNORE_INDEX`` (255).

Label_prop (Belharbi et al., WACV'21, ``al-joint-cls-seg-weak-annotator-wacv2021``, Alg. 1)
works on whole images of a patch data set instead: :func:`label_prop_set` keeps the set ``P``
of pseudo-labelled images (the ``k`` nearest unlabelled images of the same image-level class
to every labelled one, by the Jensen-Shannon divergence of their colour histograms), and
:func:`label_prop_mask` turns the segmentation head's output on one of them into its
pseudo-segmentation ``m-hat``, trained with weight ``lambda`` (Eq. 1,
:func:`~napari_wsl_al.core.al.train.label_prop_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import ActiveLearningError
from ..models.joint import IGNORE_INDEX
from .acquisition import label_prop_candidates
from .losses import check_region_labels, region_argmax_pixels

#: Label_prop's neighbours per labelled image, the WACV'21 value (Sec. 4, "we set k = 40").
LABEL_PROP_K = 40

#: Label_prop's weight ``lambda`` of the pseudo-labelled images in Eq. 1, the WACV'21 value for
#: GlaS (0.001 for CUB; the authors recommend small values).
LABEL_PROP_LAMBDA = 0.1

__all__ = [
    "LABEL_PROP_K",
    "LABEL_PROP_LAMBDA",
    "expand_labels",
    "label_prop_mask",
    "label_prop_set",
    "localize_labels",
    "prototype_thresholds",
    "prototypes",
    "stage2_labels",
]


@dataclass(frozen=True)
class _Localized:
    """Prototypes and localised labels of the ``M`` labelled regions of a batch (``N`` pixels)."""

    shape: tuple[int, int, int]
    ids: torch.Tensor  # (B*H*W,) region id of every pixel
    is_labelled: torch.Tensor  # (R+1,) bool
    unit_features: torch.Tensor  # (B*H*W, D) features of unit length
    labelled_pixels: torch.Tensor  # (N,) flat index of the pixels of labelled regions
    region_ids: torch.Tensor  # (M,)
    prototypes: torch.Tensor  # (M, K, D) features at the prototypical pixels (0 if none)
    unit_prototypes: torch.Tensor  # (M, K, D)
    valid: torch.Tensor  # (M, K) bool, c in Y and a prototype exists
    labels: torch.Tensor  # (N,) int64 localised label, IGNORE_INDEX without a candidate
    thresholds: torch.Tensor  # (M, K) alpha_c(s), +inf where undefined


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.ascontiguousarray(value))


def _median_by_group(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Median of cosines ``values`` (in ``[-1, 1]``) in each of ``n_groups`` groups.

    One sort on ``4 * group + value`` (float64) orders by group, then by value; an empty group
    gets ``+inf``.
    """
    order = torch.argsort(groups.to(torch.float64) * 4 + values.to(torch.float64))
    padded = torch.cat([values[order], values.new_full((1,), float("inf"))])
    counts = torch.bincount(groups, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    last = values.numel()
    lower = torch.where(counts > 0, starts + (counts - 1) // 2, last)
    upper = torch.where(counts > 0, starts + counts // 2, last)
    return (padded[lower] + padded[upper]) / 2


def _localize(features, probs, superpixels, region_classes) -> _Localized:
    features, probs = _as_tensor(features), _as_tensor(probs)
    superpixels, region_classes = _as_tensor(superpixels), _as_tensor(region_classes)
    if probs.ndim != 4:
        raise ActiveLearningError(f"probs must be (B, K, H, W), not of shape {tuple(probs.shape)}")
    batch, n_classes, height, width = probs.shape
    if features.ndim != 4 or (features.shape[0], *features.shape[2:]) != (batch, height, width):
        raise ActiveLearningError(
            f"features of shape {tuple(features.shape)} do not fit probabilities of shape "
            f"{tuple(probs.shape)}", hint="give both maps at the same (B, H, W)")
    region_classes = check_region_labels(superpixels, region_classes, n_classes,
                                         (batch, height, width))
    device = superpixels.device
    flat_features = features.to(device).permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float()
    flat_probs = probs.to(device).permute(0, 2, 3, 1).reshape(-1, n_classes).float()
    ids = superpixels.reshape(-1).to(torch.int64)
    is_labelled = region_classes.any(1)
    is_labelled[0] = False
    labelled_pixels = torch.nonzero(is_labelled[ids]).reshape(-1)
    region_ids, region_index = torch.unique(ids[labelled_pixels], return_inverse=True)
    n_regions, n_pixels = region_ids.numel(), labelled_pixels.numel()

    proto_pixel = region_argmax_pixels(flat_probs[labelled_pixels], region_index, n_regions)
    valid = region_classes[region_ids] & (proto_pixel < n_pixels)
    proto_flat = labelled_pixels[proto_pixel.clamp_max(n_pixels - 1)]
    proto = flat_features[proto_flat] * valid[..., None]
    unit_features = F.normalize(flat_features, dim=1)
    unit_proto = F.normalize(proto, dim=2)

    own_features = unit_features[labelled_pixels]
    cosine = torch.stack(
        [(own_features * unit_proto[region_index, c]).sum(1) for c in range(n_classes)], 1)
    candidate = valid[region_index]
    scores = cosine.masked_fill(~candidate, float("-inf"))
    best = scores.argmax(1)
    has_candidate = candidate.any(1)
    labels = torch.where(has_candidate, best, IGNORE_INDEX)
    group = region_index * n_classes + best
    chosen = scores.gather(1, best[:, None])[:, 0]
    thresholds = _median_by_group(
        chosen[has_candidate], group[has_candidate], n_regions * n_classes
    ).reshape(n_regions, n_classes)
    return _Localized(
        shape=(batch, height, width), ids=ids, is_labelled=is_labelled,
        unit_features=unit_features, labelled_pixels=labelled_pixels, region_ids=region_ids,
        prototypes=proto, unit_prototypes=unit_proto, valid=valid, labels=labels,
        thresholds=thresholds,
    )


def _empty_labels(local: _Localized) -> torch.Tensor:
    return torch.full_like(local.ids, IGNORE_INDEX)


def _localized_map(local: _Localized) -> torch.Tensor:
    out = _empty_labels(local)
    out[local.labelled_pixels] = local.labels
    return out


def _check_adjacency(adjacency, n_ids: int, device) -> torch.Tensor:
    adjacency = _as_tensor(adjacency).to(device=device, dtype=torch.int64)
    if adjacency.ndim != 2 or adjacency.shape[1] != 2:
        raise ActiveLearningError(
            f"adjacency must be (E, 2) region id pairs, not of shape {tuple(adjacency.shape)}")
    if adjacency.numel() and (int(adjacency.min()) < 0 or int(adjacency.max()) >= n_ids):
        raise ActiveLearningError(
            f"adjacency holds region ids outside 0..{n_ids - 1}",
            hint="use the region ids that index region_classes")
    return adjacency


def _expanded_map(local: _Localized, adjacency) -> torch.Tensor:
    ids, device = local.ids, local.ids.device
    n_ids = local.is_labelled.numel()
    adjacency = _check_adjacency(adjacency, n_ids, device)
    source = torch.cat([adjacency[:, 0], adjacency[:, 1]])
    target = torch.cat([adjacency[:, 1], adjacency[:, 0]])
    local_index = torch.full((n_ids,), -1, dtype=torch.int64, device=device)
    local_index[local.region_ids] = torch.arange(local.region_ids.numel(), device=device)
    keep = (local_index[source] >= 0) & ~local.is_labelled[target] & (target != 0)
    n_sources = local.region_ids.numel()
    pairs = torch.unique(target[keep] * n_sources + local_index[source[keep]])
    pair_target, pair_source = pairs // n_sources, pairs % n_sources

    pair_count = torch.bincount(pair_target, minlength=n_ids)
    pair_start = torch.cumsum(pair_count, 0) - pair_count
    target_pixels = torch.nonzero(pair_count[ids] > 0).reshape(-1)
    degree = pair_count[ids[target_pixels]]
    pixel_of_pair = torch.repeat_interleave(torch.arange(target_pixels.numel(), device=device),
                                            degree)
    first_of_pixel = torch.repeat_interleave(torch.cumsum(degree, 0) - degree, degree)
    rank = torch.arange(pixel_of_pair.numel(), device=device) - first_of_pixel
    region = pair_source[pair_start[ids[target_pixels]][pixel_of_pair] + rank]

    n_classes = local.thresholds.shape[1]
    features = local.unit_features[target_pixels[pixel_of_pair]]
    best = torch.full((target_pixels.numel(), n_classes), float("-inf"), device=device)
    for c in range(n_classes):
        cosine = (features * local.unit_prototypes[region, c]).sum(1)
        relevant = torch.where(cosine > local.thresholds[region, c], cosine, float("-inf"))
        best[:, c] = best[:, c].scatter_reduce(0, pixel_of_pair, relevant, reduce="amax")
    assigned = best.amax(1) > float("-inf")
    out = _empty_labels(local)
    out[target_pixels[assigned]] = best[assigned].argmax(1)
    return out


@torch.no_grad()
def prototypes(features, probs, superpixels, region_classes) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature vector at the prototypical pixel of every labelled region and class (Eq. 8).

    Parameters
    ----------
    features : Tensor or ndarray
        ``(B, D, H, W)`` decoder features ``f(x)``.
    probs : Tensor or ndarray
        ``(B, K, H, W)`` class probabilities ``P(c|x)`` of the stage-1 model.
    superpixels : Tensor or ndarray
        ``(B, H, W)`` region id of every pixel (0: no region).
    region_classes : Tensor or ndarray
        ``(R+1, K)`` multi-hot label of every region id.

    Returns
    -------
    table : Tensor
        ``(R+1, K, D)`` float32 prototype ``f(x*_{s,c})``; zeros where ``valid`` is False.
    valid : Tensor
        ``(R+1, K)`` bool, True for ``c in Y`` of the labelled regions present in the batch.
    """
    local = _localize(features, probs, superpixels, region_classes)
    n_ids = local.is_labelled.numel()
    n_classes, depth = local.valid.shape[1], local.unit_features.shape[1]
    table = local.unit_features.new_zeros((n_ids, n_classes, depth))
    valid = torch.zeros((n_ids, n_classes), dtype=torch.bool, device=table.device)
    table[local.region_ids] = local.prototypes
    valid[local.region_ids] = local.valid
    return table, valid


@torch.no_grad()
def prototype_thresholds(features, probs, superpixels, region_classes) -> torch.Tensor:
    """Prototype-adaptive thresholds ``alpha_c(s)`` (Eq. 12), ``(R+1, K)`` float32.

    The median cosine to the prototype of ``c`` over the pixels of ``s`` localised as ``c``;
    ``+inf`` for classes outside ``Y``, classes no pixel was localised to, unlabelled regions and
    regions absent from the batch. Parameters as in :func:`prototypes`.
    """
    local = _localize(features, probs, superpixels, region_classes)
    table = torch.full((local.is_labelled.numel(), local.valid.shape[1]), float("inf"),
                       device=local.ids.device)
    table[local.region_ids] = local.thresholds
    return table


@torch.no_grad()
def localize_labels(features, probs, superpixels, region_classes) -> torch.Tensor:
    """Intra-region label localisation (Eq. 11): ``(B, H, W)`` int64 pixel labels.

    Inside every labelled region, ``argmax_{c in Y} cos(f(x), f(x*_{s,c}))`` (the lowest class on
    ties); a single-class region takes its class; ``IGNORE_INDEX`` elsewhere. Parameters as in
    :func:`prototypes`.
    """
    local = _localize(features, probs, superpixels, region_classes)
    return _localized_map(local).reshape(local.shape)


@torch.no_grad()
def expand_labels(features, probs, superpixels, region_classes, adjacency) -> torch.Tensor:
    """Label expansion into unlabelled neighbours of labelled regions (Eq. 12-13).

    A pixel of an unlabelled region (id > 0, all-False row) adjacent to labelled regions takes
    ``argmax_{c in Y-hat(x)} cos(f(x), f(x*_{s,c}))`` with
    ``Y-hat(x) = {c in Y(s) : cos(f(x), f(x*_{s,c})) > alpha_c(s)}``; when it has several labelled
    neighbours, the prototypes of all of them compete and the highest cosine wins. Pixels with an
    empty ``Y-hat(x)``, of labelled regions, or of regions without labelled neighbours are
    ``IGNORE_INDEX``.

    Parameters
    ----------
    features, probs, superpixels, region_classes :
        See :func:`prototypes`.
    adjacency : Tensor or ndarray
        ``(E, 2)`` pairs of adjacent region ids (either order, repeats allowed).

    Returns
    -------
    Tensor
        ``(B, H, W)`` int64 pixel labels.
    """
    local = _localize(features, probs, superpixels, region_classes)
    return _expanded_map(local, adjacency).reshape(local.shape)


@torch.no_grad()
def stage2_labels(features, probs, superpixels, region_classes, adjacency=None) -> torch.Tensor:
    """Stage-2 pseudo labels: localised labels in labelled regions, expanded ones next to them.

    :func:`localize_labels` inside labelled regions and :func:`expand_labels` in their
    unlabelled neighbours (the two never overlap); without ``adjacency``, localisation only.

    Returns
    -------
    Tensor
        ``(B, H, W)`` int64 pixel labels, ``IGNORE_INDEX`` where there is none.
    """
    local = _localize(features, probs, superpixels, region_classes)
    labels = _localized_map(local)
    if adjacency is not None:
        expanded = _expanded_map(local, adjacency)
        labels = torch.where(labels == IGNORE_INDEX, expanded, labels)
    return labels.reshape(local.shape)


def label_prop_set(histograms, image_classes, labelled, pseudo, k: int = LABEL_PROP_K) -> np.ndarray:
    """The pseudo-labelled images of a round, ``P_r = (P_{r-1} - L_r) + U''_r`` (WACV'21 Alg. 1).

    ``U''_r`` holds, for every labelled image, its ``k`` nearest unlabelled images of the same
    image-level class (:func:`~napari_wsl_al.core.al.acquisition.label_prop_candidates`: the
    Jensen-Shannon divergence of colour histograms summed over the planes). Unlabelled means
    in ``U``: neither labelled nor already pseudo-labelled, since ``D = L + U + P`` are
    disjoint. An image of ``P_{r-1}`` that the oracle labelled since (``labelled``) leaves ``P``.

    Parameters
    ----------
    histograms : array, shape (M, P, b)
        Colour histograms of the M images.
    image_classes : array of int, shape (M,)
        Image-level class of every image (known, or predicted by the classification head).
    labelled : array of bool, shape (M,)
        ``L_r``: images holding an oracle label.
    pseudo : array of bool, shape (M,), or None
        ``P_{r-1}`` (None: empty).
    k : int
        Neighbours per labelled image.

    Returns
    -------
    ndarray of bool, shape (M,)
        ``P_r``.
    """
    labelled = np.asarray(labelled, dtype=bool).reshape(-1)
    previous = np.zeros(labelled.size, bool) if pseudo is None else np.asarray(pseudo, bool)
    if previous.shape != labelled.shape:
        raise ActiveLearningError(
            f"{previous.size} pseudo-labelled flags for {labelled.size} images",
            hint="give one flag per image")
    kept = previous & ~labelled
    pool = np.flatnonzero(~kept)
    histograms = np.asarray(histograms)
    classes = np.asarray(image_classes).reshape(-1)
    if histograms.shape[0] != labelled.size or classes.size != labelled.size:
        raise ActiveLearningError(
            f"{histograms.shape[0]} histograms and {classes.size} classes for {labelled.size} "
            "images: expected one of each per image")
    picks, _, _ = label_prop_candidates(histograms[pool], classes[pool], labelled[pool], k)
    kept[pool[picks]] = True
    return kept


def label_prop_mask(probs, foreground_class: int | None = None, background: int = 0) -> np.ndarray:
    """Pseudo-segmentation ``m-hat`` of one image from the segmentation head (WACV'21 Label_prop).

    With ``foreground_class`` (the segmentation class of the image's image-level class), a
    pixel is that class where the foreground ``1 - P(background)`` is above 0.5, and background
    elsewhere: the binary mask the paper's segmentation head gives, in the image's class.
    Without it, every pixel takes its most probable class.

    Parameters
    ----------
    probs : array of float, shape (K, H, W)
        Softmax probabilities of the segmentation head.
    foreground_class : int, optional
        Class of the image's foreground, in ``1..K-1``.
    background : int
        Index of the background class.

    Returns
    -------
    ndarray of uint8, shape (H, W)
        Classes; ``IGNORE_INDEX`` where the probabilities are not finite.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ActiveLearningError(
            f"probs must be (K, H, W) with K >= 2 classes, not of shape {probs.shape}")
    n_classes = probs.shape[0]
    finite = np.isfinite(probs).all(axis=0)
    if foreground_class is None:
        mask = np.nan_to_num(probs, nan=-1.0).argmax(axis=0).astype(np.uint8)
    else:
        if not 0 <= foreground_class < n_classes or foreground_class == background:
            raise ActiveLearningError(
                f"foreground class {foreground_class} is not one of the {n_classes - 1} "
                f"foreground classes")
        foreground = probs[background] < 0.5
        mask = np.where(foreground, foreground_class, background).astype(np.uint8)
    mask[~finite] = IGNORE_INDEX
    return mask
