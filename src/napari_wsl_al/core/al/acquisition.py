"""Acquisition functions: score superpixels (or whole images) and pick the ones to label next.

Region-level strategies (superpixels of slides or patches) work on :class:`RegionStats`, a
streaming accumulation of per-pixel model outputs into per-region sums and maxima:

``random``
    Uniformly random regions.
``entropy``
    Predictive entropy ``H(x) = -sum_c p_c log p_c`` aggregated per region by its mean (default)
    or its maximum.
``mc_dropout``
    Mean over the region of the MC-dropout variance (the variance over the T stochastic passes of
    each class probability, averaged over the classes), as in the WACV'21 joint model.
``bvsb``
    Best-versus-second-best ``u(x) = p_sb / p_b`` (Hwang et al., NeurIPS'23, Eq. 2) averaged over
    the region.
``classbal``
    Class-balanced BvSB of Cai et al. (CVPR'21), the ClassBal baseline of NeurIPS'23: the mean
    BvSB, min-max normalised over the regions, times ``exp(-P_dom(D(s)))`` where ``D(s)`` is the
    region's dominant predicted class and ``P_dom(c)`` the fraction of regions whose dominant
    predicted class is ``c``.
``pixbal``
    PixBal (NeurIPS'23, Eq. 3-4): ``a(s) = 1/|s| sum_x u(x) / (1 + nu P(c_b(x)))^2`` with the label
    distribution ``P(c)`` the mean predicted probability of ``c`` over all pixels of all regions.
``oreal``
    One-vs-rest entropy ``H_c(x) = -p_c log p_c - (1 - p_c) log(1 - p_c)`` aggregated per region by
    its maximum (default) or mean (Wu et al., OREAL); selection is class balanced (Alg. 1,
    ``ITEMSPERCLASS``) with background oversampling and context sampling, see
    :func:`select_regions`.

Entropies use the natural logarithm. Image-level strategies for patch data sets
(:func:`score_images`) and the Label_prop neighbour search of the WACV'21 paper
(:func:`colour_histograms`, :func:`js_divergence`, :func:`label_prop_candidates`) complete the
module.

Three rules hold for every strategy in :func:`select_regions`:

* **no glass**: a region that is mostly glass (:func:`glass_pixels`, the glass test of
  :mod:`napari_wsl_al.core.data.tissue`, counted per region when the images are given to
  :meth:`RegionStats.add_image`) is never suggested, however uncertain the model is there;
* **ties broken by the other aggregation**: regions ranked by a maximum (entropy or OREAL with
  ``max``, which saturates near ``ln 2`` on tissue edges) that tie are ordered by their mean,
  and the other way round; then by id;
* **protected regions last**: regions passed as ``protected`` (those of Label_prop's
  pseudo-labelled images, WACV'21 Alg. 1) are picked only once no other candidate is left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import ActiveLearningError

#: Region-level acquisition functions understood by :func:`score_regions` / :func:`select_regions`.
STRATEGIES = ("random", "entropy", "mc_dropout", "bvsb", "classbal", "pixbal", "oreal")

#: Image-level acquisition functions understood by :func:`score_images`.
IMAGE_STRATEGIES = ("random", "entropy", "mc_dropout")

#: How per-pixel uncertainties become one number per region.
AGGREGATIONS = ("mean", "max")

#: Aggregation used when none is given: the OREAL paper's max, the mean elsewhere.
DEFAULT_AGGREGATION = {"entropy": "mean", "oreal": "max"}

#: PixBal's class-balancing strength (the NeurIPS'23 value for VOC, OREAL's for medical data).
DEFAULT_NU = 12.0

#: Pixels processed at once by :meth:`RegionStats.add` (bounds its temporary memory).
BLOCK_PIXELS = 1 << 18

#: Histogram values held at once by :func:`js_divergence` (bounds its temporary memory).
JS_CHUNK_VALUES = 1 << 22

#: Glass test of :func:`glass_pixels`, the defaults of
#: :func:`~napari_wsl_al.core.data.tissue.tissue_mask_from_rgb`: the darkest channel above this
#: fraction of 255 ...
GLASS_BRIGHTNESS = 0.8
#: ... and an HSV saturation at most this (the ceiling of the tissue mask's adaptive threshold).
GLASS_SATURATION = 0.06

#: A region with more than this fraction of glass pixels is never suggested.
MAX_GLASS_FRACTION = 0.5

#: Scores (nats) closer than this to the best of their group count as tied and are ordered by
#: :func:`tie_scores`: near ``ln 2`` a max-aggregated entropy differs between regions only in
#: its fourth decimal (0.001 nats is a change of about 0.002 in the probability there).
TIE_TOLERANCE = 1e-3

_TINY = np.finfo(np.float32).tiny


def _xlogx(values: np.ndarray) -> np.ndarray:
    """``x log x`` element-wise, with ``0 log 0 = 0``."""
    return values * np.log(np.maximum(values, _TINY))


def _mc_variance(mc_probs: np.ndarray) -> np.ndarray:
    """(N,) variance over the T passes of (T, N, K) probabilities, averaged over the K classes."""
    n_passes, _, n_classes = mc_probs.shape
    squares = mc_probs - mc_probs.sum(axis=0) / np.float32(n_passes)
    squares *= squares
    per_class = squares.sum(axis=0)
    total = per_class[:, 0].copy()
    for class_index in range(1, n_classes):
        total += per_class[:, class_index]
    return total.astype(np.float64) / (n_passes * n_classes)


def glass_pixels(image) -> np.ndarray:
    """Which pixels of an RGB image are glass: bright and unsaturated.

    The glass test of :func:`~napari_wsl_al.core.data.tissue.tissue_mask_from_rgb` without its
    size floor: a pixel is glass when its darkest channel is above ``GLASS_BRIGHTNESS * 255``
    and its HSV saturation is at most :data:`GLASS_SATURATION`, tested on the pixel and on the
    3 x 3 mean around it (glass if either passes): the mean keeps noisy glass, the pixel keeps
    the one-pixel rim of a gap that the mean blurs into the tissue beside it. Gaps of glass
    between pieces of tissue, too small for the tissue mask to leave out, are glass here.

    Parameters
    ----------
    image : array (H, W, 3) of uint8
        RGB pixels.

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    from scipy import ndimage

    from ..data.tissue import hsv_saturation

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ActiveLearningError(
            f"the image is {image.dtype} of shape {image.shape}; expected (H, W, 3) uint8 RGB",
            hint="convert grayscale, RGBA or 16-bit images to 8-bit RGB first")

    def bright_and_unsaturated(rgb: np.ndarray) -> np.ndarray:
        darkest = np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
        return (darkest > GLASS_BRIGHTNESS * 255.0) & (hsv_saturation(rgb) <= GLASS_SATURATION)

    pixels = image.astype(np.float32)
    smooth = ndimage.uniform_filter(pixels, size=(3, 3, 1), mode="nearest")
    return bright_and_unsaturated(pixels) | bright_and_unsaturated(smooth)


