"""Regenerate the README's screenshots: ``xvfb-run -a .venv/bin/python docs/screenshots.py``."""

from __future__ import annotations

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


def glas_figure(path: Path, names=("train_2", "train_19", "train_49", "train_7")) -> None:
    """The default model on held-out GlaS images: image, foreground map, ground-truth outline.

    Needs the GlaS training set beside the repository (``../shared/data/glas_train``); the
    images named are in the default model's validation split.
    """
    import numpy as np
    import torch
    from napari.utils.colormaps import ensure_colormap
    from PIL import Image
    from skimage.io import imread
    from skimage.segmentation import find_boundaries

    from napari_wsl_al.core.models.checkpoint import load_default_model

    glas = DOCS.parents[1] / "shared" / "data" / "glas_train"
    model = load_default_model("cpu")
    rows = []
    for name in names:
        image = imread(glas / "images" / f"{name}.png")[..., :3]
        truth = imread(glas / "masks" / f"{name}.png") > 0
        h, w = (s // 32 * 32 for s in image.shape[:2])
        image, truth = image[:h, :w], truth[:h, :w]
        with torch.inference_mode():
            batch = model.normalize(torch.from_numpy(np.ascontiguousarray(image))[None])
            output = model(batch)
            fg = model.localize(output, (h, w))[0, 0].numpy()
            malignant = torch.softmax(output["logits"], 1)[0, 1].item()
        heat = ensure_colormap("inferno").map(fg.ravel())[:, :3].reshape(h, w, 3)
        heat = (heat * 255).astype(np.uint8)
        overlay = (0.55 * image + 0.45 * heat).astype(np.uint8)
        for picture in (image, overlay):
            picture[find_boundaries(truth, mode="thick")] = (0, 255, 255)
        bar = np.full((h, 8, 3), 255, np.uint8)
        rows.append(np.concatenate([image, bar, overlay], axis=1)[::2, ::2])
        print(f"{name}: P(malignant) = {malignant:.2f}")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, quality=85)


if __name__ == "__main__":
    targets = sys.argv[1:] or ["slide"]
    if "slide" in targets:
        slide_screenshot(DOCS / "cmu1_napari.png")
    if "glas" in targets:
        glas_figure(DOCS / "glas_default_model.jpg")
