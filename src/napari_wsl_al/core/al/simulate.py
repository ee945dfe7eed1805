"""Active-learning simulation on a labelled patch data set: rounds of suggest, oracle answer, train, score.

A GlaS-layout folder (``images/``, ``masks/``, ``grade.csv``) is split by patient into a pool
and a validation part. Every pool image is read at the working resolution and cut into
superpixels; the ground truth of a pixel is 0 (background) off the gland mask and
``1 + grade`` on it, so the segmentation classes are ``("background", *image classes)`` and
the foreground is ``1 - P(background)``. Each round asks the oracle (:mod:`.oracle`) about
the regions the acquisition function picks, trains the joint model on every answer so far and
scores it on the validation images (Dice of the foreground, mIoU of all classes).

Pseudo labels are optional, by one of :data:`PSEUDO_METHODS`:

``stage2``
    MulActSeg's stage 2 (Eq. 11-13) after each round's stage 1.
``label_prop``
    WACV'21 Label_prop (Alg. 1, Eq. 1). After each round's oracle answers, an image holding an
    answer is labelled (``L``); the ``k`` nearest unlabelled images of the same image-level
    class (GlaS grade) to every labelled image join the pseudo-labelled set ``P``
    (:func:`~napari_wsl_al.core.al.pseudo.label_prop_set`); every image of ``P`` gets its
    pseudo-segmentation from the newest model's segmentation head, made again every round;
    training minimises Eq. 1 with weight ``lambda``. The regions of ``P`` are not queried
    while other regions are left, and an image of ``P`` that gets an answer is labelled and
    leaves ``P``. Round 0 has no pseudo labels (``P_0`` is empty: the segmentation head has
    not been trained yet).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.glas import PatchDataset, load_glas, patient_folds, split_by_patient
from ..data.patches import read_mask, read_rgb
from ..metrics import al_curve_auc, gini_index
from ..models.checkpoint import load_checkpoint, load_default_model, save_checkpoint
from ..models.factory import build_model
from ..models.joint import IGNORE_INDEX
from ..progress import Progress, run_to_end
from .acquisition import STRATEGIES, RegionStats, colour_histograms, select_regions
from .oracle import LABEL_MODES, MaskOracle
from .pseudo import LABEL_PROP_K, LABEL_PROP_LAMBDA, label_prop_set
from .superpixels import SuperpixelConfig, region_adjacency, superpixels_for_image
from .train import (
    RegionItem,
    RegionTrainConfig,
    joint_from_wsl,
    predict_items,
    pseudo_segmentations,
    segmentation_scores,
    train_dense,
    train_regions,
)

#: Pseudo-labelling methods of a simulation (see the module docstring).
PSEUDO_METHODS = ("stage2", "label_prop")

#: Columns of ``curves.csv``.
CURVE_COLUMNS = (
    "strategy",
    "label",
    "seed",
    "round",
    "clicks",
    "labelled_fraction",
    "dice",
    "miou",
    "gini",
    "seconds",
)


@dataclass(frozen=True)
class SimulationConfig:
    """One simulated active-learning run (one strategy, one labelling mode, one seed).

    Attributes
    ----------
    strategy : str
        Acquisition function (:data:`~napari_wsl_al.core.al.acquisition.STRATEGIES`).
    label : {"multi", "dominant"}
        Oracle answers: every class present, or the dominant class.
    pseudo_labels : bool
        Train with pseudo labels too, made by ``pseudo_method``.
    pseudo_method : {"stage2", "label_prop"}
        MulActSeg's stage 2 (Eq. 11-13) or WACV'21 Label_prop (Alg. 1, Eq. 1).
    label_prop_k : int
        Label_prop: neighbours per labelled image (WACV'21: 40).
    label_prop_lambda : float
        Label_prop: weight of the pseudo-labelled images in Eq. 1 (WACV'21 on GlaS: 0.1).
    rounds : int
        Rounds; the first picks regions at random (no model of the segmentation yet).
    budget : int
        Regions labelled per round.
    seed : int
        Initial picks, training crops, random acquisition.
    val_fraction : float
        Part of the patients held out for validation (the split is the same for every seed).
    folds, fold : int
        ``folds >= 2``: K-fold cross-validation grouped by patient instead
        (:func:`~napari_wsl_al.core.data.glas.patient_folds`, the folds of ``bench_wsl.py
        --cv``); fold ``fold`` is the validation. 0: the ``val_fraction`` split.
    mpp : float
        Working resolution, microns per pixel (GlaS is 0.62 at 20x).
    superpixels : SuperpixelConfig
        Region size and compactness (at the working resolution).
    train : RegionTrainConfig
        Each round's training.
    init : {"wsl", "scratch"}
        Start from the weakly-supervised checkpoint ``checkpoint`` (default: the shipped
        model) or from random weights.
    fine_tune : bool
        Each round starts from the previous round's weights (True) or from the initial ones.
    checkpoint : str or None
        Weakly-supervised checkpoint to start from.
    final_steps : int
        When > 0, after the last round the model is also trained from the initial weights on
        the final labels for this many steps (as the full-supervision bar is), and scored:
        ``final_dice`` and ``final_miou`` of the last row. This tells what the labels are
        worth apart from the short rounds' training.
    device : str
        Where to train.
    """

    strategy: str = "oreal"
    label: str = "multi"
    pseudo_labels: bool = False
    pseudo_method: str = "stage2"
    label_prop_k: int = LABEL_PROP_K
    label_prop_lambda: float = LABEL_PROP_LAMBDA
    rounds: int = 8
    budget: int = 40
    seed: int = 0
    val_fraction: float = 0.2
    folds: int = 0
    fold: int = 0
    mpp: float = 1.24
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    train: RegionTrainConfig = field(default_factory=RegionTrainConfig)
    init: str = "wsl"
    fine_tune: bool = True
    checkpoint: str | None = None
    final_steps: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.label not in LABEL_MODES:
            raise ValueError(f"unknown label mode {self.label!r}; expected one of {LABEL_MODES}")
        if self.rounds < 1 or self.budget < 1:
            raise ValueError("rounds and budget must be at least 1")
        if self.final_steps < 0:
            raise ValueError(f"final_steps must be >= 0, not {self.final_steps}")
        if self.pseudo_method not in PSEUDO_METHODS:
            raise ValueError(
                f"unknown pseudo-label method {self.pseudo_method!r}; expected one of "
                f"{PSEUDO_METHODS}")
        if self.folds == 1 or self.folds < 0 or not 0 <= self.fold < max(1, self.folds):
            raise ValueError(f"fold {self.fold} of {self.folds}: folds is 0 (one split) or at "
                             f"least 2, and the fold one of 0 .. folds - 1")
        if self.label_prop_k < 1:
            raise ValueError(f"label_prop_k must be at least 1, not {self.label_prop_k}")
        if not self.label_prop_lambda >= 0:
            raise ValueError(f"label_prop_lambda must be >= 0, not {self.label_prop_lambda}")

    @property
    def label_prop(self) -> bool:
        """Whether this run trains with Label_prop pseudo labels."""
        return self.pseudo_labels and self.pseudo_method == "label_prop"

    @property
    def stage2(self) -> bool:
        """Whether this run trains with stage-2 pseudo labels."""
        return self.pseudo_labels and self.pseudo_method == "stage2"

    @property
    def label_name(self) -> str:
        """The labelling mode with its pseudo labels: ``multi``, ``multi+pseudo`` (stage 2),
        ``multi+label_prop``."""
        if not self.pseudo_labels:
            return self.label
        return self.label + ("+pseudo" if self.stage2 else "+label_prop")

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["superpixels"] = self.superpixels.to_json()
        data["train"] = self.train.to_json()
        return data

    @property
    def run_name(self) -> str:
        """``<strategy>-<label>[-pseudo|-labelprop]-seed<k>[-fold<f>]``: the run's folder name."""
        pseudo = "-pseudo" if self.stage2 else "-labelprop" if self.label_prop else ""
        fold = f"-fold{self.fold}" if self.folds else ""
        return f"{self.strategy}-{self.label}{pseudo}-seed{self.seed}{fold}"


@dataclass
class PreparedData:
    """A data set read at the working resolution, cut into superpixels, with ground truth.

    Attributes
    ----------
    classes : tuple of str
        Segmentation classes, background first.
    pool, validation : list of RegionItem
        Images the oracle is asked about / images the model is scored on.
    pool_truth, validation_truth : list of ndarray
        ``(H, W)`` class maps (``IGNORE_INDEX`` where unknown).
    adjacency : ndarray
        ``(E, 2)`` adjacent pool regions.
    n_regions : int
        Pool regions (ids 1..n).
    oracle : MaskOracle
        Answers from the pool's masks.
    image_classes : ndarray of int64
        Image-level class of every pool image (index into the data set's classes).
    histograms : ndarray
        ``(pool images, 3, bins)`` colour histograms of the pool images (Label_prop).
    region_image : ndarray of int64
        ``(n_regions + 1,)`` the pool image of every region (-1 for id 0).
    """

    classes: tuple[str, ...]
    pool: list[RegionItem]
    validation: list[RegionItem]
    pool_truth: list[np.ndarray]
    validation_truth: list[np.ndarray]
    adjacency: np.ndarray
    n_regions: int
    oracle: MaskOracle | None = None
    image_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    histograms: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 32)))
    region_image: np.ndarray = field(default_factory=lambda: np.full(1, -1, np.int64))