def _per_pixel(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sums divided by pixel counts per region (0 where a region has none)."""
    if sums.ndim == 2:
        counts = counts[:, None]
    return np.divide(sums, counts, out=np.zeros(sums.shape), where=counts > 0)


class RegionStats:
    """Per-region statistics of a segmentation model's output, accumulated chunk by chunk.

    Regions are numbered ``1..n_regions`` in one flat id space; id 0 is "no region" and is
    ignored, as are pixels whose probabilities are not finite. Every array is indexed by region
    id (row 0 stays empty).

    Parameters
    ----------
    n_regions : int
        Largest region id.
    n_classes : int
        Segmentation classes K (class 0 is the background); at least 2.

    Attributes
    ----------
    pixel_count : ndarray of int64, shape (R + 1,)
        Pixels seen per region.
    entropy_sum, entropy_max : ndarray of float64, shape (R + 1,)
        Sum and maximum of the pixels' predictive entropy.
    bvsb_sum_by_class : ndarray of float64, shape (R + 1, K)
        Sum of the BvSB ratio ``p_sb / p_b`` over the pixels whose most probable class is c.
    predicted_count : ndarray of int64, shape (R + 1, K)
        Pixels whose most probable class is c.
    probability_sum : ndarray of float64, shape (R + 1, K)
        Sum of the predicted probability of class c.
    ovr_entropy_sum, ovr_entropy_max : ndarray of float64, shape (R + 1, K)
        Sum and maximum of the one-vs-rest entropy of class c.
    mc_variance_sum : ndarray of float64, shape (R + 1,)
        Sum of the pixels' MC-dropout variance (mean over the classes).
    mc_pixel_count : ndarray of int64, shape (R + 1,)
        Pixels that came with MC-dropout passes.
    glass_count : ndarray of int64, shape (R + 1,)
        Pixels found to be glass (:func:`glass_pixels`), among those added with their image or
        a glass mask.
    glass_checked : ndarray of int64, shape (R + 1,)
        Pixels added with their image or a glass mask.
    """

    def __init__(self, n_regions: int, n_classes: int):
        if n_regions < 0:
            raise ActiveLearningError(f"n_regions must be >= 0, not {n_regions}")
        if n_classes < 2:
            raise ActiveLearningError(
                f"n_classes must be >= 2, not {n_classes}",
                hint="a segmentation model has at least a background and one other class")
        self.n_regions = int(n_regions)
        self.n_classes = int(n_classes)
        rows = self.n_regions + 1
        shape = (rows, self.n_classes)
        self.pixel_count = np.zeros(rows, dtype=np.int64)
        self.entropy_sum = np.zeros(rows)
        self.entropy_max = np.zeros(rows)
        self.bvsb_sum_by_class = np.zeros(shape)
        self.predicted_count = np.zeros(shape, dtype=np.int64)
        self.probability_sum = np.zeros(shape)
        self.ovr_entropy_sum = np.zeros(shape)
        self.ovr_entropy_max = np.zeros(shape)
        self.mc_variance_sum = np.zeros(rows)
        self.mc_pixel_count = np.zeros(rows, dtype=np.int64)
        self.glass_count = np.zeros(rows, dtype=np.int64)
        self.glass_checked = np.zeros(rows, dtype=np.int64)

    def add(self, region_ids, probs, mc_probs=None, glass=None) -> RegionStats:
        """Accumulate one chunk of pixels (a tile, an image).

        Parameters
        ----------
        region_ids : array of int, shape (N,)
            Region id of every pixel (0: none).
        probs : array of float, shape (N, K)
            Softmax probabilities of every pixel.
        mc_probs : array of float, shape (T, N, K), optional
            Probabilities of T MC-dropout passes over the same pixels.
        glass : array of bool, shape (N,), optional
            Which pixels are glass (:func:`glass_pixels`); counted per region, also where the
            probabilities are not finite.

        Returns
        -------
        RegionStats
            ``self``, for chaining.
        """
        ids = np.asarray(region_ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ActiveLearningError(
                f"region ids must be integers, not {ids.dtype}",
                hint="pass the superpixel id map, not a float map")
        ids = ids.reshape(-1).astype(np.int64, copy=False)
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (ids.size, self.n_classes):
            raise ActiveLearningError(
                f"probs has shape {probs.shape}; expected ({ids.size}, {self.n_classes}) "
                "(one row of class probabilities per region id)")
        if mc_probs is not None:
            mc_probs = np.asarray(mc_probs, dtype=np.float32)
            if mc_probs.ndim != 3 or mc_probs.shape[1:] != probs.shape or mc_probs.shape[0] < 1:
                raise ActiveLearningError(
                    f"mc_probs has shape {mc_probs.shape}; expected (T, {ids.size}, "
                    f"{self.n_classes}) with T >= 1 MC-dropout passes")
        if ids.size and (ids.min() < 0 or ids.max() > self.n_regions):
            raise ActiveLearningError(
                f"region ids span {ids.min()}..{ids.max()}, outside 0..{self.n_regions}",
                hint="the superpixel map does not match these statistics; recompute it")
        if glass is not None:
            glass = np.asarray(glass, dtype=bool).reshape(-1)
            if glass.size != ids.size:
                raise ActiveLearningError(
                    f"glass has {glass.size} values; expected one per region id ({ids.size})")
            np.add.at(self.glass_checked, ids, 1)
            np.add.at(self.glass_count, ids[glass], 1)
            self.glass_checked[0] = self.glass_count[0] = 0
        for start in range(0, ids.size, BLOCK_PIXELS):
            block = slice(start, start + BLOCK_PIXELS)
            self._add_block(ids[block], probs[block],
                            None if mc_probs is None else mc_probs[:, block])
        return self

    def _add_block(self, ids: np.ndarray, probs: np.ndarray, mc_probs: np.ndarray | None) -> None:
        class_probs = np.ascontiguousarray(probs.T)
        keep = (ids > 0) & np.isfinite(class_probs).all(axis=0)
        mc_variance = None if mc_probs is None else _mc_variance(mc_probs)
        if mc_variance is not None:
            keep &= np.isfinite(mc_variance)
        if not keep.all():
            ids, class_probs = ids[keep], class_probs[:, keep]
            mc_variance = None if mc_variance is None else mc_variance[keep]
        np.clip(class_probs, 0.0, 1.0, out=class_probs)
        x_log_x = _xlogx(class_probs)
        entropy = np.negative(x_log_x.sum(axis=0), dtype=np.float64)
        x_log_x += _xlogx(1.0 - class_probs)
        best, second = class_probs[0].copy(), np.zeros(ids.size, np.float32)
        best_class = np.zeros(ids.size, np.int64)
        for class_index in range(1, self.n_classes):
            values = class_probs[class_index]
            np.maximum(second, np.minimum(best, values), out=second)
            best_class[values > best] = class_index
            np.maximum(best, values, out=best)
        bvsb = np.divide(second, best, out=np.zeros(ids.size, np.float32), where=best > 0)

        np.add.at(self.pixel_count, ids, 1)
        np.add.at(self.entropy_sum, ids, entropy)
        np.maximum.at(self.entropy_max, ids, entropy)
        flat_ids = ids * self.n_classes
        np.add.at(self.bvsb_sum_by_class.reshape(-1), flat_ids + best_class,
                  bvsb.astype(np.float64))
        np.add.at(self.predicted_count.reshape(-1), flat_ids + best_class, 1)
        for class_index in range(self.n_classes):
            flat = flat_ids + class_index
            ovr_entropy = np.negative(x_log_x[class_index], dtype=np.float64)
            np.add.at(self.probability_sum.reshape(-1), flat,
                      class_probs[class_index].astype(np.float64))
            np.add.at(self.ovr_entropy_sum.reshape(-1), flat, ovr_entropy)
            np.maximum.at(self.ovr_entropy_max.reshape(-1), flat, ovr_entropy)
        if mc_variance is not None:
            np.add.at(self.mc_variance_sum, ids, mc_variance)
            np.add.at(self.mc_pixel_count, ids, 1)

    def add_image(self, region_map, probs, mc_probs=None, image=None) -> RegionStats:
        """Accumulate one image of class maps: ``region_map`` ``(H, W)``, ``probs``
        ``(K, H, W)``, ``mc_probs`` ``(T, K, H, W)``; pixels of region 0 are skipped.

        With ``image``, the ``(H, W, 3)`` uint8 RGB the maps were computed on, the glass pixels
        of every region are counted too (:func:`glass_pixels`).
        """
        region_map = np.asarray(region_map)
        ids = region_map.reshape(-1)
        keep = ids > 0
        probs = np.asarray(probs)
        flat = probs.reshape(probs.shape[0], -1).T[keep]
        mc_flat = None
        if mc_probs is not None:
            mc_probs = np.asarray(mc_probs)
            mc_flat = mc_probs.reshape(mc_probs.shape[0], mc_probs.shape[1], -1)
            mc_flat = mc_flat.transpose(0, 2, 1)[:, keep]
        glass = None
        if image is not None:
            if np.shape(image)[:2] != region_map.shape:
                raise ActiveLearningError(
                    f"the image is {np.shape(image)[:2]} pixels, the region map "
                    f"{region_map.shape}", hint="give the image the maps were computed on")
            glass = glass_pixels(image).reshape(-1)[keep]
        return self.add(ids[keep], flat, mc_probs=mc_flat, glass=glass)

    def merge(self, other: RegionStats) -> RegionStats:
        """Add another accumulation over the same regions (another worker, another slide part).

        Merges in place and returns ``self``.
        """
        if (other.n_regions, other.n_classes) != (self.n_regions, self.n_classes):
            raise ActiveLearningError(
                f"cannot merge statistics of {other.n_regions} regions x {other.n_classes} "
                f"classes into {self.n_regions} regions x {self.n_classes} classes")
        for name in ("pixel_count", "entropy_sum", "bvsb_sum_by_class", "predicted_count",
                     "probability_sum", "ovr_entropy_sum", "mc_variance_sum", "mc_pixel_count",
                     "glass_count", "glass_checked"):
            getattr(self, name)[...] += getattr(other, name)
        for name in ("entropy_max", "ovr_entropy_max"):
            np.maximum(getattr(self, name), getattr(other, name), out=getattr(self, name))
        return self

    @property
    def has_pixels(self) -> np.ndarray:
        """Bool (R + 1,): regions with at least one pixel (never row 0: id 0 is ignored)."""
        return self.pixel_count > 0

    @property
    def has_mc(self) -> bool:
        """Whether any MC-dropout passes were added."""
        return bool(self.mc_pixel_count.any())

    @property
    def glass_fraction(self) -> np.ndarray:
        """(R + 1,) fraction of a region's checked pixels that are glass (0 where none checked)."""
        return _per_pixel(self.glass_count, self.glass_checked)

    @property
    def mean_entropy(self) -> np.ndarray:
        """(R + 1,) mean predictive entropy per region (0 where no pixels)."""
        return _per_pixel(self.entropy_sum, self.pixel_count)

    @property
    def mean_bvsb(self) -> np.ndarray:
        """(R + 1,) mean BvSB ratio ``p_sb / p_b`` per region (Eq. 2 averaged)."""
        return _per_pixel(self.bvsb_sum_by_class.sum(axis=1), self.pixel_count)

    @property
    def mean_probability(self) -> np.ndarray:
        """(R + 1, K) mean predicted probability of every class per region."""
        return _per_pixel(self.probability_sum, self.pixel_count)

    @property
    def mc_mean_variance(self) -> np.ndarray:
        """(R + 1,) mean MC-dropout variance per region (0 where no MC passes)."""
        return _per_pixel(self.mc_variance_sum, self.mc_pixel_count)

    @property
    def dominant_class(self) -> np.ndarray:
        """(R + 1,) most frequent predicted class per region (lowest on ties; -1: no pixels)."""
        dominant = self.predicted_count.argmax(axis=1)
        dominant[~self.has_pixels] = -1
        return dominant

    @property
    def class_distribution(self) -> np.ndarray:
        """(K,) label distribution ``P(y = c)`` of PixBal's Eq. 3: mean probability over pixels."""
        total = self.pixel_count.sum()
        if total == 0:
            return np.zeros(self.n_classes)
        return self.probability_sum.sum(axis=0) / total

    def ovr_entropy(self, aggregation: str = "max") -> np.ndarray:
        """(R + 1, K) one-vs-rest entropy of every class per region, by max or mean."""
        _check_aggregation(aggregation)
        if aggregation == "max":
            return self.ovr_entropy_max.copy()
        return _per_pixel(self.ovr_entropy_sum, self.pixel_count)


@dataclass(frozen=True, eq=False)
class Selection:
    """Regions picked for labelling, best first.

    Attributes
    ----------
    ids : ndarray of int64
        Region ids in order of selection.
    scores : ndarray of float64
        The score each pick was ranked by (for OREAL, its class's one-vs-rest entropy).
    strategy : str
        Acquisition function.
    params : dict
        The parameters it ran with (JSON-able).
    classes : ndarray of int64
        The class each pick was selected for (OREAL); -1 for picks not made for a class:
        other strategies, OREAL context picks and OREAL's fill-up from the global ranking.
    """

    ids: np.ndarray
    scores: np.ndarray
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.ids.size)


