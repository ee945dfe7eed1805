"""Active learning on a project's slides: superpixels, suggestions, and rounds that train on the stored labels.

Every step is a generator of :class:`~napari_wsl_al.core.progress.Progress` records that
returns its result, so the napari widgets run it in a thread worker and the CLI drains it.

A round (:func:`run_round`):

1. marks the round ``running`` in ``labels.sqlite`` (a round left running by a crash is marked
   aborted first, and its number is used again);
2. gathers the oracle labels of every slide and the tiles around them at the working
   resolution;
3. trains the joint model (from the previous round's checkpoint, or from the project's
   weakly-supervised model on the first round or with ``init="wsl"``);
4. writes ``checkpoints/round_NNNN.pt`` atomically;
5. scores the labelled slides' regions and stores the next suggestions;
6. marks the round ``done`` with its metrics and checkpoint. Until then nothing of the round
   is used: a round killed at any point is simply run again.

Region classes are ``("background", *project classes)``: the project's classes are the
image-level classes of the model, and a region of tissue that is none of them is background.

With ``ALSettings.label_prop``, a slide that is a patch folder also gets Label_prop pseudo
labels (WACV'21 Alg. 1, Eq. 1; :func:`label_prop_items`): once a round's model has a trained
segmentation head, the ``k`` nearest unlabelled patches of the same predicted image class to
every patch holding an oracle label are pseudo-segmented by it and trained on with weight
``lambda``. Their regions are stored in ``labels.sqlite`` as ``pseudo`` labels of the round
(the patch's pseudo-segmentation classes in the region, weight ``lambda``), which is how the
next round knows the pseudo-labelled set ``P``, and they are suggested only when no other
region of the slide is left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..device import resolve_device
from ..errors import ActiveLearningError, ProjectError
from ..models.checkpoint import save_checkpoint
from ..progress import Progress
from ..project import Project, slide_key
from .acquisition import STRATEGIES, RegionStats, colour_histograms, select_regions
from .labels import LabelStore
from .pseudo import LABEL_PROP_K, LABEL_PROP_LAMBDA, label_prop_set
from .superpixels import SuperpixelConfig, SuperpixelMap, compute_slide_superpixels
from .train import (
    RegionItem,
    RegionTrainConfig,
    load_round_model,
    predict_image_classes,
    predict_items,
    pseudo_segmentations,
    train_regions,
)

#: Name of the background region class (first of the region classes).
BACKGROUND = "background"

#: Key of the active-learning settings in ``project.json``'s settings.
SETTINGS_KEY = "active_learning"

#: Default working resolution of active learning, µm/px.
WORKING_MPP = 1.24


@dataclass(frozen=True)
class ALSettings:
    """Active-learning settings of a project (saved in ``project.json`` and with every round).

    Attributes
    ----------
    model : str
        Weakly-supervised checkpoint the first round starts from (``"default"``: the shipped
        model).
    strategy : str
        Acquisition function.
    n_suggestions : int
        Regions suggested per slide and round.
    no_adjacent : bool
        No two suggestions side by side (off by default: OREAL samples context next to
        foreground on purpose).
    init : {"previous", "wsl"}
        Fine-tune the previous round's model, or start every round from ``model``.
    superpixels : SuperpixelConfig
        Region size at the working resolution.
    mpp : float or None
        Working resolution (µm/px) of a new project's active learning: its superpixels, the
        tiles its rounds train on and the round models read the slides at it (1.24 µm/px: 32-px
        regions of about 40 µm, the resolution of the active-learning benchmark). None: the
        weakly-supervised model's resolution. A project that already has superpixels keeps
        theirs.
    train : RegionTrainConfig
        Each round's training.
    tile_px : int
        Side of the tiles read for training and scoring, at the working resolution.
    device : str
        ``auto``, ``cuda``, ``mps`` or ``cpu``.
    round_maps : bool
        After training, compute the new model's maps (:data:`ROUND_MAPS`) of every labelled
        slide into ``maps/<slide>.round_NNNN.zarr``: each round keeps its own maps, so rounds
        can be compared.
    label_prop : bool
        Label_prop pseudo labels on the slides that are patch folders (WACV'21).
    label_prop_k : int
        Label_prop: nearest unlabelled patches per labelled patch (WACV'21: 40).
    label_prop_lambda : float
        Label_prop: weight of the pseudo-labelled patches in the loss (WACV'21 on GlaS: 0.1).
    """

    model: str = "default"
    strategy: str = "oreal"
    n_suggestions: int = 20
    no_adjacent: bool = False
    init: str = "previous"
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    mpp: float | None = WORKING_MPP
    train: RegionTrainConfig = field(default_factory=RegionTrainConfig)
    tile_px: int = 512
    device: str = "auto"
    round_maps: bool = True
    label_prop: bool = False
    label_prop_k: int = LABEL_PROP_K
    label_prop_lambda: float = LABEL_PROP_LAMBDA

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.init not in ("previous", "wsl"):
            raise ValueError(f"init must be 'previous' or 'wsl', not {self.init!r}")
        if self.n_suggestions < 1:
            raise ValueError("n_suggestions must be at least 1")
        if self.mpp is not None and not (isinstance(self.mpp, (int, float)) and self.mpp > 0):
            raise ValueError(f"mpp must be a positive number of µm/px or None, not {self.mpp!r}")
        if self.label_prop_k < 1:
            raise ValueError(f"label_prop_k must be at least 1, not {self.label_prop_k}")
        if not self.label_prop_lambda >= 0:
            raise ValueError(f"label_prop_lambda must be >= 0, not {self.label_prop_lambda}")

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["superpixels"] = self.superpixels.to_json()
        data["train"] = self.train.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ALSettings:
        """Inverse of :meth:`to_json`; missing keys take their defaults."""
        data = dict(data or {})
        if "superpixels" in data:
            data["superpixels"] = SuperpixelConfig.from_json(data["superpixels"])
        if "train" in data:
            data["train"] = RegionTrainConfig.from_json(data["train"])
        return cls(**data)

    @classmethod
    def of_project(cls, project: Project) -> ALSettings:
        """The project's settings (defaults where it has none).

        Raises
        ------
        ProjectError
            When the stored settings are damaged (naming ``project.json``).
        """
        try:
            return cls.from_json(project.settings.get(SETTINGS_KEY))
        except (TypeError, ValueError, ActiveLearningError) as error:
            raise ProjectError(
                f"the active-learning settings are damaged: {error}",
                path=project.path / "project.json",
                hint="fix or remove settings.active_learning",
            ) from error

    def save_to(self, project: Project) -> None:
        """Store these settings in ``project.json``."""
        project.update_settings(**{SETTINGS_KEY: self.to_json()})


def region_classes(project: Project) -> tuple[str, ...]:
    """``("background", *project classes)``: the classes a region can be labelled with."""
    names = project.class_names
    return names if names and names[0] == BACKGROUND else (BACKGROUND, *names)


def superpixels_path(project: Project, slide: str) -> Path:
    """``superpixels/<slide>.zarr`` in the project."""
    return project.superpixels_path(slide)


#: Maps computed for each round: the segmentation head's class probabilities, the foreground
#: and the uncertainty maps.
ROUND_MAPS = ("fg", "seg", "uncertainty")


def round_maps_path(project: Project, slide: str, number: int) -> Path:
    """``maps/<slide>.round_NNNN.zarr``: the maps of round ``number``'s model on ``slide``."""
    return project.maps_dir / f"{slide_key(slide)}.round_{number:04d}.zarr"


def infer_round_maps(
    project: Project, slide: str, model, number: int, settings: ALSettings, device="cpu"
) -> Generator[Progress, None, Path]:
    """Compute round ``number``'s maps of ``slide`` with ``model`` (resumes a killed run).

    Closing this generator, or an error, closes the inference job first (its reader and
    writer threads stop and the map store's lock is released at once), then the slide.

    Returns
    -------
    Path
        The map store (:func:`round_maps_path`).
    """
    from ..infer import engine
    from ..infer.store import MapStore

    path = round_maps_path(project, slide, number)
    config = engine.InferenceConfig(device=str(device), maps=ROUND_MAPS,
                                    tile_size=settings.tile_px,
                                    overlap=min(128, settings.tile_px // 4))
    reader = open_project_slide(project, slide)
    try:
        job = engine.infer_slide(reader, model, config, MapStore(path))
        try:
            for progress in job:
                yield Progress(progress.step, progress.total,
                               f"round {number} maps of {slide}: {progress.message}")
        finally:
            job.close()
    finally:
        reader.close()
    return path


def checkpoint_path(project: Project, number: int) -> Path:
    """``checkpoints/round_NNNN.pt`` in the project."""
    return project.path / "checkpoints" / f"round_{number:04d}.pt"


def open_project_slide(project: Project, slide: str):
    """The reader of a registered slide, at the resolution the project records for it
    (:meth:`~napari_wsl_al.core.project.Project.open_slide`).

    Raises
    ------
    ProjectError
        When the slide is not in the project or has no file.
    """
    return project.open_slide(slide)


def working_mpp(reader, model_mpp: float | None) -> float | None:
    """The resolution superpixels and tiles are read at: the model's when the slide has one."""
    if reader.mpp is None or model_mpp is None:
        return None
    return float(model_mpp)


def ensure_superpixels(
    project: Project, slide: str, settings: ALSettings, reader=None, model_mpp: float | None = 0.62
) -> Generator[Progress, None, SuperpixelMap]:
    """The slide's superpixels, computed and stored in the project the first time."""
    path = superpixels_path(project, slide)
    if path.exists():
        return SuperpixelMap.open(path)
    own = reader is None
    reader = open_project_slide(project, slide) if own else reader
    try:
        config = settings.superpixels
        mpp = working_mpp(reader, model_mpp)
        if config.mpp != mpp:
            config = SuperpixelConfig.from_json({**config.to_json(), "mpp": mpp})
        result = yield from compute_slide_superpixels(reader, config, path)
        return result
    finally:
        if own:
            reader.close()


def label_region(
    store: LabelStore,
    superpixels: SuperpixelMap,
    slide: str,
    region_id: int,
    classes: Sequence[str],
    *,
    seconds: float = 0.0,
    clicks: int | None = None,
    source: str = "oracle",
    round_number: int | None = None,
):
    """Store a region's label with its outline and box in level-0 pixels (for GeoJSON export).

    Returns the stored :class:`~napari_wsl_al.core.al.labels.RegionLabel`.
    """
    region_id = int(region_id)
    if not 0 < region_id <= int(superpixels.n_regions):
        raise ActiveLearningError(
            f"slide {slide!r} has no superpixel {region_id}",
            hint="suggest again: the superpixels may have been recomputed",
        )
    polygon = superpixels.outline_rings_level0([region_id]).get(region_id)
    dominant = classes[0] if len(classes) == 1 else None
    return store.add_label(
        slide,
        region_id,
        list(classes),
        dominant=dominant,
        source=source,
        round=round_number,
        seconds=seconds,
        clicks=len(classes) if clicks is None else clicks,
        polygon=polygon,
    )


def read_working(
    reader, superpixels: SuperpixelMap, y0: int, x0: int, y1: int, x1: int
) -> np.ndarray:
    """RGB of a window of the superpixel grid (working resolution), ``(y1-y0, x1-x0, 3)``."""
    d = superpixels.downsample
    location = (round(x0 * d), round(y0 * d))
    size = (x1 - x0, y1 - y0)
    if superpixels.mpp is not None and reader.mpp is not None:
        return reader.read_region_mpp(location, superpixels.mpp, size)
    return reader.read_region(location, 0, size)


def _tiles_with_regions(superpixels: SuperpixelMap, tile: int, wanted: np.ndarray | None = None):
    """``(y0, x0, y1, x1)`` of the grid tiles holding a region (or one of ``wanted``)."""
    height, width = superpixels.labels.shape
    bboxes = np.asarray(superpixels.bboxes)
    ids = np.arange(1, bboxes.shape[0]) if wanted is None else np.asarray(wanted, dtype=np.int64)
    ids = ids[(ids > 0) & (ids < bboxes.shape[0])]
    if not ids.size:
        return []
    boxes = bboxes[ids]
    valid = boxes[:, 2] > boxes[:, 0]
    boxes = boxes[valid]
    row0, col0 = boxes[:, 0] // tile, boxes[:, 1] // tile
    row1, col1 = (
        np.maximum(boxes[:, 2] - 1, boxes[:, 0]) // tile,
        np.maximum(boxes[:, 3] - 1, boxes[:, 1]) // tile,
    )
    cells = set()
    for dr in (0, 1):
        for dc in (0, 1):
            rows = np.where(dr, row1, row0)
            cols = np.where(dc, col1, col0)
            cells.update(zip(rows.tolist(), cols.tolist()))
    out = []
    for r, c in sorted(cells):
        y0, x0 = r * tile, c * tile
        out.append((y0, x0, min(y0 + tile, height), min(x0 + tile, width)))
    return out


def score_slide(
    model,
    reader,
    superpixels: SuperpixelMap,
    settings: ALSettings,
    device="cpu",
    mc_passes: int = 0,
) -> Generator[Progress, None, RegionStats]:
    """Per-region statistics of the model's segmentation over the slide's regions, with the
    glass pixels of every region (so that glass is never suggested)."""
    stats = RegionStats(int(superpixels.n_regions), len(model.seg_classes))
    tiles = _tiles_with_regions(superpixels, settings.tile_px)
    for index, (y0, x0, y1, x1) in enumerate(tiles):
        ids = np.asarray(superpixels.read(y0, x0, y1, x1), dtype=np.int64)
        if not ids.any():
            continue
        item = RegionItem(f"{y0},{x0}", read_working(reader, superpixels, y0, x0, y1, x1), ids)
        for _, probs, _, mc in predict_items(model, [item], device, mc_passes=mc_passes):
            stats.add_image(ids, probs, mc, image=item.image)
        yield Progress(index + 1, len(tiles), f"scoring regions: tile {index + 1} of {len(tiles)}")
    return stats


def current_model(project: Project, settings: ALSettings, device="cpu"):
    """The latest finished round's model, or the project's weakly-supervised model converted.

    Returns
    -------
    model : JointModel
    round : int or None
        The round it comes from (None: not trained on labels yet).
    """
    classes = region_classes(project)
    with LabelStore.for_project(project.path) as store:
        last = store.last_done_round()
        record = next((r for r in store.rounds() if r.number == last), None) if last else None
    if record is not None and record.checkpoint and Path(record.checkpoint).exists():
        model, _ = load_round_model(record.checkpoint, classes, device)
        return model, record.number
    return _initial_model(project, settings, device), None


def _initial_model(project: Project, settings: ALSettings, device):
    from ..infer.loading import load_inference_model
    from .train import joint_from_wsl

    classes = region_classes(project)
    mpp = stored_working_mpp(project)
    if mpp is None:
        mpp = settings.mpp
    if settings.model == "default":
        wsl = load_inference_model("default", "cpu")
        project.check_model_classes(wsl.classes, "the default model")
        model, _ = joint_from_wsl(wsl, classes, mpp=mpp)
        return model.to(device)
    model, _ = load_round_model(settings.model, classes, device, mpp=mpp)
    project.check_model_classes(model.classes, f"model {settings.model}")
    return model


def stored_working_mpp(project: Project) -> float | None:
    """The resolution of the superpixels the project has already computed (the first slide's
    with a resolution), so that a project keeps working at it; None when it has none."""
    for slide in project.slide_names():
        path = superpixels_path(project, slide)
        if path.exists():
            mpp = SuperpixelMap.open(path).mpp
            if mpp is not None:
                return float(mpp)
    return None


def suggest(
    project: Project,
    slide: str,
    settings: ALSettings | None = None,
    model=None,
    round_number: int | None = None,
    strategy: str | None = None,
    n: int | None = None,
) -> Generator[Progress, None, Any]:
    """Score a slide's regions and store the next ``n`` suggestions; returns the Selection.

    Until a round has trained the segmentation head, its maps say nothing about the regions,
    so the first suggestions are random tissue regions (the papers' first round; mostly-glass
    regions are still left out), drawn with a fixed seed so that they are the same from run
    to run; the Selection's ``strategy`` is then ``"random"``.
    """
    settings = settings or ALSettings.of_project(project)
    device = resolve_device(settings.device)
    if model is None:
        model, round_number = current_model(project, settings, device)
    reader = open_project_slide(project, slide)
    try:
        superpixels = yield from ensure_superpixels(project, slide, settings, reader, model.mpp)
        strategy = strategy or settings.strategy
        if not bool(getattr(model, "segmentation_trained", True)):
            strategy = "random"
        mc = 4 if strategy == "mc_dropout" else 0
        stats = yield from score_slide(model, reader, superpixels, settings, device, mc)
    finally:
        reader.close()
    with LabelStore.for_project(project.path) as store:
        labelled = store.labelled_ids(slide)
        counts = store.counts(classes=region_classes(project))
        class_counts = [counts.get(name, 0) for name in region_classes(project)]
        adjacency = superpixels.adjacency()
        protected = store.labelled_ids(slide, source="pseudo") if settings.label_prop else None
        selection = select_regions(
            stats,
            strategy,
            n or settings.n_suggestions,
            labelled=labelled,
            adjacency=adjacency,
            no_adjacent=settings.no_adjacent,
            class_counts=class_counts,
            rng=np.random.default_rng(round_number or 0),
            protected=protected,
        )
        store.save_suggestions(slide, round_number or 0, strategy, selection.ids, selection.scores)
    return selection


def training_items(
    project: Project,
    store: LabelStore,
    settings: ALSettings,
    classes: Sequence[str],
) -> Generator[Progress, None, tuple[list[RegionItem], np.ndarray, np.ndarray, dict]]:
    """Tiles around the labelled regions of every slide, ids offset to be unique over slides.

    Returns
    -------
    items, region_classes (R+1, K) bool, adjacency (E, 2), counts per class name
    """
    labels = store.current(source="oracle")
    by_slide: dict[str, list] = {}
    for label in labels:
        by_slide.setdefault(label.slide, []).append(label)
    index = {name: i for i, name in enumerate(classes)}
    items: list[RegionItem] = []
    tables, adjacencies = [], []
    offset = 0
    for slide, slide_labels in by_slide.items():
        unknown = {c for lab in slide_labels for c in lab.classes} - set(index)
        if unknown:
            raise ActiveLearningError(
                f"labels of slide {slide!r} use classes {sorted(unknown)} that the project lacks",
                path=project.path / "project.json",
                hint="add the classes to the project",
            )
        reader = open_project_slide(project, slide)
        try:
            superpixels = SuperpixelMap.open(superpixels_path(project, slide))
            n_regions = int(superpixels.n_regions)
            table = np.zeros((n_regions + 1, len(classes)), dtype=bool)
            ids = np.array([lab.region_id for lab in slide_labels], dtype=np.int64)
            for lab in slide_labels:
                table[lab.region_id, [index[c] for c in lab.classes]] = True
            for y0, x0, y1, x1 in _tiles_with_regions(superpixels, settings.tile_px, ids):
                sp = np.asarray(superpixels.read(y0, x0, y1, x1), dtype=np.int64)
                rgb = read_working(reader, superpixels, y0, x0, y1, x1)
                sp = np.where(sp > 0, sp + offset, 0)
                items.append(RegionItem(f"{slide}@{x0},{y0}", rgb, sp))
            tables.append(table[1:])
            adjacencies.append(np.asarray(superpixels.adjacency(), dtype=np.int64) + offset)
            offset += n_regions
        finally:
            reader.close()
        yield Progress(len(tables), len(by_slide), f"reading the labelled tiles of {slide}")
    table = (
        np.concatenate([np.zeros((1, len(classes)), bool)] + tables)
        if tables
        else np.zeros((1, len(classes)), bool)
    )
    adjacency = np.concatenate(adjacencies) if adjacencies else np.zeros((0, 2), np.int64)
    counts = {name: int(table[:, i].sum()) for name, i in index.items()}
    return items, table, adjacency, counts


def patch_windows(reader, superpixels: SuperpixelMap) -> list[tuple[int, int, int, int]]:
    """``(y0, x0, y1, x1)`` of every patch of a patch folder on the superpixel grid.

    The windows :func:`~napari_wsl_al.core.al.superpixels.compute_slide_superpixels` cuts the
    patches in.
    """
    d = float(superpixels.downsample)
    height, width = superpixels.labels.shape
    windows = []
    for bx, by, bw, bh in reader.patch_boxes:
        y0, x0 = math.ceil(by / d - 1e-9), math.ceil(bx / d - 1e-9)
        y1 = min(height, max(y0 + 1, math.floor((by + bh) / d + 1e-9)))
        x1 = min(width, max(x0 + 1, math.floor((bx + bw) / d + 1e-9)))
        windows.append((y0, x0, y1, x1))
    return windows


def label_prop_items(
    project: Project,
    store: LabelStore,
    settings: ALSettings,
    model,
    classes: Sequence[str],
    device="cpu",
) -> Generator[Progress, None, tuple[list[RegionItem], list[np.ndarray], list[dict], dict]]:
    """Label_prop's pseudo-labelled patches of the patch-folder slides (WACV'21 Alg. 1).

    For every slide that is a patch folder and holds oracle labels: a patch is labelled when
    it holds an oracle label; ``P`` is updated from the previous round's (the patches of the
    live ``pseudo`` labels) by :func:`~napari_wsl_al.core.al.pseudo.label_prop_set`, with the
    image-level classes predicted by ``model``'s classification head; and every patch of ``P``
    gets its pseudo-segmentation from ``model``'s segmentation head (foreground, in the
    region class named as the predicted class, where ``1 - P(background) > 0.5``; each pixel's
    most probable class when no region class has that name). Nothing happens while the model's
    segmentation head has not been trained (``P_0`` is empty).

    Returns
    -------
    items : list of RegionItem
        The pseudo-labelled patches at the working resolution (no region ids: they train on
        their pseudo-segmentation only).
    maps : list of ndarray
        Their pseudo-segmentations (classes indexing ``classes``).
    rows : list of dict
        ``pseudo`` labels to store (:meth:`LabelStore.replace_pseudo_labels`): every region of
        those patches with the classes its pseudo-segmentation gives it, the most frequent as
        dominant, weight ``lambda``.
    counts : dict
        Pseudo-labelled patches per slide.
    """
    from ..infer.engine import is_patch_folder

    items: list[RegionItem] = []
    maps: list[np.ndarray] = []
    rows: list[dict] = []
    counts: dict[str, int] = {}
    if not bool(model.segmentation_trained):
        return items, maps, rows, counts
    slides = sorted({label.slide for label in store.current(source="oracle")})
    for slide in slides:
        reader = open_project_slide(project, slide)
        try:
            if not is_patch_folder(reader):
                continue
            superpixels = SuperpixelMap.open(superpixels_path(project, slide))
            windows = patch_windows(reader, superpixels)
            labelled_ids = set(store.labelled_ids(slide).tolist())
            pseudo_ids = set(store.labelled_ids(slide, source="pseudo").tolist())
            patches, labelled, previous = [], np.zeros(len(windows), bool), np.zeros(
                len(windows), bool)
            for index, (y0, x0, y1, x1) in enumerate(windows):
                ids = np.asarray(superpixels.read(y0, x0, y1, x1), dtype=np.int64)
                rgb = read_working(reader, superpixels, y0, x0, y1, x1)
                present = set(np.unique(ids[ids > 0]).tolist())
                labelled[index] = bool(present & labelled_ids)
                previous[index] = bool(present & pseudo_ids)
                patches.append(RegionItem(f"{slide}/{reader.patch_names[index]}", rgb, ids))
                yield Progress(index + 1, len(windows),
                               f"Label_prop: reading patch {index + 1} of {len(windows)} of {slide}")
        finally:
            reader.close()
        image_classes = predict_image_classes(model, patches, device)
        pseudo = label_prop_set(colour_histograms(p.image for p in patches), image_classes,
                                labelled, previous, settings.label_prop_k)
        members = np.flatnonzero(pseudo).tolist()
        # the region class of each patch's predicted image class (by name)
        index_of = {name: i for i, name in enumerate(classes) if i > 0}
        foreground = [index_of.get(model.classes[int(image_classes[i])]) for i in members]
        masks = pseudo_segmentations(model, [patches[i] for i in members], foreground, device)
        for index, mask in zip(members, masks):
            patch = patches[index]
            items.append(RegionItem(patch.name, patch.image, np.zeros_like(patch.superpixels)))
            maps.append(mask)
            rows.extend(_pseudo_rows(slide, patch.superpixels, mask, classes,
                                     settings.label_prop_lambda))
        counts[slide] = len(members)
    return items, maps, rows, counts


def _pseudo_rows(slide: str, ids: np.ndarray, mask: np.ndarray, classes: Sequence[str],
                 weight: float) -> list[dict]:
    """One ``pseudo`` label per region of a patch: the classes of its pseudo-segmentation."""
    n_classes = len(classes)
    inside = (ids > 0) & (mask < n_classes)
    region_ids, region_index = np.unique(ids[inside], return_inverse=True)
    table = np.zeros((region_ids.size, n_classes), np.int64)
    np.add.at(table, (region_index, mask[inside].astype(np.int64)), 1)
    rows = []
    for region_id, row in zip(region_ids.tolist(), table):
        present = np.flatnonzero(row)
        rows.append({
            "slide": slide,
            "region_id": int(region_id),
            "classes": [classes[c] for c in present],
            "dominant": classes[int(row.argmax())],
            "weight": float(weight),
        })
    return rows


def run_round(
    project: Project,
    settings: ALSettings | None = None,
    suggest_after: bool = True,
) -> Generator[Progress, None, dict[str, Any]]:
    """Train the next round from the stored labels, checkpoint it and suggest again.

    Returns
    -------
    dict
        ``round``, ``checkpoint``, ``metrics`` (loss, labels, seconds, labels per class).

    Raises
    ------
    ActiveLearningError
        When the project has no oracle label yet.
    """
    settings = settings or ALSettings.of_project(project)
    device = resolve_device(settings.device)
    classes = region_classes(project)
    start = time.perf_counter()
    with LabelStore.for_project(project.path) as store:
        store.discard_unfinished()
        if not store.current(source="oracle"):
            raise ActiveLearningError(
                "the project has no labels yet",
                path=project.path,
                hint="label some suggested regions first",
            )
        number = (store.last_done_round() or 0) + 1
        store.start_round(number, settings.to_json())
        try:
            yield Progress(0, None, f"round {number}: loading the model")
            if settings.init == "previous":
                model, _ = current_model(project, settings, device)
            else:
                model = _initial_model(project, settings, device)
            items, table, adjacency, counts = yield from training_items(
                project, store, settings, classes
            )
            pseudo_maps, pseudo_rows, pseudo_counts = None, [], {}
            if settings.label_prop:
                # pseudo labels come from the newest model, also when this round starts afresh
                newest = model if settings.init == "previous" else current_model(
                    project, settings, device)[0]
                pseudo_items, masks, pseudo_rows, pseudo_counts = yield from label_prop_items(
                    project, store, settings, newest, classes, device
                )
                if pseudo_items:
                    pseudo_maps = [None] * len(items) + masks
                    items = items + pseudo_items
            result = yield from train_regions(
                model, items, table, settings.train, device, adjacency=adjacency,
                pseudo_maps=pseudo_maps, pseudo_weight=settings.label_prop_lambda,
            )
            checkpoint = checkpoint_path(project, number)
            metrics = {
                "loss": result["loss"],
                "labels": int(table.any(axis=1).sum()),
                "labels_per_class": counts,
                "train_seconds": result["seconds"],
                "clicks": store.total_clicks(),
                "annotation_seconds": store.total_seconds(),
            }
            if settings.label_prop:
                metrics["pseudo_patches"] = pseudo_counts
                metrics["pseudo_regions"] = len(pseudo_rows)
            save_checkpoint(
                checkpoint,
                model,
                model.config,
                extra={
                    "round": number,
                    "settings": settings.to_json(),
                    "metrics": metrics,
                    "region_classes": list(classes),
                },
            )
            if settings.label_prop:
                # The round's P: kept for the next round and protected from suggestions.
                store.replace_pseudo_labels(number, pseudo_rows)
            slides = sorted({lab.slide for lab in store.current(source="oracle")})
            if settings.round_maps:
                for slide in slides:
                    yield from infer_round_maps(project, slide, model, number, settings, device)
            if suggest_after:
                for slide in slides:
                    yield from suggest(project, slide, settings, model, number)
            metrics["seconds"] = time.perf_counter() - start
            store.finish_round(number, metrics, str(checkpoint))
        except BaseException as error:
            store.fail_round(number, f"{type(error).__name__}: {error}")
            raise
    yield Progress(1, 1, f"round {number} done: loss {metrics['loss']:.3f}")
    return {"round": number, "checkpoint": str(checkpoint), "metrics": metrics}


def resolve_polygon(
    project: Project, slide: str | None, polygon: np.ndarray, min_cover: float = 0.5
) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Superpixels of ``slide`` covered at least ``min_cover`` by a level-0 ``(x, y)`` polygon
    (GeoJSON import); returns ``(region id, level-0 bbox)`` pairs."""
    from skimage.draw import polygon as fill_polygon

    if slide is None:
        raise ActiveLearningError(
            "a GeoJSON feature names no slide", hint="add a 'slide' property to every feature"
        )
    superpixels = SuperpixelMap.open(superpixels_path(project, slide))
    d = superpixels.downsample
    xy = np.asarray(polygon, dtype=np.float64) / d
    height, width = superpixels.labels.shape
    x0, y0 = max(0, int(np.floor(xy[:, 0].min()))), max(0, int(np.floor(xy[:, 1].min())))
    x1, y1 = (
        min(width, int(np.ceil(xy[:, 0].max())) + 1),
        min(height, int(np.ceil(xy[:, 1].max())) + 1),
    )
    if x1 <= x0 or y1 <= y0:
        return []
    window = np.asarray(superpixels.read(y0, x0, y1, x1), dtype=np.int64)
    inside = np.zeros(window.shape, dtype=bool)
    rr, cc = fill_polygon(xy[:, 1] - y0, xy[:, 0] - x0, shape=window.shape)
    inside[rr, cc] = True
    counts = np.bincount(window[inside], minlength=superpixels.n_regions + 1)
    sizes = np.asarray(superpixels.pixel_counts)
    ids = np.flatnonzero((counts > 0) & (counts >= min_cover * np.maximum(sizes[: counts.size], 1)))
    ids = ids[ids > 0]
    out = []
    for region in ids.tolist():
        r0, c0, r1, c1 = (int(v) for v in superpixels.bboxes[region])
        out.append((region, (int(c0 * d), int(r0 * d), int(c1 * d), int(r1 * d))))
    return out