def _resize(array: np.ndarray, scale: float, resample) -> np.ndarray:
    if abs(scale - 1.0) < 1e-3:
        return array
    height, width = array.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, resample))


def _read_items(
    dataset: PatchDataset, records, scale: float, sp_config: SuperpixelConfig, offset: int
):
    items, truths = [], []
    for record in records:
        image = _resize(read_rgb(record.image_path), scale, Image.BILINEAR)
        truth = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        if record.mask_path is not None:
            mask = _resize(read_mask(record.mask_path), scale, Image.NEAREST)
            truth = np.where(mask > 0, 1 + record.label, 0).astype(np.uint8)
        labels = superpixels_for_image(image, sp_config).astype(np.int64)
        labels[labels > 0] += offset
        offset = max(offset, int(labels.max()))
        items.append(RegionItem(record.name, image, labels))
        truths.append(truth)
    return items, truths, offset


def prepare_dataset(
    data: str | Path | PatchDataset,
    config: SimulationConfig,
) -> PreparedData:
    """Read, rescale and cut a GlaS-layout data set into superpixels (once per simulation).

    Raises
    ------
    DatasetError
        When the folder is not a data set with masks (naming the folder).
    """
    from ..errors import DatasetError

    dataset = data if isinstance(data, PatchDataset) else load_glas(data)
    if not dataset.has_masks:
        raise DatasetError(
            "the simulation needs a ground-truth mask for every image",
            path=dataset.root,
            hint="add masks/<name>.png files",
        )
    if config.folds:
        split = patient_folds(dataset, k=config.folds, seed=0)[config.fold]
    else:
        split = split_by_patient(dataset, val_fraction=config.val_fraction, seed=0)
    source_mpp = dataset.mpp or 0.62
    scale = source_mpp / config.mpp
    pool, pool_truth, count = _read_items(
        dataset, split.train.records, scale, config.superpixels, 0
    )
    validation, val_truth, _ = _read_items(
        dataset, split.val.records, scale, config.superpixels, count
    )
    adjacency = np.concatenate(
        [region_adjacency(item.superpixels) for item in pool] or [np.zeros((0, 2), np.int64)]
    )
    classes = ("background", *dataset.classes)
    oracle = MaskOracle([i.superpixels for i in pool], pool_truth, len(classes))
    region_image = np.full(count + 1, -1, dtype=np.int64)
    for index, item in enumerate(pool):
        region_image[item.superpixels[item.superpixels > 0]] = index
    return PreparedData(
        classes,
        pool,
        validation,
        pool_truth,
        val_truth,
        np.asarray(adjacency, dtype=np.int64),
        count,
        oracle,
        image_classes=np.array([r.label for r in split.train.records], dtype=np.int64),
        histograms=colour_histograms(item.image for item in pool),
        region_image=region_image,
    )


