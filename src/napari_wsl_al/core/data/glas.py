"""Image-level labelled patch data sets on disk: the GlaS layout, one folder per class, splits."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import DatasetError

#: File extensions read as images, in order of preference when a name has several.
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")

#: GlaS images are 20x Zeiss MIRAX MIDI scans; ``../shared/data/README.md`` gives the objective
#: (20x) but not the pixel size, so this is the usual figure quoted for GlaS (0.62 um/px).
GLAS_MPP = 0.62

#: Columns of the GlaS ``grade.csv`` (after stripping spaces); the class is ``grade (GlaS)``.
GLAS_NAME_COLUMN = "name"
GLAS_PATIENT_COLUMN = "patient ID"
GLAS_CLASS_COLUMN = "grade (GlaS)"


@dataclass(frozen=True)
class PatchRecord:
    """One labelled image of a data set.

    Attributes
    ----------
    name : str
        Identifier of the image (file name without extension).
    image_path : Path
        The RGB image file.
    mask_path : Path or None
        Binary foreground mask (0 = background, > 0 = foreground), when there is one.
    label : int
        Index of the image-level class in the data set's ``classes``.
    class_name : str
        Name of the image-level class.
    patient_id : str or None
        Patient (or slide) the image comes from, when known; splits keep patients together.
    """

    name: str
    image_path: Path
    mask_path: Path | None
    label: int
    class_name: str
    patient_id: str | None = None


@dataclass(frozen=True)
class PatchDataset:
    """An ordered collection of :class:`PatchRecord` with its class names.

    Attributes
    ----------
    root : Path
        Folder the data set was read from.
    classes : tuple of str
        Class names; ``record.label`` indexes this tuple.
    records : tuple of PatchRecord
        The images.
    mpp : float or None
        Microns per pixel of the images, when known.
    """

    root: Path
    classes: tuple[str, ...]
    records: tuple[PatchRecord, ...] = field(default_factory=tuple)
    mpp: float | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PatchRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> PatchRecord:
        return self.records[index]

    @property
    def labels(self) -> np.ndarray:
        """Image-level class indices, ``(N,)`` int64."""
        return np.array([record.label for record in self.records], dtype=np.int64)

    @property
    def has_masks(self) -> bool:
        """True when every image has a foreground mask."""
        return bool(self.records) and all(r.mask_path is not None for r in self.records)

    @property
    def has_patient_ids(self) -> bool:
        """True when every image has a patient identifier."""
        return bool(self.records) and all(r.patient_id is not None for r in self.records)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name (every class listed, zeros included)."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}

    def subset(self, indices: Sequence[int]) -> PatchDataset:
        """A data set of the records at ``indices``, with the same classes."""
        return replace(self, records=tuple(self.records[int(i)] for i in indices))


@dataclass(frozen=True)
class DatasetSplit:
    """A training / validation split.

    Attributes
    ----------
    train, val : PatchDataset
        The two parts.
    grouped_by : str
        ``"patient"`` when no patient is in both parts, ``"image"`` when images were split
        individually (the data set has no patient ids), ``"none"`` when every image is in
        the training part.
    val_groups : tuple of str
        Patient ids (or image names, when grouped by image) in the validation part.
    seed : int
        Seed of the split.
    """

    train: PatchDataset
    val: PatchDataset
    grouped_by: str
    val_groups: tuple[str, ...]
    seed: int

    def to_dict(self) -> dict:
        """JSON-friendly description of the split (for logs and checkpoints)."""
        return {
            "grouped_by": self.grouped_by,
            "seed": self.seed,
            "train_images": [r.name for r in self.train],
            "val_images": [r.name for r in self.val],
            "val_groups": list(self.val_groups),
            "train_class_counts": self.train.class_counts(),
            "val_class_counts": self.val.class_counts(),
        }


def _find_image(folder: Path, name: str) -> Path | None:
    for extension in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{name}{extension}", folder / f"{name}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _check_folder(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError("data set folder not found", root, hint="check the path")
    if not root.is_dir():
        raise DatasetError("not a folder", root, hint="give the folder that holds the data set")
    return root


def _normalised_column(name: str) -> str:
    return " ".join(name.split()).lower()


def _resolve_classes(found, classes, what: str, path: Path) -> tuple[str, ...]:
    """The class tuple: ``found`` in order when ``classes`` is None, else ``classes`` checked
    to contain every found name (a :class:`DatasetError` naming ``path`` otherwise)."""
    if classes is None:
        return tuple(found)
    classes = tuple(classes)
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise DatasetError(
            f"unknown {what} {', '.join(repr(u) for u in unknown)}",
            path,
            hint=f"expected one of {', '.join(repr(c) for c in classes)}",
        )
    return classes


def load_glas(
    root: str | Path,
    classes: Sequence[str] | None = None,
    class_column: str = GLAS_CLASS_COLUMN,
    mpp: float | None = GLAS_MPP,
) -> PatchDataset:
    """Read a data set in the GlaS layout.

    The layout is ``images/<name>.png``, optional ``masks/<name>.png`` (0 = background,
    255 = foreground) and ``grade.csv`` with the columns ``name, patient ID, grade (GlaS),
    grade (Sirinukunwattana et al. 2015)``; the image-level class is ``grade (GlaS)``.
    Spaces around column names and values are ignored.

    Parameters
    ----------
    root : str or Path
        The data set folder.
    classes : sequence of str, optional
        Class names in the order of the model's outputs; default: the sorted names found in
        the csv. A class in the csv but not in ``classes`` is an error.
    class_column : str
        Column holding the image-level class.
    mpp : float or None
        Microns per pixel of the images (GlaS: :data:`GLAS_MPP`).

    Returns
    -------
    PatchDataset

    Raises
    ------
    DatasetError
        The folder, ``images/`` or ``grade.csv`` is missing, the csv lacks the columns, lists
        images that are not there, has an empty or unknown class, or lists no image.
    """
    root = _check_folder(root)
    images_dir = root / "images"
    masks_dir = root / "masks"
    csv_path = root / "grade.csv"
    if not images_dir.is_dir():
        raise DatasetError(
            "no 'images' folder", root, hint="the GlaS layout is images/, masks/ and grade.csv"
        )
    if not csv_path.is_file():
        raise DatasetError(
            "no 'grade.csv'",
            root,
            hint="add grade.csv with the columns 'name, patient ID, grade (GlaS)', "
            "or use one sub-folder per class",
        )
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read the csv ({error})", csv_path) from error
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError("the csv is empty", csv_path, hint="add a header and one row per image")
    header = [_normalised_column(cell) for cell in rows[0]]
    wanted = {
        "name": _normalised_column(GLAS_NAME_COLUMN),
        "class": _normalised_column(class_column),
    }
    missing = [column for column in wanted.values() if column not in header]
    if missing:
        raise DatasetError(
            f"the csv has no column {', '.join(repr(m) for m in missing)} "
            f"(columns: {', '.join(repr(c.strip()) for c in rows[0])})",
            csv_path,
            hint=f"the header must name the columns '{GLAS_NAME_COLUMN}' and '{class_column}'",
        )
    name_index = header.index(wanted["name"])
    class_index = header.index(wanted["class"])
    patient_column = _normalised_column(GLAS_PATIENT_COLUMN)
    patient_index = header.index(patient_column) if patient_column in header else None

    entries = []
    for line_number, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row]
        if len(cells) <= max(name_index, class_index):
            raise DatasetError(
                f"line {line_number} has {len(cells)} columns, fewer than the header",
                csv_path,
                hint="every row needs a name and a class",
            )
        name, class_name = cells[name_index], cells[class_index]
        if not name or not class_name:
            raise DatasetError(
                f"line {line_number} has an empty name or class", csv_path, hint="fill it in"
            )
        patient = None
        if patient_index is not None and patient_index < len(cells) and cells[patient_index]:
            patient = cells[patient_index]
        entries.append((name, class_name, patient))
    if not entries:
        raise DatasetError("the csv lists no image", csv_path, hint="add one row per image")

    found_classes = sorted({class_name for _, class_name, _ in entries})
    classes = _resolve_classes(found_classes, classes, "class name(s)", csv_path)

    missing_images = []
    records = []
    for name, class_name, patient in entries:
        image_path = _find_image(images_dir, name)
        if image_path is None:
            missing_images.append(name)
            continue
        mask_path = _find_image(masks_dir, name) if masks_dir.is_dir() else None
        records.append(
            PatchRecord(
                name=name,
                image_path=image_path,
                mask_path=mask_path,
                label=classes.index(class_name),
                class_name=class_name,
                patient_id=patient,
            )
        )
    if missing_images:
        shown = ", ".join(missing_images[:5]) + (" ..." if len(missing_images) > 5 else "")
        raise DatasetError(
            f"{len(missing_images)} image(s) listed in grade.csv are missing: {shown}",
            images_dir,
            hint=f"add them as images/<name>.png, or remove their rows from {csv_path.name}",
        )
    return PatchDataset(root=root, classes=classes, records=tuple(records), mpp=mpp)


def load_class_folders(
    root: str | Path, classes: Sequence[str] | None = None, mpp: float | None = None
) -> PatchDataset:
    """Read a data set laid out as one sub-folder of images per class.

    ``root/<class name>/<image>.png``; an optional ``masks`` folder inside a class folder
    holds masks of the same names. Hidden folders are skipped.

    Parameters
    ----------
    root : str or Path
        The data set folder.
    classes : sequence of str, optional
        Class names (sub-folder names) in the order of the model's outputs; default: the
        sorted sub-folder names. A sub-folder not in ``classes`` is an error.
    mpp : float or None
        Microns per pixel of the images, when known.

    Raises
    ------
    DatasetError
        The folder is missing, has no class sub-folder, an unknown or a missing class, or a
        class without images.
    """
    root = _check_folder(root)
    folders = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )
    if not folders:
        raise DatasetError(
            "no class sub-folders",
            root,
            hint="put the images of each class in a sub-folder named after the class, "
            "or use the GlaS layout (images/, masks/, grade.csv)",
        )
    found = [p.name for p in folders]
    classes = _resolve_classes(found, classes, "class folder(s)", root)
    absent = [name for name in classes if name not in found]
    if absent:
        raise DatasetError(
            f"no folder for class(es) {', '.join(repr(a) for a in absent)}",
            root,
            hint="add a sub-folder of images for every class",
        )
    records = []
    for label, class_name in enumerate(classes):
        folder = root / class_name
        masks_dir = folder / "masks"
        images = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise DatasetError(
                "class folder has no image",
                folder,
                hint=f"add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the folder",
            )
        for image_path in images:
            mask_path = _find_image(masks_dir, image_path.stem) if masks_dir.is_dir() else None
            records.append(
                PatchRecord(
                    name=image_path.stem,
                    image_path=image_path,
                    mask_path=mask_path,
                    label=label,
                    class_name=class_name,
                )
            )
    return PatchDataset(root=root, classes=classes, records=tuple(records), mpp=mpp)


def load_dataset(root: str | Path, classes: Sequence[str] | None = None) -> PatchDataset:
    """Read a data set in either layout: GlaS when ``grade.csv`` or ``images/`` is there,
    else one folder per class."""
    root = _check_folder(root)
    if (root / "grade.csv").exists() or (root / "images").is_dir():
        return load_glas(root, classes=classes)
    return load_class_folders(root, classes=classes)


def _groups(dataset: PatchDataset) -> tuple[bool, dict[str, list[int]]]:
    """``(by_patient, groups)``: image indices per patient, or one group per image when the
    data set has fewer than two patient ids."""
    by_patient = dataset.has_patient_ids and len({r.patient_id for r in dataset}) > 1
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(dataset.records):
        key = record.patient_id if by_patient else record.name + f"#{index}"
        groups.setdefault(key, []).append(index)
    return by_patient, groups


def split_by_patient(
    dataset: PatchDataset, val_fraction: float = 0.2, seed: int = 0
) -> DatasetSplit:
    """Split a data set into training and validation parts, keeping each patient in one part.

    Whole patients go to the validation part until it holds about ``val_fraction`` of the
    images, with about the class balance of the whole data set, and every class with at
    least two images in both parts when possible: among a few hundred seeded random orders
    of the patients, the prefix closest in size and class balance is taken. Without patient
    ids (or with a single patient), images are split individually in the same way and
    ``grouped_by`` says ``"image"``.

    Parameters
    ----------
    dataset : PatchDataset
        The data set.
    val_fraction : float
        Target fraction of images in the validation part, in ``[0, 1)``; 0 puts every image
        in the training part (``grouped_by`` is then ``"none"``).
    seed : int
        Seed of the random order.

    Returns
    -------
    DatasetSplit
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return DatasetSplit(train=dataset, val=dataset.subset([]), grouped_by="none",
                            val_groups=(), seed=seed)
    if len(dataset) < 2:
        raise DatasetError(
            f"{len(dataset)} image(s): too few to split", dataset.root, hint="add images"
        )
    by_patient, groups = _groups(dataset)
    grouped_by = "patient" if by_patient else "image"
    labels = dataset.labels
    n_classes = len(dataset.classes)
    keys = sorted(groups, key=_natural_key)
    group_counts = np.stack(
        [np.bincount(labels[groups[key]], minlength=n_classes) for key in keys]
    )  # (G, C) images per group and class
    total_counts = group_counts.sum(axis=0)
    target = val_fraction * len(dataset)
    rng = np.random.default_rng(seed)
    best_score, val_keys = np.inf, []
    for _ in range(_SPLIT_TRIALS):
        order = rng.permutation(len(keys))
        cumulative = np.cumsum(group_counts[order], axis=0)  # (G, C) val counts per prefix
        sizes = cumulative.sum(axis=1)
        # class balance of the validation part vs the whole, and every class in both parts
        balance = np.abs(cumulative / sizes[:, None] - total_counts / len(dataset)).sum(axis=1)
        present = total_counts > 1
        missing = ((cumulative[:, present] == 0) | (cumulative[:, present] == total_counts[present]))
        score = np.abs(sizes - target) / len(dataset) + 0.5 * balance + missing.sum(axis=1)
        score[sizes >= len(dataset)] = np.inf
        prefix = int(np.argmin(score))
        if score[prefix] < best_score:
            best_score = score[prefix]
            val_keys = [keys[i] for i in order[: prefix + 1]]
    val_set = set(val_keys)
    val_indices = sorted(i for key in val_keys for i in groups[key])
    train_indices = sorted(i for key, idx in groups.items() if key not in val_set for i in idx)
    if by_patient:
        shown_groups = tuple(sorted(val_keys, key=_natural_key))
    else:
        shown_groups = tuple(dataset.records[i].name for i in val_indices)
    return DatasetSplit(
        train=dataset.subset(train_indices),
        val=dataset.subset(val_indices),
        grouped_by=grouped_by,
        val_groups=shown_groups,
        seed=seed,
    )


