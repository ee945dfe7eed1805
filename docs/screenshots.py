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


if __name__ == "__main__":
    targets = sys.argv[1:] or ["slide"]
    if "slide" in targets:
        slide_screenshot(DOCS / "cmu1_napari.png")