@dataclass(frozen=True)
class SelectionConfig:
    """How to pick the next batch of regions (saved with every round).

    Attributes
    ----------
    strategy : str
        One of :data:`STRATEGIES`.
    n : int
        Regions per batch.
    aggregation : {"mean", "max"} or None
        Per-region aggregation of entropy and OREAL (None: the strategy's default).
    nu : float
        PixBal's class-balancing strength.
    items_per_class : tuple of int or None
        OREAL: explicit number of picks per class (summing to ``n``); None computes them with
        Alg. 1 from the labelled counts per class.
    n_background : int or None
        OREAL: the labelled count used for the background class in Alg. 1 (0 oversamples the
        background, as in the paper); None uses its real count.
    context : bool
        OREAL: pick background regions next to the selected foreground regions first.
    no_adjacent : bool
        No two picks share a border.
    seed : int
        Seed of the random generator (random strategy, reproducibility).
    max_glass_fraction : float or None
        Regions with more glass than this are never picked (None: no glass test).
    """

    strategy: str = "oreal"
    n: int = 20
    aggregation: str | None = None
    nu: float = DEFAULT_NU
    items_per_class: tuple[int, ...] | None = None
    n_background: int | None = 0
    context: bool = True
    no_adjacent: bool = False
    seed: int = 0
    max_glass_fraction: float | None = MAX_GLASS_FRACTION

    def __post_init__(self):
        _check_strategy(self.strategy, STRATEGIES)
        if self.max_glass_fraction is not None and not 0 <= self.max_glass_fraction <= 1:
            raise ActiveLearningError(
                f"max_glass_fraction must be in 0..1, not {self.max_glass_fraction}")
        if self.n < 0:
            raise ActiveLearningError(f"n must be >= 0, not {self.n}")
        if self.aggregation is not None:
            _check_aggregation(self.aggregation)
        if self.nu < 0:
            raise ActiveLearningError(f"nu must be >= 0, not {self.nu}")
        if self.n_background is not None and self.n_background < 0:
            raise ActiveLearningError(f"n_background must be >= 0, not {self.n_background}")
        if self.items_per_class is not None:
            object.__setattr__(self, "items_per_class", tuple(int(v) for v in self.items_per_class))

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        if self.items_per_class is not None:
            data["items_per_class"] = list(self.items_per_class)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> SelectionConfig:
        """Inverse of :meth:`to_json`; missing keys take their defaults."""
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ActiveLearningError(
                f"unknown selection settings {unknown}",
                hint="remove them, or update napari-wsl-al if they come from a newer version")
        return cls(**data)


