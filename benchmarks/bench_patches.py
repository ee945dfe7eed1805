"""A folder of GlaS images inferred as patches versus tiled as one mosaic slide, with the model on
each whole image as the reference.

All the images of a GlaS folder (``images/``, ``masks/``, ``grade.csv``) are opened as one
folder of patches with the shipped default model, and three things are compared per image:

- **whole image**: the model on the whole image, reflect-padded to its stride, as training
  evaluates it (its foreground at full resolution);
- **patches**: what ``infer`` stores for the folder now (each patch inferred as one image, its
  maps on its own cell, its class from the image logits);
- **grid**: the mosaic tiled like a slide, as ``infer`` did before patch folders were inferred
  patch by patch (tiles and maps across patch borders and the white padding); a patch's
  P(malignant) is then the mean of the ``probs`` map over its cell.

Printed: the gland Dice of the stored ``fg`` per image (threshold 0.5, against ``masks/``; a map
pixel covers each image pixel it contains), averaged over the images, and the AUC of each
image's P(malignant) against its grade. ``--grid-only`` computes the grid figures alone, with
only the API that the code before this change had, so that the same script measures the old
code (``PYTHONPATH=<old checkout>/src``).

The default model was trained on the GlaS training images: on them these are sanity figures,
not an estimate of accuracy.

Run::

    .venv/bin/python benchmarks/bench_patches.py [--data ../shared/data/glas_train] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_wsl_al.core.infer import InferenceConfig, MapStore, infer_slide, load_inference_model
from napari_wsl_al.core.io.base import SlideReader
from napari_wsl_al.core.io.image_backend import PatchFolderReader
from napari_wsl_al.core.metrics import dice
from napari_wsl_al.core.progress import run_to_end

ROOT = Path(__file__).resolve().parents[1]
GLAS_MPP = 0.62


class MosaicSlide(SlideReader):
    """The mosaic of a patch folder as a plain slide (what ``infer`` tiled before)."""

    def __init__(self, folder: PatchFolderReader):
        super().__init__()
        self.folder = folder
        self.name = folder.name
        self.format = "mosaic"
        if folder.mpp is not None:
            self.set_mpp(folder.mpp[0])
        self.native_dimensions = list(folder.native_dimensions)
        self.native_downsamples = [1.0]
        self.native_tile_sizes = list(folder.native_tile_sizes)
        self._finish_init()

    def _read_native(self, level, x, y, width, height):
        return self.folder.read_level(level, x, y, width, height)


def auc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    positive, negative = scores[labels], scores[~labels]
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positive) * len(negative)))


def read_grades(path: Path) -> dict[str, bool]:
    """Image name -> malignant, from GlaS's ``grade.csv``."""
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    header = [name.strip() for name in rows[0]]
    column = header.index("grade (GlaS)")
    return {row[0].strip(): row[column].strip() == "malignant" for row in rows[1:]}


def map_over_patch(handle, box, channel=None) -> np.ndarray:
    """The level-0 map values under each pixel of a patch (the map pixel containing it)."""
    level = handle.levels[0]
    unit = GLAS_MPP if handle.unit == "micrometer" else 1.0
    pixel_y, pixel_x = handle.scale[0] / unit, handle.scale[1] / unit
    x, y, width, height = box
    rows = np.floor((y + np.arange(height)) / pixel_y).astype(int)
    cols = np.floor((x + np.arange(width)) / pixel_x).astype(int)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    block = level[r0:r1, c0:c1] if channel is None else level[channel, r0:r1, c0:c1]
    block = np.asarray(block.compute(), dtype=np.float32)
    return block[(rows - r0)[:, None], (cols - c0)[None, :]]


def whole_image(model, image: np.ndarray) -> tuple[np.ndarray, float]:
    """The model's foreground (full resolution) and P(malignant) on a whole image."""
    from napari_wsl_al.core.data.patches import pad_to_multiple

    padded, _ = pad_to_multiple(image, np.zeros(image.shape[:2], np.uint8), model.output_stride)
    device = next(model.parameters()).device
    with torch.inference_mode():
        output = model(model.normalize(torch.from_numpy(padded)[None]).to(device))
    h, w = image.shape[:2]
    fg = output["fg"][0, 0, :h, :w].float().cpu().numpy()
    malignant = model.classes.index("malignant")
    return fg, float(torch.softmax(output["logits"][0].float(), 0)[malignant])


def figures(name, fg_maps, p_malignant, masks, grades, names) -> dict:
    scores = [dice(masks[n] > 0, fg_maps[n] > 0.5) for n in names]
    return {"method": name, "dice": float(np.mean(scores)), "dice_sd": float(np.std(scores)),
            "auc": auc([p_malignant[n] for n in names], [grades[n] for n in names])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "glas_train")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid-only", action="store_true",
                        help="only the mosaic tiled as a slide (works with the old code)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    grades = read_grades(args.data / "grade.csv")
    model = load_inference_model("default", args.device)
    config = InferenceConfig(device=args.device)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-patches-") as scratch:
        folder = Path(scratch) / "glas"
        folder.mkdir()
        files = sorted((args.data / "images").glob("*.png"))
        files = files[: args.limit] if args.limit else files
        for file in files:
            (folder / file.name).symlink_to(file.resolve())
        reader = PatchFolderReader(folder, mpp=GLAS_MPP)
        names = [Path(n).stem for n in reader.patch_names]
        masks = {n: np.asarray(Image.open(args.data / "masks" / f"{n}.png")) for n in names}
        boxes = dict(zip(names, reader.patch_boxes))
        print(f"{len(names)} images ({sum(grades[n] for n in names)} malignant), "
              f"mosaic {reader.dimensions[0]} x {reader.dimensions[1]} px, device {args.device}")

        if not args.grid_only:
            started = time.perf_counter()
            fg, prob = {}, {}
            for index, name in enumerate(names):
                fg[name], prob[name] = whole_image(model, reader.read_patch(index))
            results.append({**figures("whole image (reference)", fg, prob, masks, grades, names),
                            "seconds": time.perf_counter() - started})

            started = time.perf_counter()
            result = run_to_end(infer_slide(reader, model, config,
                                            MapStore(Path(scratch) / "patches.zarr")))
            seconds = time.perf_counter() - started
            handle = result.maps["fg"]
            fg = {n: map_over_patch(handle, boxes[n]) for n in names}
            prob = {Path(p.name).stem: p.probabilities[p.classes.index("malignant")]
                    for p in result.patches}
            results.append({**figures("patches (infer now)", fg, prob, masks, grades, names),
                            "seconds": seconds})

        started = time.perf_counter()
        result = run_to_end(infer_slide(MosaicSlide(reader), model, config,
                                        MapStore(Path(scratch) / "grid.zarr")))
        seconds = time.perf_counter() - started
        fg = {n: map_over_patch(result.maps["fg"], boxes[n]) for n in names}
        malignant = list(result.maps["probs"].channels).index("malignant")
        prob = {n: float(map_over_patch(result.maps["probs"], boxes[n], malignant).mean())
                for n in names}
        results.append({**figures("grid (mosaic tiled as a slide)", fg, prob, masks, grades, names),
                        "seconds": seconds})

    print(f"{'method':34s} {'gland Dice':>16s} {'AUC P(malignant)':>17s} {'seconds':>8s}")
    for row in results:
        print(f"{row['method']:34s} {100 * row['dice']:7.1f} ± {100 * row['dice_sd']:4.1f} % "
              f"{row['auc']:17.3f} {row['seconds']:8.1f}")
    print("(training images: the model saw them; sanity figures, not accuracy)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
