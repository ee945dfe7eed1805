"""Tests of the GlaS / class-folder data set loaders, the patient split and the torch patch data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_wsl_al.core.data.glas import (
    GLAS_MPP,
    load_class_folders,
    load_dataset,
    load_glas,
    split_by_patient,
)
from napari_wsl_al.core.data.patches import (
    IGNORE_INDEX,
    NO_AUGMENTATION,
    AugmentConfig,
    PatchTorchDataset,
    read_mask,
    read_rgb,
    stain_jitter,
)
from napari_wsl_al.core.errors import DatasetError

GLAS_TRAIN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "glas_train"
HEADER = "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\n"


def write_glas(root: Path, rows, size=(40, 30), masks=True) -> Path:
    """A tiny GlaS-layout folder; rows are (name, patient, class)."""
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    lines = [HEADER]
    for name, patient, class_name in rows:
        image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        if masks:
            mask = np.zeros((size[1], size[0]), np.uint8)
            mask[5:15, 5:20] = 255
            Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        lines.append(f"{name},{patient}, {class_name}, whatever\n")
    (root / "grade.csv").write_text("".join(lines))
    return root


ROWS = [(f"train_{i}", str(i // 2), "benign" if i % 4 < 2 else "malignant") for i in range(12)]


@pytest.mark.skipif(not GLAS_TRAIN.is_dir(), reason="shared GlaS data not available")
def test_real_glas_train_loads_with_classes_patients_and_masks():
    dataset = load_glas(GLAS_TRAIN)
    assert len(dataset) == 85
    assert dataset.classes == ("benign", "malignant")
    assert dataset.class_counts() == {"benign": 37, "malignant": 48}
    assert dataset.has_masks and dataset.has_patient_ids
    assert dataset.mpp == GLAS_MPP
    record = next(r for r in dataset if r.name == "train_12")
    assert record.class_name == "benign" and record.patient_id == "13"
    assert record.image_path.name == "train_12.png" and record.mask_path.name == "train_12.png"


@pytest.mark.skipif(not GLAS_TRAIN.is_dir(), reason="shared GlaS data not available")
def test_real_glas_split_keeps_patients_apart_and_both_classes():
    dataset = load_glas(GLAS_TRAIN)
    split = split_by_patient(dataset, val_fraction=0.2, seed=0)
    assert split.grouped_by == "patient"
    train_patients = {r.patient_id for r in split.train}
    val_patients = {r.patient_id for r in split.val}
    assert not train_patients & val_patients
    assert set(split.val_groups) == val_patients
    assert len(split.train) + len(split.val) == 85
    assert 12 <= len(split.val) <= 22
    assert all(count > 0 for count in split.val.class_counts().values())
    again = split_by_patient(dataset, val_fraction=0.2, seed=0)
    assert [r.name for r in again.val] == [r.name for r in split.val]
    assert split.to_dict()["val_images"] == [r.name for r in split.val]


def test_glas_layout_with_spaces_in_header_and_values(tmp_path):
    root = write_glas(tmp_path / "glas", ROWS)
    dataset = load_glas(root)
    assert dataset.classes == ("benign", "malignant")
    assert len(dataset) == 12
    assert dataset[0].label == 0 and dataset[2].label == 1
    assert load_dataset(root).records == dataset.records
    fixed = load_glas(root, classes=("malignant", "benign"))
    assert fixed[0].label == 1


def test_glas_without_masks_folder_has_no_masks(tmp_path):
    root = write_glas(tmp_path / "glas", ROWS, masks=False)
    dataset = load_glas(root)
    assert not dataset.has_masks and all(r.mask_path is None for r in dataset)


@pytest.mark.parametrize(
    "breakage, fragment",
    [
        ("no-folder", "not found"),
        ("no-images", "no 'images' folder"),
        ("no-csv", "no 'grade.csv'"),
        ("no-columns", "no column"),
        ("missing-image", "missing"),
        ("empty-csv", "empty"),
        ("empty-class", "empty name or class"),
    ],
)
def test_broken_glas_folders_raise_dataset_errors_naming_the_file(tmp_path, breakage, fragment):
    root = tmp_path / "glas"
    if breakage != "no-folder":
        write_glas(root, ROWS[:4])
    csv_path = root / "grade.csv"
    if breakage == "no-images":
        for path in (root / "images").iterdir():
            path.unlink()
        (root / "images").rmdir()
    elif breakage == "no-csv":
        csv_path.unlink()
    elif breakage == "no-columns":
        csv_path.write_text("file,label\ntrain_0,benign\n")
    elif breakage == "missing-image":
        (root / "images" / "train_1.png").unlink()
    elif breakage == "empty-csv":
        csv_path.write_text("\n")
    elif breakage == "empty-class":
        csv_path.write_text(HEADER + "train_0,1, ,x\n")
    with pytest.raises(DatasetError) as caught:
        load_glas(root)
    text = str(caught.value)
    assert fragment in text
    assert str(root) in text or "grade.csv" in text
    assert caught.value.path is not None
    if breakage == "missing-image":
        assert "train_1" in text and caught.value.hint


def test_unknown_class_names_are_reported(tmp_path):
    root = write_glas(tmp_path / "glas", ROWS[:4])
    with pytest.raises(DatasetError, match="unknown class name.*'malignant'"):
        load_glas(root, classes=("benign", "tumour"))


def test_class_folders(tmp_path):
    rng = np.random.default_rng(1)
    for class_name, count in (("normal", 3), ("tumour", 2)):
        folder = tmp_path / "ds" / class_name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                folder / f"{class_name}_{i}.png"
            )
    (tmp_path / "ds" / "tumour" / "notes.txt").write_text("not an image")
    dataset = load_class_folders(tmp_path / "ds")
    assert dataset.classes == ("normal", "tumour")
    assert dataset.class_counts() == {"normal": 3, "tumour": 2}
    assert not dataset.has_patient_ids
    assert load_dataset(tmp_path / "ds").classes == ("normal", "tumour")
    split = split_by_patient(dataset, val_fraction=0.4, seed=0)
    assert split.grouped_by == "image"
    assert len(split.train) + len(split.val) == 5 and len(split.val) >= 1
    assert not {r.name for r in split.train} & {r.name for r in split.val}
    with pytest.raises(DatasetError, match="unknown class folder"):
        load_class_folders(tmp_path / "ds", classes=("normal",))
    with pytest.raises(DatasetError, match="no folder for class"):
        load_class_folders(tmp_path / "ds", classes=("normal", "tumour", "other"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_class_folders(tmp_path / "empty")
    (tmp_path / "empty" / "x").mkdir()
    with pytest.raises(DatasetError, match="has no image"):
        load_class_folders(tmp_path / "empty")


def test_split_by_patient_on_synthetic_patients(tmp_path):
    dataset = load_glas(write_glas(tmp_path / "glas", ROWS))
    for seed in range(5):
        split = split_by_patient(dataset, val_fraction=0.25, seed=seed)
        assert split.grouped_by == "patient"
        assert not {r.patient_id for r in split.train} & {r.patient_id for r in split.val}
        assert len(split.val) == 3 or len(split.val) == 4 or len(split.val) == 2
    with pytest.raises(ValueError):
        split_by_patient(dataset, val_fraction=1.5)


def test_read_rgb_converts_gray_rgba_and_16_bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgb = read_rgb(tmp_path / "gray.png")
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 1], gray)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # transparent: white
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    rgb = read_rgb(tmp_path / "rgba.png")
    assert rgb.shape == (3, 4, 3) and tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[1, 1]) == (200, 0, 0)
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    rgb = read_rgb(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 4, 3) and rgb.max() > 200
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read"):
        read_rgb(tmp_path / "bad.png")
    with pytest.raises(DatasetError, match="not found"):
        read_rgb(tmp_path / "absent.png")
    Image.fromarray(np.array([[0, 255], [7, 0]], np.uint8)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[0, 1], [1, 0]]


def test_patch_torch_dataset_train_and_eval_transforms(tmp_path):
    dataset = load_glas(write_glas(tmp_path / "glas", ROWS, size=(50, 37)), mpp=None)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train = PatchTorchDataset(dataset, mean, std, train=True, crop_size=32, seed=3)
    image, label, mask = train[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.item() == 1 and mask.shape == (32, 32) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1}
    again = PatchTorchDataset(dataset, mean, std, train=True, crop_size=32, seed=3)
    assert torch.equal(again[2][0], image)  # same seed, epoch, index: same item
    train.set_epoch(1)
    assert not torch.equal(train[2][0], image)

    full = PatchTorchDataset(dataset, mean, std, train=False, crop_size=None)
    image, _, mask = full[0]
    assert image.shape == (3, 64, 64)
    assert (mask[37:] == IGNORE_INDEX).all() and (mask[:, 50:] == IGNORE_INDEX).all()
    assert (mask[:37, :50] >= 0).all() and mask[10, 10] == 1
    pixel = (image[:, 0, 0] * 0.25 + 0.5) * 255
    original = read_rgb(dataset[0].image_path)[0, 0]
    assert torch.allclose(pixel, torch.tensor(original, dtype=torch.float32), atol=0.01)

    center = PatchTorchDataset(dataset, mean, std, train=False, crop_size=48)
    assert center[0][0].shape == (3, 48, 48) and (center[0][2] == IGNORE_INDEX).sum() == 48 * 11

    half = PatchTorchDataset(
        dataset, mean, std, train=False, crop_size=None, source_mpp=0.5, target_mpp=1.0
    )
    image, _, mask = half[0]
    assert image.shape == (3, 32, 32)  # 25x19 (rescaled) padded to 32
    assert (mask[:19, :25] >= 0).all() and (mask[19:] == IGNORE_INDEX).all()

    unlabelled = load_glas(write_glas(tmp_path / "nomask", ROWS[:2], masks=False))
    plain = PatchTorchDataset(unlabelled, mean, std, train=True, crop_size=16,
                              augment=NO_AUGMENTATION)
    assert (plain[0][2] == IGNORE_INDEX).all()


def test_stain_jitter_is_small_and_seeded():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 220, (24, 24, 3), dtype=np.uint8)
    config = AugmentConfig()
    first = stain_jitter(image, np.random.default_rng(5), config)
    second = stain_jitter(image, np.random.default_rng(5), config)
    assert np.array_equal(first, second) and first.dtype == np.uint8
    difference = np.abs(first.astype(int) - image.astype(int)).mean()
    assert 0 < difference < 40


@pytest.mark.skipif(not GLAS_TRAIN.is_dir(), reason="shared GlaS data not available")
def test_real_glas_patient_folds_cover_every_image_once_and_keep_patients_apart():
    from napari_wsl_al.core.data.glas import patient_folds

    dataset = load_glas(GLAS_TRAIN)
    folds = patient_folds(dataset, k=5, seed=0)
    assert len(folds) == 5
    seen = [r.name for fold in folds for r in fold.val]
    assert sorted(seen) == sorted(r.name for r in dataset)  # each image in one fold exactly
    for fold in folds:
        assert fold.grouped_by == "patient"
        assert not {r.patient_id for r in fold.train} & {r.patient_id for r in fold.val}
        assert len(fold.train) + len(fold.val) == 85
        assert set(fold.val_groups) == {r.patient_id for r in fold.val}
        # patient 2 alone holds 16 malignant images: its fold takes benign ones beside them
        assert 12 <= len(fold.val) <= 24
        counts = fold.val.class_counts()
        assert counts["benign"] >= 5 and counts["malignant"] >= 8
    again = patient_folds(dataset, k=5, seed=0)
    assert [[r.name for r in f.val] for f in again] == [[r.name for r in f.val] for f in folds]


def test_patient_folds_on_synthetic_patients_and_bad_k(tmp_path):
    from napari_wsl_al.core.data.glas import patient_folds
    from napari_wsl_al.core.errors import DatasetError

    dataset = load_glas(write_glas(tmp_path / "glas", ROWS))
    patients = {r.patient_id for r in dataset}
    folds = patient_folds(dataset, k=len(patients), seed=3)
    # as many folds as patients: one patient per fold
    assert sorted(len(set(f.val_groups)) for f in folds) == [1] * len(patients)
    assert sorted(g for f in folds for g in f.val_groups) == sorted(patients)
    with pytest.raises(DatasetError, match="between 2 and"):
        patient_folds(dataset, k=len(patients) + 1)
    with pytest.raises(DatasetError, match="fewer folds"):
        patient_folds(dataset, k=1)
