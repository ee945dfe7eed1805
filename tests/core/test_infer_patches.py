"""A folder of patches is inferred patch by patch: each patch's maps and class are its own."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
import torch
from infer_models import BlockColourModel
from PIL import Image

from napari_wsl_al.cli import main
from napari_wsl_al.core.data.patches import pad_to_multiple
from napari_wsl_al.core.data.tissue import tissue_mask_from_rgb
from napari_wsl_al.core.infer import InferenceConfig, InferenceError, MapStore, infer_slide
from napari_wsl_al.core.infer.engine import map_stride_for
from napari_wsl_al.core.infer.patches import (
    MAX_PATCH_SIDE,
    area_weights,
    cell_tissue_fraction,
    patch_table_path,
    read_patch_predictions,
)
from napari_wsl_al.core.io.image_backend import PatchFolderReader
from napari_wsl_al.core.progress import run_to_end

CPU = {"device": "cpu", "readers": 1}

COLOUR_CLASSES = ("red", "green", "blue")


def colour_model():
    """CAMs = red, green, blue block means at stride 8, fg = red, image logits 4 times the
    three means: on a patch of one colour every output is that colour's, exactly, unless the
    model sees something else (a neighbour, the mosaic's white padding) in its input."""
    return BlockColourModel(COLOUR_CLASSES, channels=(0, 1, 2), gain=4.0, output_stride=8)


def write_patches(folder, colours_and_sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for index, (colour, (width, height)) in enumerate(colours_and_sizes):
        image = np.empty((height, width, 3), np.uint8)
        image[:] = colour
        Image.fromarray(image).save(folder / f"patch_{index:02d}.png")
    return folder


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def centre_inside(count, pixel, extent):
    """Map pixels of a cell whose centre lies inside the patch (the rule of the engine)."""
    return (np.arange(count) + 0.5) * pixel < extent


COLOURS = [((200, 40, 90), (61, 45)), ((30, 180, 60), (40, 50)), ((90, 90, 220), (61, 50)),
           ((250, 120, 10), (23, 17))]


def test_a_map_never_mixes_two_patches(tmp_path):
    folder = write_patches(tmp_path / "patches", COLOURS)
    reader = PatchFolderReader(folder)
    assert reader.cell_size == (61, 50) and reader.columns == 2
    config = InferenceConfig(**CPU, maps=("cam", "fg", "probs"), cam_normalisation="none",
                             tissue_gate=False)
    result = run_to_end(infer_slide(reader, colour_model(), config, MapStore(tmp_path / "m.zarr")))
    assert result.tiles_total == result.tiles_computed == 4 and result.grid is None
    n = math.ceil(61 / 8)  # map pixels per cell side: 8
    fg = result.maps["fg"].levels[0].compute()
    cam = result.maps["cam"].levels[0].compute()
    probs = result.maps["probs"].levels[0].compute()
    assert fg.shape == (2 * n, 2 * n)
    # A map pixel is (50 / 8) x (61 / 8) level-0 pixels; its centre sits on the slide's.
    assert result.maps["fg"].scale == (50 / 8, 61 / 8)
    assert result.maps["fg"].translate == ((50 / 8 - 1) / 2, (61 / 8 - 1) / 2)
    for index, (colour, (width, height)) in enumerate(COLOURS):
        row, col = divmod(index, 2)
        rgb = np.array(colour) / 255.0
        inside = np.outer(centre_inside(n, 50 / n, height), centre_inside(n, 61 / n, width))
        cell = np.s_[row * n : (row + 1) * n, col * n : (col + 1) * n]
        np.testing.assert_allclose(fg[cell], np.where(inside, rgb[0], 0.0), atol=1e-6)
        for k in range(3):
            np.testing.assert_allclose(cam[k][cell], np.where(inside, rgb[k], 0.0), atol=1e-6)
        expected = torch.softmax(torch.tensor(4 * rgb), 0).numpy()
        for k in range(3):
            np.testing.assert_allclose(probs[k][cell], np.where(inside, expected[k], 0.0),
                                       atol=1e-6)
        prediction = result.patches[index]
        assert prediction.name == f"patch_{index:02d}.png"
        assert prediction.box == reader.patch_boxes[index]
        np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-6)
        assert prediction.prediction == COLOUR_CLASSES[int(np.argmax(colour))]


def test_area_weights_by_hand():
    # Source pixels of length 1 over [0, 5); target pixels of length 2.5 within extent 4:
    # target 0 covers [0, 2.5) -> 1, 1, 0.5; target 1 covers [2.5, 4) -> 0.5, 1 (centre 3.75 < 4).
    weights = area_weights(5, 1.0, 2, 2.5, 4.0)
    np.testing.assert_allclose(weights, [[1 / 2.5, 1 / 2.5, 0.5 / 2.5, 0, 0],
                                         [0, 0, 0.5 / 1.5, 1 / 1.5, 0]], atol=1e-7)
    # Extent 3.5: target 1's centre 3.75 lies outside, so it is padding (a zero row).
    np.testing.assert_allclose(area_weights(5, 1.0, 2, 2.5, 3.5)[1], 0.0)


def run_default_model_directly(model, image):
    """The model on a whole image, as training evaluates it: reflect-padded to the stride."""
    padded, _ = pad_to_multiple(image, np.zeros(image.shape[:2], np.uint8), model.output_stride)
    with torch.inference_mode():
        output = model(model.normalize(torch.from_numpy(padded)[None]))
        fg = model.localize(output, padded.shape[:2])
    h, w = image.shape[:2]
    fg = fg[0, 0, :h, :w].numpy().astype(np.float64)
    return fg, torch.softmax(output["logits"][0], 0).numpy()


def cell_means(values, n, cell_h, cell_w):
    """Exact area means of ``values`` (h, w, in the top-left corner of a cell) over the
    cell's n x n map pixels of (cell_h / n) x (cell_w / n) pixels: repeating every pixel n
    times makes map pixel j span exactly cell_h repeated rows. Map pixels whose centre is
    outside the patch are 0."""
    h, w = values.shape
    full, weight = np.zeros((cell_h, cell_w)), np.zeros((cell_h, cell_w))
    full[:h, :w], weight[:h, :w] = values, 1.0

    def sums(a):
        a = np.repeat(a, n, axis=0).reshape(n, cell_h, cell_w).sum(axis=1)
        return np.repeat(a, n, axis=1).reshape(n, n, cell_w).sum(axis=2)

    total, count = sums(full), sums(weight)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    inside = np.outer(centre_inside(n, cell_h / n, h), centre_inside(n, cell_w / n, w))
    return np.where(inside, mean, 0.0)


@pytest.fixture(scope="module")
def default_model():
    """The shipped model on the images' own pixels (no resolution: the folder has none), so
    that each patch is the whole image the comparison runs the model on."""
    from napari_wsl_al.core.infer import load_inference_model

    torch.set_num_threads(2)
    model = load_inference_model("default", "cpu")
    model.mpp = None
    return model


def test_infer_on_a_patch_equals_the_model_on_the_whole_image(tmp_path, shared_data,
                                                               default_model):
    # train_1: a full-size image; train_12: smaller than the cell (padding in its cell);
    # train_67: a large piece of glass, which the tissue gate removes from the foreground.
    folder = tmp_path / "glas"
    folder.mkdir()
    for name in ("train_1", "train_12", "train_67"):
        shutil.copy(shared_data / "glas_train" / "images" / f"{name}.png", folder)
    reader = PatchFolderReader(folder)
    model = default_model
    config = InferenceConfig(**CPU, maps=("fg", "probs", "entropy"))
    store = MapStore(tmp_path / "maps" / "glas.zarr")
    result = run_to_end(infer_slide(reader, model, config, store))
    cw, ch = reader.cell_size
    n = math.ceil(max(cw, ch) / map_stride_for(model, config))
    assert n == math.ceil(775 / 16)  # a stride-32 model's maps are at 16 pixels by default
    fg = result.maps["fg"].levels[0].compute()
    probs = result.maps["probs"].levels[0].compute()
    entropy = result.maps["uncertainty/entropy"].levels[0].compute()
    rows = {row["patch"]: row for row in read_csv(result.patches_csv)}
    assert result.patches_csv == tmp_path / "maps" / "glas.patches.csv"
    for index, name in enumerate(reader.patch_names):
        image = reader.read_patch(index)
        whole_fg, whole_probs = run_default_model_directly(model, image)
        # The tissue gate: the patch's tissue mask, computed on the patch shrunk 2 x here,
        # is within 1 % of the full-resolution mask's fraction under each map pixel.
        h, w = image.shape[:2]
        gate = cell_tissue_fraction(image, (h, w), (ch / n, cw / n), n, None)
        full = cell_means(tissue_mask_from_rgb(image).mask.astype(np.float64), n, ch, cw)
        assert np.abs(gate - full).mean() < 0.01
        expected = cell_means(whole_fg, n, ch, cw) * gate
        row, col = divmod(index, reader.columns)
        cell = np.s_[row * n : (row + 1) * n, col * n : (col + 1) * n]
        np.testing.assert_allclose(fg[cell], expected, atol=2e-4)
        inside = cell_means(np.ones(image.shape[:2]), n, ch, cw)
        for k in range(2):
            np.testing.assert_allclose(probs[k][cell], inside * whole_probs[k], atol=2e-4)
        # the uncertainty is gated like the foreground: that of the probabilities, times
        # the tissue fraction
        p = np.stack([inside * whole_probs[k] for k in range(2)])
        expected_entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=0) * gate
        np.testing.assert_allclose(entropy[cell], expected_entropy, atol=5e-4)
        np.testing.assert_allclose(result.patches[index].probabilities, whole_probs, atol=2e-4)
        assert rows[name]["prediction"] == model.classes[int(np.argmax(whole_probs))]
        assert float(rows[name]["p_malignant"]) == pytest.approx(whole_probs[1], abs=1e-4)
    # Glass is never foreground: train_67 (the last cell) is 38 % tissue; its glass is 0.
    assert reader.patch_names[-1] == "train_67.png" and (fg[cell] == 0).mean() > 0.4