_SPLIT_TRIALS = 256


def patient_folds(dataset: PatchDataset, k: int = 5, seed: int = 0) -> list[DatasetSplit]:
    """K-fold cross-validation grouped by patient: every patient's images in one fold.

    Patients are dealt to the folds so that the folds are about equal in size and in class
    balance: among a few hundred seeded random orders of the patients, each dealt greedily
    (a patient goes to the fold where it adds least to the imbalance), the most even
    assignment is kept. Without patient ids, images are dealt individually
    (``grouped_by == "image"``).

    Parameters
    ----------
    dataset : PatchDataset
        The data set.
    k : int
        Number of folds, at least 2 and at most the number of patients (or images).
    seed : int
        Seed of the random orders.

    Returns
    -------
    list of DatasetSplit
        ``k`` splits; split ``i`` has fold ``i`` as ``val`` and the other folds as ``train``.
        Every image is in exactly one ``val`` part.
    """
    by_patient, groups = _groups(dataset)
    keys = sorted(groups, key=_natural_key)
    if not 2 <= k <= len(keys):
        raise DatasetError(
            f"{k}-fold cross-validation needs between 2 and {len(keys)} folds "
            f"({len(keys)} {'patients' if by_patient else 'images'})",
            dataset.root, hint="choose fewer folds",
        )
    n_classes = len(dataset.classes)
    counts = np.stack(
        [np.bincount(dataset.labels[groups[key]], minlength=n_classes) for key in keys]
    ).astype(float)  # (G, C)
    target = counts.sum(axis=0) / k  # images of each class per fold
    rng = np.random.default_rng(seed)
    best_score, best_assignment = np.inf, np.arange(len(keys)) % k
    for _ in range(_SPLIT_TRIALS):
        order = rng.permutation(len(keys))
        folds = np.zeros((k, n_classes))
        assignment = np.empty(len(keys), dtype=int)
        for group in order:
            # squared excess over the per-class target if the group joins each fold
            cost = (np.maximum(folds + counts[group] - target, 0.0) ** 2).sum(axis=1)
            cost += 1e-6 * folds.sum(axis=1)  # ties: the smaller fold
            fold = int(np.argmin(cost))
            folds[fold] += counts[group]
            assignment[group] = fold
        score = float(((folds - target) ** 2).sum())
        if np.any(folds.sum(axis=1) == 0):
            score = np.inf
        if score < best_score - 1e-12:
            best_score, best_assignment = score, assignment.copy()
    splits = []
    for fold in range(k):
        val_keys = [key for key, a in zip(keys, best_assignment) if a == fold]
        val_indices = sorted(i for key in val_keys for i in groups[key])
        train_indices = sorted(
            i for key, a in zip(keys, best_assignment) if a != fold for i in groups[key]
        )
        shown = (tuple(val_keys) if by_patient
                 else tuple(dataset.records[i].name for i in val_indices))
        splits.append(
            DatasetSplit(
                train=dataset.subset(train_indices),
                val=dataset.subset(val_indices),
                grouped_by="patient" if by_patient else "image",
                val_groups=shown,
                seed=seed,
            )
        )
    return splits


def _natural_key(text: str) -> tuple:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)