def _initial_model(config: SimulationConfig, classes: Sequence[str]):
    if config.checkpoint:
        wsl, _, _ = load_checkpoint(config.checkpoint)
    else:
        wsl = load_default_model("cpu")
    model, model_config = joint_from_wsl(wsl, classes, mpp=config.mpp)
    if config.init == "scratch":
        model = build_model(model_config)
        model.config = model_config
    return model, model_config


def _pool_stats(model, data: PreparedData, device, mc_passes: int = 0) -> RegionStats:
    stats = RegionStats(data.n_regions, len(data.classes))
    for index, probs, _, mc in predict_items(model, data.pool, device, mc_passes=mc_passes):
        stats.add_image(data.pool[index].superpixels, probs, mc)
    return stats


def _random_picks(rng, open_ids: np.ndarray, protected_ids: np.ndarray, budget: int):
    """Random picks among ``open_ids``; protected ids only when those run out."""
    if not protected_ids.size:
        return rng.choice(open_ids, size=min(budget, open_ids.size), replace=False)
    if open_ids.size >= budget:
        return rng.choice(open_ids, size=budget, replace=False)
    rest = rng.choice(protected_ids, size=min(budget - open_ids.size, protected_ids.size),
                      replace=False)
    return np.concatenate([rng.permutation(open_ids), rest])