def one_patch_per_batch(**changes):
    return InferenceConfig(**{**CPU, "tile_size": 16, "batch_size": 1, "prefetch": 0,
                              "maps": ("fg", "probs"), "tissue_gate": False, **changes})


def test_a_cancelled_run_keeps_its_finished_patches_and_resumes_per_patch(tmp_path):
    folder = write_patches(tmp_path / "patches", COLOURS)
    reader = PatchFolderReader(folder)
    store = MapStore(tmp_path / "maps" / "patches.zarr")
    job = infer_slide(reader, colour_model(), one_patch_per_batch(), store)
    first = next(job)
    assert (first.step, first.total) == (1, 4)
    job.close()  # what the GUI's Cancel does between two batches
    table = patch_table_path(store.path)
    assert table == tmp_path / "maps" / "patches.patches.csv"
    kept = read_csv(table)
    assert len(kept) == 1 and store.done_bitmap().sum() == 1
    assert [p.name for p in read_patch_predictions(store.path)] == [kept[0]["patch"]]
    resumed = run_to_end(infer_slide(reader, colour_model(), one_patch_per_batch(), store))
    assert (resumed.tiles_total, resumed.tiles_computed) == (4, 3)
    assert [row["patch"] for row in read_csv(table)] == reader.patch_names
    clean = run_to_end(infer_slide(reader, colour_model(), one_patch_per_batch(),
                                   MapStore(tmp_path / "clean.zarr")))
    for name in ("fg", "probs"):
        for got, want in zip(resumed.maps[name].levels, clean.maps[name].levels):
            np.testing.assert_array_equal(got.compute(), want.compute())
    # Finished maps reopen without the model; the table is written again if it was lost.
    table.unlink()
    again = run_to_end(infer_slide(reader, colour_model(), one_patch_per_batch(), store))
    assert again.tiles_computed == 0 and len(again.patches) == 4 and table.exists()


