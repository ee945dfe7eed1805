"""Make the Inference dock's screenshots: the dock and its maps on CMU-1-Small-Region, the
overlays at a pathologist's zoom, and a folder of GlaS patches with their maps.

Run under Xvfb: ``xvfb-run -a .venv/bin/python docs/make_inference_screenshot.py [--stain]``.
It writes docs/inference_widget.png, docs/cmu1_overlays.png and, when the GlaS training images
are beside the repository (``../shared/data/glas_train``), docs/patch_overlays.png. The maps
are the shipped default model's, on the CPU; with ``--stain`` a hand-made stain model
(foreground = haematoxylin-dark pixels) is used instead, to check the overlays without a
trained checkpoint.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from napari_wsl_al.core.models.base import WslModel

ROOT = Path(__file__).resolve().parents[1]
GLAS = ROOT.parent / "shared" / "data" / "glas_train" / "images"

#: GlaS training images shown as a folder of patches (4 x 4).
PATCHES = 16

#: Microns per pixel of the GlaS images (20x), given to the folder so the model's applies.
GLAS_MPP = 0.62


class StainModel(WslModel):
    """Not trained: class scores from colour (purple nuclei vs pink stroma); fg = darkness."""

    classes = ("stroma", "nuclei-rich")
    output_stride = 16

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        rgb = x * torch.tensor(self.std).view(1, 3, 1, 1) + torch.tensor(self.mean).view(1, 3, 1, 1)
        dark = 1.0 - rgb.mean(dim=1, keepdim=True)
        blue = rgb[:, 2:3] - rgb[:, 0:1]
        pooled = nn.functional.avg_pool2d(torch.cat([-blue * 8, dark * 6 + blue * 8], 1), 16)
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


def settle(seconds: float) -> None:
    """Let Qt process events (paint, layers added one per turn) for ``seconds``."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def run_inference(viewer, stain: bool):
    """The Inference dock on the viewer's slide, run to the end, its layers all added."""
    from napari_wsl_al._qt.infer_widget import InferenceWidget

    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right", name="Inference")
    if stain:
        widget.model_factory = StainModel
    widget.device_combo.setCurrentText("cpu")
    widget.run()
    while widget.worker is not None or widget.adding_layers:
        settle(0.1)
    settle(2.0)
    return widget


def save(viewer, path: Path, canvas_only: bool) -> None:
    viewer.screenshot(str(path), canvas_only=canvas_only)
    shrink_png(path)
    print(path, path.stat().st_size)


def slide_screenshots(stain: bool) -> None:
    """docs/inference_widget.png and docs/cmu1_overlays.png."""
    import napari

    viewer = napari.Viewer()
    viewer.window.resize(1500, 950)
    viewer.open(str(ROOT / "sample_data" / "CMU-1-Small-Region.svs"), plugin="napari-wsl-al")
    widget = run_inference(viewer, stain)
    viewer.reset_view()
    settle(1.0)
    save(viewer, ROOT / "docs" / "inference_widget.png", canvas_only=False)
    # A pathologist's zoom (about 10x): the uncertainty map instead of the CAM, the outline;
    # as a user does it, with the legend's boxes (the uncertainty's layer is made then).
    from napari_wsl_al._qt.infer_widget import OUTLINE_KEY

    for key, box in widget.legend.boxes.items():
        if key != OUTLINE_KEY:
            box.setChecked(key[1] == "uncertainty/ovr_entropy_max")
    while widget.adding_layers:
        settle(0.1)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (1700.0 * 0.499, 1150.0 * 0.499)
    camera.zoom = 1.0 / 0.499 * 0.5
    settle(2.0)
    save(viewer, ROOT / "docs" / "cmu1_overlays.png", canvas_only=True)
    viewer.close()


def patch_screenshot(stain: bool) -> None:
    """docs/patch_overlays.png: 16 GlaS training images as a folder of patches."""
    import napari

    from napari_wsl_al._qt.slide_widget import SlideWidget

    names = sorted(GLAS.glob("*.png"), key=lambda p: int(p.stem.split("_")[-1]))[:PATCHES]
    with tempfile.TemporaryDirectory(prefix="patch-overlays-") as scratch:
        folder = Path(scratch) / "glas_16"
        folder.mkdir()
        for image in names:
            (folder / image.name).symlink_to(image)
        viewer = napari.Viewer()
        viewer.window.resize(1500, 950)
        viewer.open(str(folder), plugin="napari-wsl-al")
        slide_dock = SlideWidget(viewer)  # the Slide dock's µm / pixel, set as a user would
        slide_dock.mpp_spin.setValue(GLAS_MPP)
        slide_dock.set_resolution()
        run_inference(viewer, stain)
        viewer.reset_view()
        settle(1.0)
        save(viewer, ROOT / "docs" / "patch_overlays.png", canvas_only=False)
        viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stain", action="store_true", help="a hand-made stain model")
    args = parser.parse_args()
    # Maps go to a temporary project, not the user's default one.
    os.environ.setdefault("NAPARI_WSL_AL_PROJECT", str(Path(tempfile.mkdtemp()) / "study.wslal"))
    slide_screenshots(args.stain)
    if GLAS.is_dir():
        patch_screenshot(args.stain)


if __name__ == "__main__":
    main()