def _pseudo_dice(masks: dict[int, np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Mean foreground Dice of the pseudo-segmentations against the truth (WACV'21 Fig. 6)."""
    from ..metrics import dice

    scores = []
    for index, mask in masks.items():
        truth = np.asarray(truths[index])
        valid = (truth != IGNORE_INDEX) & (mask != IGNORE_INDEX)
        scores.append(dice(truth[valid] > 0, mask[valid] > 0))
    return float(np.mean(scores)) if scores else float("nan")


def simulate_run(
    data: PreparedData,
    config: SimulationConfig,
    out_dir: str | Path | None = None,
) -> Generator[Progress, None, list[dict[str, Any]]]:
    """One simulated run; a generator of :class:`Progress` returning the curve rows.

    Each round's checkpoint goes to ``out_dir/<run_name>/round_<r>.pt`` (loadable by
    ``infer --model``) when ``out_dir`` is given. With Label_prop, the rows also hold
    ``pseudo_images`` (``|P|`` the round trained with), ``pseudo_dice`` (their
    pseudo-segmentations against the truth, NaN without any) and ``pseudo_queried`` (the
    round's picks that fell in images of the previous ``P``).
    """
    from ..device import resolve_device

    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)  # the new decoder's initial weights
    model, model_config = _initial_model(config, data.classes)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    region_classes = np.zeros((data.n_regions + 1, len(data.classes)), dtype=bool)
    labelled_ids = np.zeros(0, dtype=np.int64)
    pixel_counts = np.bincount(
        np.concatenate([i.superpixels.ravel() for i in data.pool]), minlength=data.n_regions + 1
    )
    candidates = np.flatnonzero(pixel_counts[1:] > 0) + 1
    n_images = len(data.pool)
    if config.label_prop and (data.histograms.shape[0] != n_images
                              or data.image_classes.size != n_images):
        raise ValueError("Label_prop needs the pool's colour histograms and image classes: "
                         "prepare the data with prepare_dataset")
    pseudo = np.zeros(n_images, dtype=bool)  # P, the pseudo-labelled pool images
    clicks = 0
    rows: list[dict[str, Any]] = []
    run_dir = None if out_dir is None else Path(out_dir) / config.run_name
    started = time.perf_counter()
    total = config.rounds
    for round_index in range(config.rounds):
        round_start = time.perf_counter()
        yield Progress(round_index, total, f"{config.run_name}: round {round_index}: selecting")
        protected = np.zeros(0, dtype=np.int64)
        if pseudo.any():
            protected = candidates[pseudo[data.region_image[candidates]]]
        if round_index == 0 or config.strategy == "random":
            pool = np.setdiff1d(candidates, labelled_ids)
            open_ids = np.setdiff1d(pool, protected)
            picks = _random_picks(rng, open_ids, np.intersect1d(pool, protected), config.budget)
        else:
            mc = 4 if config.strategy == "mc_dropout" else 0
            stats = _pool_stats(model, data, device, mc_passes=mc)
            selection = select_regions(
                stats,
                config.strategy,
                config.budget,
                labelled=labelled_ids,
                adjacency=data.adjacency,
                rng=rng,
                class_counts=region_classes[labelled_ids].sum(axis=0),
                protected=protected if protected.size else None,
            )
            picks = np.asarray(selection.ids, dtype=np.int64)
        pseudo_queried = int(pseudo[data.region_image[picks]].sum()) if picks.size else 0
        answers = data.oracle.answer(picks, config.label)
        answered = answers.answered
        region_classes[answers.region_ids[answered]] = answers.classes[answered]
        clicks += int(answers.clicks[answered].sum())
        labelled_ids = np.union1d(labelled_ids, picks)
        pseudo_maps = None
        pseudo_dice = float("nan")
        if config.label_prop:
            labelled_images = np.zeros(n_images, dtype=bool)
            labelled_images[data.region_image[labelled_ids]] = True
            if bool(model.segmentation_trained):
                yield Progress(round_index, total,
                               f"{config.run_name}: round {round_index}: pseudo labels")
                pseudo = label_prop_set(data.histograms, data.image_classes, labelled_images,
                                        pseudo, config.label_prop_k)
                members = np.flatnonzero(pseudo)
                masks = pseudo_segmentations(
                    model, [data.pool[i] for i in members],
                    [1 + int(data.image_classes[i]) for i in members], device)
                pseudo_maps = [None] * n_images
                for index, mask in zip(members.tolist(), masks):
                    pseudo_maps[index] = mask
                pseudo_dice = _pseudo_dice(dict(zip(members.tolist(), masks)), data.pool_truth)
            else:
                pseudo = pseudo & ~labelled_images
        if not config.fine_tune:
            model.load_state_dict(initial_state)
        train_config = replace(
            config.train,
            seed=config.seed * 1000 + round_index,
            stage2_steps=config.train.stage2_steps if config.stage2 else 0,
        )
        if config.stage2 and not train_config.stage2_steps:
            train_config = replace(train_config, stage2_steps=max(1, config.train.steps // 2))
        result = yield from train_regions(
            model, data.pool, region_classes, train_config, device, adjacency=data.adjacency,
            pseudo_maps=pseudo_maps, pseudo_weight=config.label_prop_lambda,
        )
        scores = segmentation_scores(model, data.validation, data.validation_truth, device)
        class_regions = region_classes[labelled_ids].sum(axis=0)
        row = {
            "strategy": config.strategy,
            "label": config.label_name,
            "seed": config.seed,
            "round": round_index,
            "clicks": clicks,
            "labelled_fraction": labelled_ids.size / max(candidates.size, 1),
            "dice": scores["dice"],
            "fg_dice": scores["fg_dice"],
            "argmax_dice": scores["argmax_dice"],
            "miou": scores["miou"],
            "gini": gini_index(class_regions),
            "seconds": time.perf_counter() - round_start,
            "loss": result["loss"],
        }
        if config.label_prop:
            row["pseudo_images"] = int(result["pseudo_images"])
            row["pseudo_dice"] = pseudo_dice
            row["pseudo_queried"] = pseudo_queried
        rows.append(row)
        if run_dir is not None:
            save_checkpoint(
                run_dir / f"round_{round_index}.pt",
                model,
                model_config,
                extra={
                    "simulation": config.to_json(),
                    "round": round_index,
                    "metrics": row,
                    "classes": list(data.classes),
                },
            )
        yield Progress(
            round_index + 1,
            total,
            f"{config.run_name}: round {round_index}: Dice {row['dice']:.3f}",
            {k: row[k] for k in ("dice", "miou", "clicks", "labelled_fraction")},
        )
    if config.final_steps:
        yield Progress(total, total, f"{config.run_name}: the final labels, trained again "
                                     f"from the start for {config.final_steps} steps")
        final_start = time.perf_counter()
        model.load_state_dict(initial_state)
        yield from train_regions(
            model, data.pool, region_classes,
            replace(config.train, steps=config.final_steps, seed=config.seed * 1000 + total,
                    stage2_steps=0),
            device, adjacency=data.adjacency)
        scores = segmentation_scores(model, data.validation, data.validation_truth, device)
        rows[-1].update(final_dice=scores["dice"], final_miou=scores["miou"],
                        final_seconds=time.perf_counter() - final_start)
        if run_dir is not None:
            save_checkpoint(
                run_dir / "final.pt", model, model_config,
                extra={"simulation": config.to_json(), "round": total - 1,
                       "metrics": rows[-1], "classes": list(data.classes)},
            )
        yield Progress(total, total,
                       f"{config.run_name}: final labels trained again: Dice "
                       f"{scores['dice']:.3f}")
    rows[-1]["total_seconds"] = time.perf_counter() - started
    return rows


def full_supervision(
    data: PreparedData, config: SimulationConfig, steps: int
) -> Generator[Progress, None, dict[str, float]]:
    """The bar: the same model trained on every pool mask, scored on the validation images."""
    torch.manual_seed(config.seed)
    model, _ = _initial_model(config, data.classes)
    train_config = replace(config.train, steps=steps, seed=config.seed)
    result = yield from train_dense(model, data.pool, data.pool_truth, train_config, config.device)
    scores = segmentation_scores(model, data.validation, data.validation_truth, config.device)
    return {**scores, "seconds": result["seconds"], "steps": steps}


def run_task(data_path: str, config_json: dict[str, Any], out_dir: str | None) -> list[dict]:
    """One run from plain arguments (a dask.distributed task): prepare, simulate, return rows."""
    config = config_from_json(config_json)
    data = prepare_dataset(data_path, config)
    return run_to_end(simulate_run(data, config, out_dir))


def config_from_json(data: dict[str, Any]) -> SimulationConfig:
    """Inverse of :meth:`SimulationConfig.to_json`."""
    data = dict(data)
    data["superpixels"] = SuperpixelConfig.from_json(data.get("superpixels", {}))
    data["train"] = RegionTrainConfig.from_json(data.get("train", {}))
    return SimulationConfig(**data)


# ---------------------------------------------------------------------- outputs
def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """AuALC (Dice against labelled fraction, normalised) and final Dice per strategy and label,
    mean and standard deviation over seeds."""
    groups: dict[str, dict[int, list[dict]]] = {}
    for row in rows:
        key = f"{row['strategy']}-{row['label']}"
        groups.setdefault(key, {}).setdefault(int(row["seed"]), []).append(row)
    summary: dict[str, Any] = {}
    for key, seeds in groups.items():
        aucs, finals, fractions, retrained = [], [], [], []
        for seed_rows in seeds.values():
            seed_rows = sorted(seed_rows, key=lambda r: r["round"])
            aucs.append(
                al_curve_auc(
                    [r["labelled_fraction"] for r in seed_rows], [r["dice"] for r in seed_rows]
                )
            )
            finals.append(seed_rows[-1]["dice"])
            fractions.append(seed_rows[-1]["labelled_fraction"])
            if seed_rows[-1].get("final_dice") not in (None, ""):
                retrained.append(float(seed_rows[-1]["final_dice"]))
        summary[key] = {
            "auALC": float(np.mean(aucs)),
            "auALC_std": float(np.std(aucs)),
            "final_dice": float(np.mean(finals)),
            "final_dice_std": float(np.std(finals)),
            "final_labelled_fraction": float(np.mean(fractions)),
            "seeds": len(seeds),
        }
        if retrained:
            summary[key]["retrained_dice"] = float(np.mean(retrained))
            summary[key]["retrained_dice_std"] = float(np.std(retrained))
    return summary


def write_curves_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """``curves.csv`` with :data:`CURVE_COLUMNS`."""
    from ..atomic import atomic_write

    def write(stream):
        writer = csv.DictWriter(stream, fieldnames=CURVE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )

    atomic_write(Path(path), write)


def plot_curves(path: str | Path, rows: Sequence[dict[str, Any]], bar: float | None = None) -> None:
    """``curves.png``: Dice against clicks, one line per strategy, mean and spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups: dict[str, dict[int, list[dict]]] = {}
    for row in rows:
        key = f"{row['strategy']}-{row['label']}"
        groups.setdefault(key, {}).setdefault(int(row["round"]), []).append(row)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for key, rounds in sorted(groups.items()):
        order = sorted(rounds)
        clicks = np.array([np.mean([r["clicks"] for r in rounds[k]]) for k in order])
        dice = np.array([[r["dice"] for r in rounds[k]] for k in order], dtype=object)
        mean = np.array([np.mean(d) for d in dice])
        spread = np.array([np.std(d) for d in dice])
        axes.plot(clicks, mean, marker="o", label=key)
        axes.fill_between(clicks, mean - spread, mean + spread, alpha=0.2)
    if bar is not None:
        axes.axhline(bar, color="black", linestyle="--", label="full supervision")
        axes.axhline(0.95 * bar, color="grey", linestyle=":", label="95 % of full supervision")
    axes.set_xlabel("clicks")
    axes.set_ylabel("validation Dice (foreground)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def write_outputs(
    out_dir: str | Path, rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``curves.csv``, ``summary.json`` and ``curves.png`` in ``out_dir``; returns the summary."""
    from ..project import write_json_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_curves_csv(out_dir / "curves.csv", rows)
    summary = {"strategies": summarize(rows), **(extra or {})}
    write_json_atomic(out_dir / "summary.json", summary)
    bar = (extra or {}).get("full_supervision", {}).get("dice")
    plot_curves(out_dir / "curves.png", rows, bar)
    return summary