def test_a_region_infers_the_patches_it_touches(tmp_path):
    folder = write_patches(tmp_path / "patches", COLOURS)
    reader = PatchFolderReader(folder)
    x, y = reader.patch_boxes[3][:2]
    result = run_to_end(infer_slide(reader, colour_model(), one_patch_per_batch(),
                                    MapStore(tmp_path / "m.zarr"), region=(x + 2, y + 2, 5, 5)))
    assert (result.tiles_total, result.tiles_computed) == (1, 1)
    assert [p.name for p in result.patches] == ["patch_03.png"]
    with pytest.raises(InferenceError, match="touches no patch"):
        run_to_end(infer_slide(reader, colour_model(), one_patch_per_batch(),
                               MapStore(tmp_path / "n.zarr"), region=(x + 40, y + 30, 5, 5)))


def test_a_patch_too_large_for_one_image_is_refused_naming_it(tmp_path):
    folder = write_patches(tmp_path / "patches", [((200, 40, 90), (40, 30)),
                                                  ((30, 180, 60), (MAX_PATCH_SIDE + 8, 8))])
    reader = PatchFolderReader(folder)
    with pytest.raises(InferenceError, match=r"patch_01\.png is 4104 x 8 pixels.*as a slide"):
        run_to_end(infer_slide(reader, colour_model(), one_patch_per_batch(),
                               MapStore(tmp_path / "m.zarr")))


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    config = ModelConfig(arch="cam-avg", classes=("tumour", "normal"), width=0.125)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", build_model(config), config)


