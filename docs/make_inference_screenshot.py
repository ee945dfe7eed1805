"""Make docs/inference_widget.png: the Inference widget with map overlays on CMU-1-Small-Region.

Run under Xvfb: ``xvfb-run -a .venv/bin/python docs/make_inference_screenshot.py [--default]``.
Without ``--default`` it uses a hand-made stain model (foreground = haematoxylin-dark pixels),
so the picture shows the widget and its overlays before a trained checkpoint exists; with
``--default`` it uses the shipped model and also writes docs/cmu1_overlays.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_wsl_al.core.models.base import WslModel

ROOT = Path(__file__).resolve().parents[1]


class StainModel(WslModel):
    """Not trained: class scores from colour (purple nuclei vs pink stroma); fg = darkness."""

    classes = ("nuclei-rich", "stroma")
    output_stride = 16

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        rgb = x * torch.tensor(self.std).view(1, 3, 1, 1) + torch.tensor(self.mean).view(1, 3, 1, 1)
        dark = 1.0 - rgb.mean(dim=1, keepdim=True)
        blue = rgb[:, 2:3] - rgb[:, 0:1]
        pooled = nn.functional.avg_pool2d(torch.cat([dark * 6 + blue * 8, -blue * 8], 1), 16)
        fg = torch.sigmoid((nn.functional.avg_pool2d(dark, 16) - 0.25) * 20)
        return {"logits": pooled.mean(dim=(2, 3)) + self.dummy, "cams": pooled, "fg": fg}


def shrink_png(path: Path, max_bytes: int = 480_000) -> None:
    """Re-save a PNG smaller (palette, then scale) until it is under ``max_bytes``."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = 1.0
    while True:
        size = (int(image.width * scale), int(image.height * scale))
        candidate = image.resize(size, Image.LANCZOS).quantize(colors=256, method=Image.MEDIANCUT)
        candidate.save(path, optimize=True)
        if path.stat().st_size <= max_bytes or scale < 0.4:
            return
        scale *= 0.85


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_wsl_al._qt.infer_widget import InferenceWidget

    parser = argparse.ArgumentParser()
    parser.add_argument("--default", action="store_true", help="use the shipped default model")
    args = parser.parse_args()
    viewer = napari.Viewer()
    viewer.window.resize(1500, 950)
    viewer.open(str(ROOT / "sample_data" / "CMU-1-Small-Region.svs"), plugin="napari-wsl-al")
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right", name="Inference")
    if not args.default:
        widget.model_factory = StainModel
    widget.device_combo.setCurrentText("cpu")
    widget.map_checks["bg"].setChecked(False)
    widget.run()
    app = QApplication.instance()
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.01)
    widget.threshold_slider.setValue(50)
    widget.update_outline()
    for layer in viewer.layers:
        if layer.name.endswith("fg"):
            layer.visible = False
        if layer.name.endswith("ovr_entropy_max"):
            layer.visible = False
        if " cam " in layer.name:
            layer.visible = False
        if layer.name.endswith("cam " + widget.session.handles()["cam"].channels[-1]):
            layer.visible = True
            layer.opacity = 0.6
            viewer.layers.selection.active = layer
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out = ROOT / "docs" / "inference_widget.png"
    viewer.screenshot(str(out), canvas_only=False)
    shrink_png(out)
    print(out, out.stat().st_size)
    if args.default:
        overlays = ROOT / "docs" / "cmu1_overlays.png"
        for layer in viewer.layers:
            if layer.name.endswith("ovr_entropy_max"):
                layer.visible = True
                layer.opacity = 0.4
        viewer.screenshot(str(overlays), canvas_only=True)
        shrink_png(overlays)
        print(overlays, overlays.stat().st_size)
    viewer.close()


if __name__ == "__main__":
    main()
