"""The synthetic H&E generator: patches, pyramidal slides that OpenSlide opens, GlaS-style sets."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap

import numpy as np
import openslide
import pytest
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from napari_wsl_al.core.data import synthetic
from napari_wsl_al.core.data.synthetic import (
    CLASS_NAMES,
    SyntheticSample,
    read_slide_truth,
    synthetic_he_image,
    truth_path_for,
    write_synthetic_patch_set,
    write_synthetic_slide,
)
from napari_wsl_al.core.errors import DatasetError, SlideError
from napari_wsl_al.core.progress import Progress

# ------------------------------------------------------------------------------------ patches


def test_patch_shapes_types_and_labels():
    sample = synthetic_he_image((100, 150), "malignant", seed=3)
    assert isinstance(sample, SyntheticSample)
    assert sample.image.shape == (100, 150, 3) and sample.image.dtype == np.uint8
    assert sample.gland_mask.shape == (100, 150) and sample.gland_mask.dtype == bool
    assert (sample.label, sample.class_name) == (1, "malignant")
    assert synthetic_he_image((32, 32), 0, seed=1).class_name == "benign"
    assert CLASS_NAMES == ("benign", "malignant")


def test_patches_are_deterministic_given_a_seed():
    a = synthetic_he_image((128, 128), "benign", seed=7)
    b = synthetic_he_image((128, 128), "benign", seed=7)
    c = synthetic_he_image((128, 128), "benign", seed=8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.gland_mask, b.gland_mask)
    assert np.abs(a.image.astype(int) - c.image.astype(int)).mean() > 5


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="label"):
        synthetic_he_image((64, 64), "tumour", seed=0)
    with pytest.raises(ValueError, match="label"):
        synthetic_he_image((64, 64), 2, seed=0)
    with pytest.raises(ValueError, match="shape"):
        synthetic_he_image((0, 64), "benign", seed=0)
    with pytest.raises(ValueError, match="gland_scale"):
        synthetic_he_image((64, 64), "benign", seed=0, gland_scale=0)


def _gland_statistics(sample: SyntheticSample) -> dict[str, float]:
    mask = sample.gland_mask
    components = connected_components(mask)
    areas = np.bincount(components.ravel())[1:]
    h, w = mask.shape
    inner = [
        p
        for p in regionprops(components)
        if p.bbox[0] > 0 and p.bbox[1] > 0 and p.bbox[2] < h and p.bbox[3] < w and p.area > 30
    ]
    inner_areas = np.array([p.area for p in inner], float)
    image = sample.image.astype(float)
    # hematoxylin-dark (purple-blue) pixels: nuclei
    nuclei = (image[..., 2] - image[..., 0] > 50) & (image.sum(-1) < 360)
    return {
        "largest": areas.max() / mask.size if areas.size else 0.0,
        "inner_cv": inner_areas.std() / inner_areas.mean() if inner_areas.size > 2 else np.nan,
        "inner_solidity": np.mean([p.solidity for p in inner]) if inner else np.nan,
        "nuclei_in_glands": nuclei[mask].mean(),
    }


def test_benign_and_malignant_differ_measurably():
    benign = [_gland_statistics(synthetic_he_image((256, 256), "benign", seed=s)) for s in range(3)]
    malignant = [
        _gland_statistics(synthetic_he_image((256, 256), "malignant", seed=s)) for s in range(3)
    ]
    for stats in benign:
        # regular, round, similar-sized, separate glands
        assert stats["inner_cv"] < 0.25
        assert stats["inner_solidity"] > 0.93
        assert stats["largest"] < 0.1
    # malignant glands are crowded and fused into large irregular structures ...
    assert min(m["largest"] for m in malignant) > 2 * max(b["largest"] for b in benign)
    # ... with more nuclei in their epithelium
    assert np.mean([m["nuclei_in_glands"] for m in malignant]) > 1.4 * np.mean(
        [b["nuclei_in_glands"] for b in benign]
    )


def test_nuclei_are_dark_purple_and_stroma_pink():
    sample = synthetic_he_image((256, 256), "benign", seed=2)
    image = sample.image.astype(float)
    brightness = image.sum(-1)
    darkest = image[brightness <= np.percentile(brightness, 2)]
    stroma = np.median(image[~sample.gland_mask], axis=0)
    r, g, b = darkest.mean(0)
    assert b > r > g, "nuclei should be hematoxylin purple-blue"
    assert darkest.sum(1).mean() < 0.6 * stroma.sum()
    sr, sg, sb = stroma
    assert sr > sg + 30 and sb > sg + 30, "stroma should be eosin pink"


def test_tiles_join_without_seams():
    """A window rendered at once equals the same window rendered as four tiles."""
    style = synthetic._Style(2.0)
    base = synthetic._base_textures((512, 512), style, 5)
    layout = synthetic._SlideLayout(4000, 4000, 5, style, 0.6, 0.4, None)
    renderer = synthetic._Renderer(layout, style, 5, base, 1)
    row0, col0 = 1800, 1700
    whole, whole_mask = renderer.render(row0, col0, 256, 256)
    for dr in (0, 128):
        for dc in (0, 128):
            part, part_mask = renderer.render(row0 + dr, col0 + dc, 128, 128)
            np.testing.assert_array_equal(part, whole[dr : dr + 128, dc : dc + 128])
            np.testing.assert_array_equal(part_mask, whole_mask[dr : dr + 128, dc : dc + 128])


# ------------------------------------------------------------------------------------ slides


@pytest.fixture(scope="module")
def mixed_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "mixed.tif"
    records: list[Progress] = []
    write_synthetic_slide(
        path, 1400, 1100, mpp=0.5, tile=256, seed=1, tissue_fraction=0.5, progress=records.append
    )
    return path, records


def test_slide_opens_with_openslide(mixed_slide):
    path, _ = mixed_slide
    with openslide.OpenSlide(path) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.dimensions == (1400, 1100)
        assert slide.level_dimensions == ((1400, 1100), (700, 550))
        assert [round(d) for d in slide.level_downsamples] == [1, 2]
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert slide.properties["openslide.level[0].tile-width"] == "256"
        assert slide.properties["openslide.level[1].tile-height"] == "256"
        level0 = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        level1 = np.asarray(slide.read_region((0, 0), 1, (700, 550)).convert("RGB"))
    # tissue and glass are both there
    brightness = level0.astype(float).sum(-1)
    assert 0.2 < (brightness < 660).mean() < 0.8
    # level 1 is level 0 at half the resolution (rendered, not copied: close, not equal)
    halved = level0.reshape(550, 2, 700, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved - level1).mean() < 20


def test_slide_ground_truth(mixed_slide):
    path, _ = mixed_slide
    truth = read_slide_truth(path)
    assert truth_path_for(path) == path.with_name("mixed.truth.npz")
    assert truth.downsample == 1 and truth.mpp == 0.5
    assert truth.tissue.shape == (1100, 1400)
    assert 0.35 < truth.tissue.mean() < 0.65
    assert not (truth.malignant & ~truth.tissue).any()
    assert not (truth.gland & ~truth.tissue).any()
    assert 0 < truth.malignant.sum() < truth.tissue.sum()
    assert truth.gland.any()
    # the truth matches the pixels: glass is bright, tissue is not
    with openslide.OpenSlide(path) as slide:
        level0 = np.asarray(slide.read_region((0, 0), 0, (1400, 1100)).convert("RGB"))
    brightness = level0.astype(float).sum(-1)
    assert brightness[~truth.tissue].mean() > 700
    assert brightness[truth.tissue].mean() < 600


def test_slide_progress_records(mixed_slide):
    _, records = mixed_slide
    steps = [r.step for r in records]
    assert steps == sorted(steps) and records[-1].step == records[-1].total
    assert records[-1].total == 6 * 5 + 3 * 3
    assert "level 1" in records[-1].message


def test_single_class_slide_at_another_resolution(tmp_path):
    path = write_synthetic_slide(tmp_path / "benign.tif", 700, 500, mpp=1.0, seed=2,
                                 label="benign", tile=128, quality=70)
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions == ((700, 500),)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(1.0)
        assert slide.properties["openslide.level[0].tile-width"] == "128"
    truth = read_slide_truth(path)
    assert truth.downsample == 1 and truth.tissue.shape == (500, 700)
    assert truth.tissue.any() and not truth.malignant.any()
    assert not list(tmp_path.glob("*.part*")), "temporary files are cleaned up"


def test_slide_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="width"):
        write_synthetic_slide(tmp_path / "a.tif", 0, 100)
    with pytest.raises(ValueError, match="tile"):
        write_synthetic_slide(tmp_path / "a.tif", 100, 100, tile=100)
    with pytest.raises(ValueError, match="tissue_fraction"):
        write_synthetic_slide(tmp_path / "a.tif", 100, 100, tissue_fraction=1.5)
    with pytest.raises(SlideError, match="does not exist"):
        write_synthetic_slide(tmp_path / "missing" / "a.tif", 100, 100)
    with pytest.raises(DatasetError, match="no ground truth"):
        read_slide_truth(tmp_path / "other.tif")


# ------------------------------------------------------------------------------------ patch sets


def test_patch_set_in_the_glas_layout(tmp_path, shared_data_header):
    root = write_synthetic_patch_set(tmp_path / "set", n_per_class=2, shape=(48, 64), seed=4)
    images = sorted(p.name for p in (root / "images").iterdir())
    masks = sorted(p.name for p in (root / "masks").iterdir())
    assert images == masks == [f"synth_{k}.png" for k in (1, 2, 3, 4)]
    with open(root / "grade.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    if shared_data_header is not None:
        assert rows[0] == shared_data_header
    assert [r[2].strip() for r in rows[1:]] == ["benign", "malignant", "benign", "malignant"]
    from skimage.io import imread

    image = imread(root / "images" / "synth_2.png")
    mask = imread(root / "masks" / "synth_2.png")
    assert image.shape == (48, 64, 3) and mask.shape == (48, 64)
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(image, synthetic_he_image((48, 64), 1, seed=4 * 100003 + 1).image)


def test_patch_set_reads_with_the_glas_loader(tmp_path):
    glas = pytest.importorskip("napari_wsl_al.core.data.glas")
    root = write_synthetic_patch_set(tmp_path / "set", n_per_class=3, shape=(32, 32), seed=0)
    dataset = glas.load_glas(root)
    assert len(dataset) == 6
    assert dataset.class_counts() == {"benign": 3, "malignant": 3}
    assert dataset.has_masks


@pytest.fixture
def shared_data_header(request):
    """The header row of the real GlaS grade.csv, when the shared data is on this machine."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "glas_train" / "grade.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        return next(csv.reader(handle))


# ------------------------------------------------------------------------------------ memory

_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time
    from napari_wsl_al.core.data.synthetic import write_synthetic_slide
    side = int(sys.argv[1])
    start = time.perf_counter()
    write_synthetic_slide(sys.argv[2], side, side, seed=0, tissue_fraction=0.5)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start)
    """
)


@pytest.mark.slow
def test_writer_memory_does_not_grow_with_the_slide(tmp_path):
    peaks = {}
    for side in (2048, 12288):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(side), str(tmp_path / f"s{side}.tif")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        peaks[side] = int(out[0]) / 1024  # MiB
    # 36 times the pixels, the same peak memory (within noise)
    assert peaks[12288] < peaks[2048] * 1.15 + 20, peaks