def test_cli_infer_on_a_folder_prints_the_patch_classes_and_writes_the_table(
        tmp_path, tiny_checkpoint, capsys):
    folder = write_patches(tmp_path / "cohort", COLOURS)
    project = tmp_path / "study.wslal"
    args = ["infer", str(folder), "--model", str(tiny_checkpoint), "--project", str(project),
            "--device", "cpu", "--maps", "fg,probs"]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = project / "maps" / "cohort.patches.csv"
    rows = read_csv(table)
    assert [row["patch"] for row in rows] == [f"patch_{i:02d}.png" for i in range(4)]
    assert list(rows[0]) == ["patch", "prediction", "confidence", "p_tumour", "p_normal"]
    counts = {name: sum(row["prediction"] == name for row in rows) for name in ("tumour", "normal")}
    summary = ", ".join(f"{counts[name]} {name}" for name in ("tumour", "normal") if counts[name])
    assert "4 of 4 patches computed" in out and f"4 patches: {summary.split(',')[0]}" in out
    assert f"per-patch classes in {table}" in out
    for row in rows:
        p = float(row["p_tumour"])
        assert float(row["confidence"]) == pytest.approx(max(p, 1 - p), abs=1e-6)


def test_mc_variance_of_a_patch_is_the_variance_of_its_image_level_probabilities(tmp_path):
    from test_infer_hand_numbers import KnownDropoutModel

    folder = write_patches(tmp_path / "one", [((200, 90, 160), (64, 48))])
    reader = PatchFolderReader(folder)
    config = InferenceConfig(**CPU, maps=("mc_variance",), mc_passes=4, tissue_gate=False,
                             map_stride=8)
    result = run_to_end(infer_slide(reader, KnownDropoutModel(), config,
                                    MapStore(tmp_path / "m.zarr")))
    variance = result.maps["uncertainty/mc_variance"].levels[0].compute()
    # Passes alternate (16/18, 1/18, 1/18) and (1/3, 1/3, 1/3): per class the variance of two
    # values a, b taken equally often is ((a - b) / 2) ** 2; averaged over the three classes.
    a, b = np.array([16, 1, 1]) / 18, np.full(3, 1 / 3)
    expected = float((((a - b) / 2) ** 2).mean())
    assert expected == pytest.approx(150 / 3888)
    # One 64 x 48 patch: a cell of 8 x 8 map pixels (6 x 8 pixels each), all inside it.
    assert variance.shape == (8, 8)
    np.testing.assert_allclose(variance, expected, rtol=1e-5)