def _check_strategy(strategy: str, allowed: tuple[str, ...]) -> None:
    if strategy not in allowed:
        raise ActiveLearningError(f"unknown acquisition strategy {strategy!r}",
                                  hint=f"choose one of {', '.join(allowed)}")


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ActiveLearningError(f"unknown aggregation {aggregation!r}",
                                  hint=f"choose one of {', '.join(AGGREGATIONS)}")


def _aggregation_for(strategy: str, aggregation: str | None) -> str | None:
    """The aggregation a strategy runs with (None for those that have none)."""
    if aggregation is not None:
        _check_aggregation(aggregation)
    if strategy not in DEFAULT_AGGREGATION:
        return None
    return aggregation or DEFAULT_AGGREGATION[strategy]


def score_regions(
    stats: RegionStats,
    strategy: str,
    *,
    aggregation: str | None = None,
    nu: float = DEFAULT_NU,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Usefulness of every region for labelling (higher: more useful).

    Parameters
    ----------
    stats : RegionStats
        The accumulated model outputs.
    strategy : str
        One of :data:`STRATEGIES` (see the module docstring for the equations).
    aggregation : {"mean", "max"}, optional
        Entropy and OREAL only: per-region aggregation (default: mean for entropy, max for OREAL).
    nu : float
        PixBal's class-balancing strength.
    rng : numpy Generator or int, optional
        Random strategy: the generator or its seed.

    Returns
    -------
    ndarray of float64, shape (R + 1,)
        Scores; ``-inf`` for id 0 and for regions without pixels. OREAL's score is a region's
        one-vs-rest entropy for its dominant predicted class.
    """
    _check_strategy(strategy, STRATEGIES)
    aggregation = _aggregation_for(strategy, aggregation)
    present = stats.has_pixels
    if strategy == "random":
        scores = np.random.default_rng(rng).random(stats.n_regions + 1)
    elif strategy == "entropy":
        scores = stats.mean_entropy if aggregation == "mean" else stats.entropy_max.copy()
    elif strategy == "mc_dropout":
        if not stats.has_mc:
            raise ActiveLearningError(
                "mc_dropout needs MC-dropout passes, and none were added",
                hint="score the regions with mc_probs (several stochastic forward passes)")
        scores = stats.mc_mean_variance
    elif strategy == "bvsb":
        scores = stats.mean_bvsb
    elif strategy == "classbal":
        scores = _classbal_scores(stats, present)
    elif strategy == "pixbal":
        if nu < 0:
            raise ActiveLearningError(f"nu must be >= 0, not {nu}")
        weight = (1.0 + nu * stats.class_distribution) ** -2
        scores = _per_pixel(stats.bvsb_sum_by_class @ weight, stats.pixel_count)
    else:
        ovr = stats.ovr_entropy(aggregation)
        scores = ovr[np.arange(ovr.shape[0]), stats.dominant_class]
    scores[~present] = -np.inf
    return scores


#: The aggregation that breaks the ties of the other one.
_OTHER_AGGREGATION = {"max": "mean", "mean": "max"}


def tie_scores(
    stats: RegionStats, strategy: str, aggregation: str | None = None
) -> np.ndarray | None:
    """Second key of the ranking: what orders regions of equal :func:`score_regions` score.

    The maximum of a per-pixel uncertainty saturates (OREAL's one-vs-rest entropy reaches
    ``ln 2`` wherever one pixel has ``p_c = 0.5``, as on every tissue edge), so many regions
    share the top score. Among them, the one whose pixels are uncertain on average is the more
    useful: for ``entropy`` and ``oreal`` aggregated by ``max`` the second key is the mean
    (for OREAL, of the one-vs-rest entropy of the region's dominant predicted class), and by
    ``mean`` it is the max. Other strategies have none (ties go to the lower id).

    Returns
    -------
    ndarray of float64, shape (R + 1,), or None
    """
    _check_strategy(strategy, STRATEGIES)
    aggregation = _aggregation_for(strategy, aggregation)
    if aggregation is None:
        return None
    other = _OTHER_AGGREGATION[aggregation]
    if strategy == "entropy":
        return stats.mean_entropy if other == "mean" else stats.entropy_max.copy()
    ovr = stats.ovr_entropy(other)
    return ovr[np.arange(ovr.shape[0]), stats.dominant_class]


def _classbal_scores(stats: RegionStats, present: np.ndarray) -> np.ndarray:
    uncertainty = stats.mean_bvsb
    scores = np.zeros(uncertainty.shape)
    if not present.any():
        return scores
    values = uncertainty[present]
    low, high = values.min(), values.max()
    normalised = (values - low) / (high - low) if high > low else np.ones(values.shape)
    dominant = stats.dominant_class[present]
    region_share = np.bincount(dominant, minlength=stats.n_classes) / dominant.size
    scores[present] = normalised * np.exp(-region_share[dominant])
    return scores


def items_per_class(labelled_counts, budget: int) -> np.ndarray:
    """OREAL's Alg. 1 (ITEMSPERCLASS): how many items to select for every class.

    Gives the budget away one item at a time to the class with the fewest labelled plus
    selected items (the lowest class index on ties).

    Parameters
    ----------
    labelled_counts : array of int, shape (K,)
        Items already labelled per class (``n_c``).
    budget : int
        Items to select (``Q``).

    Returns
    -------
    ndarray of int64, shape (K,)
        ``delta_c``, summing to ``budget``.
    """
    counts = np.asarray(labelled_counts, dtype=np.int64).reshape(-1)
    if counts.size == 0 or np.any(counts < 0):
        raise ActiveLearningError("labelled counts per class must be non-negative, one per class")
    if budget < 0:
        raise ActiveLearningError(f"budget must be >= 0, not {budget}")
    delta = np.zeros(counts.size, dtype=np.int64)
    for _ in range(int(budget)):
        delta[np.argmin(counts + delta)] += 1
    return delta


class _Picker:
    """Bookkeeping of one batch: candidates left, picks so far, adjacency blocking."""

    def __init__(self, candidates: np.ndarray, adjacency: np.ndarray | None, no_adjacent: bool,
                 tie_tolerance: float = TIE_TOLERANCE):
        self.tie_tolerance = float(tie_tolerance)
        self.available = candidates.copy()
        self.blocked = np.zeros(candidates.size, dtype=bool)
        self.ids: list[int] = []
        self.scores: list[float] = []
        self.classes: list[int] = []
        self.pairs = adjacency
        self.neighbours = None
        if no_adjacent and adjacency is not None:
            self.neighbours = _neighbour_lists(adjacency, candidates.size)

    def take(self, scores: np.ndarray, mask: np.ndarray, count: int, class_index: int,
             secondary: np.ndarray | None = None) -> None:
        """Pick up to ``count`` regions of ``mask`` by decreasing score.

        Ties go to the higher ``secondary`` score when one is given, then to the lower id.
        """
        if count <= 0:
            return
        ids = np.flatnonzero(mask & self.available)
        ranked = ids[np.argsort(-scores[ids], kind="stable")]
        if secondary is not None and ranked.size > 1:
            groups = _tie_groups(scores[ranked], self.tie_tolerance)
            ranked = ranked[np.lexsort((ranked, -secondary[ranked], groups))]
        if self.neighbours is None:
            chosen = ranked[:count]
        else:
            chosen = self._greedy_non_adjacent(ranked, count)
        self.available[chosen] = False
        self.ids.extend(chosen.tolist())
        self.scores.extend(scores[chosen].tolist())
        self.classes.extend([class_index] * chosen.size)

    def _greedy_non_adjacent(self, ranked: np.ndarray, count: int) -> np.ndarray:
        indptr, indices = self.neighbours
        chosen = []
        for region in ranked.tolist():
            if not self.available[region]:
                continue
            chosen.append(region)
            neighbours = indices[indptr[region]:indptr[region + 1]]
            self.available[neighbours] = False
            self.blocked[neighbours] = True
            if len(chosen) == count:
                break
        return np.asarray(chosen, dtype=np.int64)

    def release(self, mask: np.ndarray) -> None:
        """Make the regions of ``mask`` candidates (protected regions, once the rest ran out),
        except those picked or next to a pick under ``no_adjacent``."""
        released = mask & ~self.blocked
        released[np.asarray(self.ids, dtype=np.int64)] = False
        self.available |= released

    def adjacent_to_picks(self) -> np.ndarray:
        """Bool mask of the regions sharing a border with a pick made so far."""
        picked = np.zeros(self.available.size, dtype=bool)
        picked[np.asarray(self.ids, dtype=np.int64)] = True
        near = np.zeros(self.available.size, dtype=bool)
        first, second = self.pairs[:, 0], self.pairs[:, 1]
        near[second[picked[first]]] = True
        near[first[picked[second]]] = True
        return near

    def __len__(self) -> int:
        return len(self.ids)


def _tie_groups(descending: np.ndarray, tolerance: float) -> np.ndarray:
    """Group numbers of scores sorted in decreasing order: a group holds the scores within
    ``tolerance`` of its first (best) one; with ``tolerance`` 0, equal scores.

    One binary search per group, so at most ``(max - min) / tolerance + 1`` steps.
    """
    negated = -np.asarray(descending, dtype=np.float64)
    groups = np.empty(negated.size, dtype=np.int64)
    start = group = 0
    while start < negated.size:
        end = int(np.searchsorted(negated, negated[start] + tolerance, side="right"))
        groups[start:max(end, start + 1)] = group
        start, group = max(end, start + 1), group + 1
    return groups


def _neighbour_lists(pairs: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR neighbour lists (indptr, indices) of an undirected pair list."""
    source = np.concatenate([pairs[:, 0], pairs[:, 1]])
    target = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.argsort(source, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(source, minlength=n_rows), out=indptr[1:])
    return indptr, target[order]


def _check_ids(values, n_regions: int, what: str, hint: str) -> np.ndarray:
    """Region ids (any sequence or set of int) as int64, checked to lie in 0..n_regions."""
    ids = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ActiveLearningError(f"{what} must be integer region ids, not {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() > n_regions):
        raise ActiveLearningError(
            f"{what} hold region ids {ids.min()}..{ids.max()}, outside 0..{n_regions}", hint=hint)
    return ids


def select_regions(
    stats: RegionStats,
    strategy: str,
    n: int,
    *,
    labelled=None,
    adjacency=None,
    no_adjacent: bool = False,
    rng: np.random.Generator | int | None = None,
    aggregation: str | None = None,
    nu: float = DEFAULT_NU,
    items_per_class: Iterable[int] | None = None,
    class_counts=None,
    n_background: int | None = 0,
    context: bool = True,
    background_class: int | None = 0,
    protected=None,
    max_glass_fraction: float | None = MAX_GLASS_FRACTION,
    tie_tolerance: float = TIE_TOLERANCE,
) -> Selection:
    """Pick the ``n`` regions to label next.

    A batch never holds region 0, a region without pixels, an already labelled region or a
    region that is mostly glass (its :attr:`RegionStats.glass_fraction` above
    ``max_glass_fraction``); when fewer candidates are left, all of them are returned. With
    ``no_adjacent`` the picks are made greedily in order of usefulness and a region next to an
    earlier pick is skipped, so no two picks of the batch share a border. Regions whose scores
    tie (within ``tie_tolerance`` of the best of their group) are ordered by the score of the
    other aggregation (:func:`tie_scores`), then by id; so ``scores`` may rise by less than
    ``tie_tolerance`` from one pick to the next.

    ``protected`` regions (WACV'21 Alg. 1: those of pseudo-labelled images) are left out of the
    selection, whatever the strategy; only when it found fewer than ``n`` other regions are the
    protected ones ranked, by the strategy's global score (class -1), to fill the batch.

    OREAL follows Alg. 1 of its paper: ``delta = ITEMSPERCLASS(class_counts, n)`` (the
    background's count replaced by ``n_background``, 0 by default, which oversamples it); then
    every foreground class c in turn takes its ``delta_c`` regions of highest ``H_c`` among the
    regions whose dominant predicted class is c; the background class then takes its
    ``delta_b`` first among the background regions next to the selected foreground regions
    (context sampling, when ``context`` and ``adjacency`` are given; their class is -1), then
    among all background regions; the budget a class could not use is filled from the global
    ranking (:func:`score_regions`'s OREAL score, class -1). With ``no_adjacent`` the context
    regions, being adjacent to foreground picks, are never taken.

    Parameters
    ----------
    stats : RegionStats
        The accumulated model outputs.
    strategy : str
        One of :data:`STRATEGIES`.
    n : int
        Batch size.
    labelled : array of int, optional
        Ids of regions already labelled (excluded).
    adjacency : array of int, shape (E, 2), optional
        Pairs of region ids that share a border.
    no_adjacent : bool
        Never pick two adjacent regions (needs ``adjacency``).
    rng : numpy Generator or int, optional
        Random strategy: the generator or its seed.
    aggregation, nu
        See :func:`score_regions`.
    items_per_class : sequence of int, optional
        OREAL: picks per class (``delta``, summing to ``n``) instead of Alg. 1.
    class_counts : array of int, shape (K,), optional
        OREAL: labelled regions per class (``n_c``; default zeros).
    n_background : int or None
        OREAL: the count used for the background class in Alg. 1 (None: its real count).
    context : bool
        OREAL: context sampling of background regions next to the foreground picks.
    background_class : int or None
        The background class index (None: no class gets a background treatment).
    protected : array of int, optional
        Ids of regions picked only when no other candidate is left.
    max_glass_fraction : float or None
        Regions with a larger fraction of glass pixels are never picked (None: no glass test).
        Only regions whose pixels were added with their image are tested.
    tie_tolerance : float
        Score difference below which two regions count as tied (0: exact ties only); only for
        the strategies that have a second key (:func:`tie_scores`).

    Returns
    -------
    Selection
    """
    _check_strategy(strategy, STRATEGIES)
    if n < 0:
        raise ActiveLearningError(f"n must be >= 0, not {n}")
    hint = "the labels or the superpixel adjacency do not match these superpixels; recompute them"
    labelled_ids = _check_ids(np.zeros(0, np.int64) if labelled is None else labelled,
                              stats.n_regions, "labelled ids", hint)
    pairs = None
    if adjacency is not None:
        pairs = _check_ids(adjacency, stats.n_regions, "adjacency pairs", hint)
        if pairs.size == 0:
            pairs = pairs.reshape(0, 2)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ActiveLearningError(
                f"adjacency must have shape (E, 2), not {pairs.shape}", hint=hint)
    if no_adjacent and pairs is None:
        raise ActiveLearningError("no_adjacent needs the region adjacency",
                                  hint="pass adjacency=(E, 2) pairs of neighbouring region ids")
    candidates = stats.has_pixels
    candidates[labelled_ids.reshape(-1)] = False
    params: dict[str, Any] = {"n": int(n), "no_adjacent": bool(no_adjacent)}
    if max_glass_fraction is not None and stats.glass_checked.any():
        glassy = candidates & (stats.glass_fraction > max_glass_fraction)
        candidates &= ~glassy
        params["max_glass_fraction"] = float(max_glass_fraction)
        params["glass_regions"] = int(glassy.sum())
    kept_back = np.zeros(candidates.size, dtype=bool)
    if protected is not None:
        protected_ids = _check_ids(protected, stats.n_regions, "protected ids", hint)
        kept_back[protected_ids.reshape(-1)] = True
        kept_back &= candidates
        params["protected"] = int(kept_back.sum())
    if not tie_tolerance >= 0:
        raise ActiveLearningError(f"tie_tolerance must be >= 0, not {tie_tolerance}")
    picker = _Picker(candidates & ~kept_back, pairs, no_adjacent, tie_tolerance)
    aggregation = _aggregation_for(strategy, aggregation)
    scores = score_regions(stats, strategy, aggregation=aggregation, nu=nu, rng=rng)
    secondary = tie_scores(stats, strategy, aggregation)
    if aggregation is not None:
        params["aggregation"] = aggregation
    if strategy == "pixbal":
        params["nu"] = float(nu)
    if strategy == "oreal":
        params.update(_select_oreal(
            stats, picker, scores, n, aggregation, items_per_class, class_counts, n_background,
            context, background_class))
    picker.take(scores, candidates, n - len(picker), -1, secondary)
    if len(picker) < n and kept_back.any():
        picker.release(kept_back)
        picker.take(scores, kept_back, n - len(picker), -1, secondary)
    return Selection(
        ids=np.asarray(picker.ids, dtype=np.int64),
        scores=np.asarray(picker.scores, dtype=np.float64),
        strategy=strategy,
        params=params,
        classes=np.asarray(picker.classes, dtype=np.int64),
    )


def _select_oreal(
    stats: RegionStats, picker: _Picker, scores: np.ndarray, n: int, aggregation: str,
    explicit_items, class_counts, n_background, context: bool, background_class,
) -> dict[str, Any]:
    n_classes = stats.n_classes
    if background_class is not None and not 0 <= background_class < n_classes:
        raise ActiveLearningError(
            f"background_class {background_class} is not one of the {n_classes} classes")
    counts = np.zeros(n_classes, np.int64) if class_counts is None else np.array(
        class_counts, dtype=np.int64).reshape(-1)
    if counts.size != n_classes:
        raise ActiveLearningError(
            f"class_counts has {counts.size} values; expected one per class ({n_classes})")
    if background_class is not None and n_background is not None:
        counts[background_class] = n_background
    if explicit_items is None:
        delta = items_per_class(counts, n)
    else:
        delta = np.asarray(list(explicit_items), dtype=np.int64)
        if delta.shape != (n_classes,) or np.any(delta < 0) or delta.sum() != n:
            raise ActiveLearningError(
                f"items_per_class {delta.tolist()} must give one non-negative count per class "
                f"({n_classes}) summing to n = {n}")
    ovr = stats.ovr_entropy(aggregation)
    other = stats.ovr_entropy(_OTHER_AGGREGATION[aggregation])
    dominant = stats.dominant_class
    foreground = [c for c in range(n_classes) if c != background_class]
    for class_index in foreground:
        picker.take(ovr[:, class_index], dominant == class_index, delta[class_index], class_index,
                    other[:, class_index])
    used_context = False
    if background_class is not None:
        is_background = dominant == background_class
        quota = int(delta[background_class])
        background_other = other[:, background_class]
        if context and picker.pairs is not None:
            used_context = True
            near = picker.adjacent_to_picks()
            before = len(picker)
            picker.take(ovr[:, background_class], is_background & near, quota, -1,
                        background_other)
            quota -= len(picker) - before
        picker.take(ovr[:, background_class], is_background, quota, background_class,
                    background_other)
    return {
        "items_per_class": delta.tolist(),
        "class_counts": counts.tolist(),
        "n_background": n_background,
        "context": used_context,
        "background_class": background_class,
    }


def select_with_config(
    stats: RegionStats,
    config: SelectionConfig,
    *,
    labelled=None,
    adjacency=None,
    class_counts=None,
    rng: np.random.Generator | int | None = None,
) -> Selection:
    """:func:`select_regions` with the settings of a :class:`SelectionConfig`.

    ``rng`` defaults to a generator seeded with ``config.seed``.
    """
    return select_regions(
        stats, config.strategy, config.n, labelled=labelled, adjacency=adjacency,
        no_adjacent=config.no_adjacent,
        rng=np.random.default_rng(config.seed) if rng is None else rng,
        aggregation=config.aggregation, nu=config.nu, items_per_class=config.items_per_class,
        class_counts=class_counts, n_background=config.n_background, context=config.context,
        max_glass_fraction=config.max_glass_fraction)


# --- image level (patch data sets, WACV'21) ---------------------------------------------------


def score_images(
    probs,
    strategy: str,
    mc_probs=None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Usefulness of whole images for labelling (WACV'21: Random, Entropy, MC_Dropout).

    Parameters
    ----------
    probs : array of float, shape (M, C) or (M, C, ...)
        Class probabilities per image, or per pixel with the class on axis 1.
    strategy : {"random", "entropy", "mc_dropout"}
        ``entropy``: mean over the pixels of the entropy (natural log); ``mc_dropout``: mean
        over classes and pixels of the variance over the T passes.
    mc_probs : array of float, shape (T, M, C, ...), optional
        MC-dropout passes (needed by ``mc_dropout``).
    rng : numpy Generator or int, optional
        Random strategy: the generator or its seed.

    Returns
    -------
    ndarray of float64, shape (M,)
    """
    _check_strategy(strategy, IMAGE_STRATEGIES)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim < 2:
        raise ActiveLearningError(
            f"probs has shape {probs.shape}; expected (M, C) or (M, C, height, width)")
    n_images = probs.shape[0]
    if strategy == "random":
        return np.random.default_rng(rng).random(n_images)
    if strategy == "entropy":
        entropy = -_xlogx(np.clip(probs, 0.0, 1.0)).sum(axis=1)
        return entropy.reshape(n_images, -1).mean(axis=1)
    if mc_probs is None:
        raise ActiveLearningError("mc_dropout needs mc_probs (T stochastic forward passes)")
    mc_probs = np.asarray(mc_probs, dtype=np.float64)
    if mc_probs.shape[1:] != probs.shape:
        expected = ", ".join(str(size) for size in probs.shape)
        raise ActiveLearningError(f"mc_probs has shape {mc_probs.shape}; expected (T, {expected})")
    return mc_probs.var(axis=0).reshape(n_images, -1).mean(axis=1)


def colour_histograms(images, bins: int = 32) -> np.ndarray:
    """Normalised colour histogram of every colour plane of every image.

    Parameters
    ----------
    images : array (M, H, W, 3) of uint8, or iterable of (H, W, 3) uint8 arrays
        RGB images (sizes may differ).
    bins : int
        Bins per plane, in 1..256; bin ``b`` holds the values ``v`` with ``v * bins // 256 == b``.

    Returns
    -------
    ndarray of float64, shape (M, 3, bins)
        Every plane sums to 1.
    """
    if not 1 <= bins <= 256:
        raise ActiveLearningError(f"bins must be in 1..256, not {bins}")
    histograms = []
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ActiveLearningError(
                f"image {index} is {image.dtype} of shape {image.shape}; expected (H, W, 3) uint8",
                hint="convert grayscale, RGBA or 16-bit images to 8-bit RGB first")
        n_pixels = image.shape[0] * image.shape[1]
        if n_pixels == 0:
            raise ActiveLearningError(f"image {index} is empty")
        binned = (image.reshape(-1, 3).astype(np.int64) * bins) >> 8
        counts = np.bincount((binned + np.arange(3) * bins).ravel(), minlength=3 * bins)
        histograms.append(counts.reshape(3, bins) / n_pixels)
    if not histograms:
        return np.zeros((0, 3, bins))
    return np.stack(histograms)


def _normalised_planes(histograms, name: str) -> np.ndarray:
    values = np.asarray(histograms, dtype=np.float64)
    if values.ndim != 3:
        raise ActiveLearningError(f"{name} has shape {values.shape}; expected (M, planes, bins)")
    totals = values.sum(axis=2, keepdims=True)
    if np.any(values < 0) or np.any(totals <= 0):
        raise ActiveLearningError(f"{name}: every plane must be non-negative with a positive sum")
    return values / totals


def js_divergence(first, second) -> np.ndarray:
    """Jensen-Shannon divergence between histograms, summed over the colour planes.

    ``JS(P, Q) = H((P + Q) / 2) - (H(P) + H(Q)) / 2`` per plane, with base-2 logarithms, so
    each plane contributes a value in [0, 1]: 0 for identical planes, 1 for disjoint ones. The
    result is symmetric; planes are normalised to sum to 1 first.

    Parameters
    ----------
    first : array, shape (A, P, b)
    second : array, shape (B, P, b)

    Returns
    -------
    ndarray of float64, shape (A, B)
    """
    first = _normalised_planes(first, "first histograms")
    second = _normalised_planes(second, "second histograms")
    if first.shape[1:] != second.shape[1:]:
        raise ActiveLearningError(
            f"histograms of shapes {first.shape[1:]} and {second.shape[1:]} cannot be compared")

    def entropy(values):
        return -(_xlogx(values) / np.log(2.0)).sum(axis=-1)

    first_entropy = entropy(first).sum(axis=1)
    second_entropy = entropy(second).sum(axis=1)
    out = np.empty((first.shape[0], second.shape[0]))
    rows_per_chunk = max(1, JS_CHUNK_VALUES // max(1, second.size))
    for start in range(0, first.shape[0], rows_per_chunk):
        chunk = first[start:start + rows_per_chunk]
        mixture = (chunk[:, None] + second[None]) / 2.0
        out[start:start + chunk.shape[0]] = entropy(mixture).sum(axis=2)
    out -= (first_entropy[:, None] + second_entropy[None, :]) / 2.0
    return np.maximum(out, 0.0)


def label_prop_candidates(
    histograms, predicted_classes, labelled_mask, k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unlabelled samples to pseudo-label: the k nearest of every labelled one (WACV'21 Label_prop).

    For every labelled sample, the k unlabelled samples of the same predicted class with the
    smallest Jensen-Shannon divergence of colour histograms (:func:`js_divergence`); a sample
    near several labelled ones is kept once, with its nearest.

    Parameters
    ----------
    histograms : array, shape (M, P, b)
        Colour histograms (:func:`colour_histograms`).
    predicted_classes : array of int, shape (M,)
        Image-level class predicted for every sample.
    labelled_mask : array of bool, shape (M,)
        Which samples are labelled.
    k : int
        Neighbours per labelled sample.

    Returns
    -------
    indices : ndarray of int64
        Unlabelled samples, by increasing distance (ties: lower index first).
    nearest_labelled : ndarray of int64
        The labelled sample each one is nearest to.
    distances : ndarray of float64
        That divergence.
    """
    histograms = np.asarray(histograms)
    classes = np.asarray(predicted_classes).reshape(-1)
    labelled_mask = np.asarray(labelled_mask, dtype=bool).reshape(-1)
    if k < 0:
        raise ActiveLearningError(f"k must be >= 0, not {k}")
    if not histograms.shape[0] == classes.size == labelled_mask.size:
        raise ActiveLearningError(
            f"{histograms.shape[0]} histograms, {classes.size} classes and {labelled_mask.size} "
            "labelled flags: expected one of each per sample")
    labelled = np.flatnonzero(labelled_mask)
    unlabelled = np.flatnonzero(~labelled_mask)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if labelled.size == 0 or unlabelled.size == 0 or k == 0:
        return empty
    distance = js_divergence(histograms[labelled], histograms[unlabelled])
    distance[classes[labelled][:, None] != classes[unlabelled][None, :]] = np.inf
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :min(k, unlabelled.size)]
    rows = np.repeat(np.arange(labelled.size), nearest.shape[1])
    columns = nearest.ravel()
    values = distance[rows, columns]
    finite = np.isfinite(values)
    rows, columns, values = rows[finite], columns[finite], values[finite]
    order = np.lexsort((rows, values, columns))
    columns, rows, values = columns[order], rows[order], values[order]
    first = np.ones(columns.size, dtype=bool)
    first[1:] = columns[1:] != columns[:-1]
    columns, rows, values = columns[first], rows[first], values[first]
    order = np.lexsort((columns, values))
    return unlabelled[columns[order]], labelled[rows[order]], values[order]
