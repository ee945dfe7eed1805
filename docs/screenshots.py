"""Regenerate the README's screenshots: ``xvfb-run -a .venv/bin/python docs/screenshots.py``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_wsl_al._qt.slide_widget import SlideWidget

DOCS = Path(__file__).resolve().parent
SLIDE = DOCS.parent / "sample_data" / "CMU-1-Small-Region.svs"


def wait_for(condition, seconds: float = 60.0) -> None:
    """Process Qt events until ``condition()`` holds."""
    import time

    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the viewer did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)


def slide_screenshot(path: Path) -> None:
    """The real slide in napari with the Slide widget and its tissue mask."""
    viewer = napari.Viewer(title="napari-wsl-al")
    viewer.window.resize(1500, 950)
    viewer.open(str(SLIDE), plugin="napari-wsl-al")
    widget = SlideWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Slide", area="right")
    widget.show_tissue_mask()
    wait_for(lambda: "CMU-1-Small-Region tissue" in viewer.layers)
    viewer.layers["CMU-1-Small-Region tissue"].contour = 3
    viewer.scale_bar.visible = True
    viewer.reset_view()
    QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()


def glas_figure(path: Path, names=("train_2", "train_12", "train_19", "train_49")) -> None:
    """The default model on GlaS images: image, foreground map, ground-truth outline.

    Needs the GlaS training set beside the repository (``../shared/data/glas_train``). The
    images are read at the model's resolution and normalised as in its evaluation
    (:func:`napari_wsl_al.core.wsl.train.predict`); the map is drawn over the full image.
    """
    import numpy as np
    from napari.utils.colormaps import ensure_colormap
    from PIL import Image
    from skimage.io import imread
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    from napari_wsl_al.core.data.glas import GLAS_MPP, load_glas
    from napari_wsl_al.core.models.checkpoint import load_default_model
    from napari_wsl_al.core.wsl.train import TrainConfig, make_torch_dataset, predict

    glas = DOCS.parents[1] / "shared" / "data" / "glas_train"
    model = load_default_model("cpu")
    dataset = load_glas(glas)
    chosen = dataset.subset([i for i, r in enumerate(dataset.records) if r.name in names])
    chosen = dataclasses.replace(chosen, mpp=GLAS_MPP)
    config = TrainConfig(eval_crop_size=None, target_mpp=model.mpp)
    data = make_torch_dataset(chosen, model, config, train=False)
    rows = []
    for record, (_, probabilities, fg, _) in zip(chosen.records, predict(model, data, "cpu")):
        image = imread(record.image_path)[..., :3]
        truth = imread(record.mask_path) > 0
        h, w = image.shape[:2]
        # the map covers the padded image: crop it to the image before drawing it full size
        scale = GLAS_MPP / model.mpp
        fg = fg[: round(h * scale), : round(w * scale)]
        fg = resize(fg, (h, w), order=1, mode="edge", anti_aliasing=False)
        heat = ensure_colormap("inferno").map(fg.ravel())[:, :3].reshape(h, w, 3)
        heat = (heat * 255).astype(np.uint8)
        overlay = (0.55 * image + 0.45 * heat).astype(np.uint8)
        for picture in (image, overlay):
            picture[find_boundaries(truth, mode="thick")] = (0, 255, 255)
        bar = np.full((h, 8, 3), 255, np.uint8)
        rows.append(np.concatenate([image, bar, overlay], axis=1)[::2, ::2])
        label = dataset.classes[record.label]
        shown = ", ".join(f"P({c}) = {p:.2f}" for c, p in zip(dataset.classes, probabilities))
        print(f"{record.name} ({label}): {shown}")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, quality=85)


if __name__ == "__main__":
    targets = sys.argv[1:] or ["slide"]
    if "slide" in targets:
        slide_screenshot(DOCS / "cmu1_napari.png")
    if "glas" in targets:
        glas_figure(DOCS / "glas_default_model.jpg")
