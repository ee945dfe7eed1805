"""``napari-wsl-al demo``: napari with the sample slide and the plugin's widgets, or a headless run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "demo"
HELP = "open the sample slide in napari with the plugin's widgets (--headless: no screen needed)"

#: Dock widgets opened by the demo, by display name in napari.yaml; missing ones are skipped.
DEMO_WIDGETS = ("Project", "Model", "Slide", "Inference", "Metrics", "Active learning")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the sub-command."""
    parser.add_argument(
        "slide", nargs="?", type=Path, help="slide to open (default: the CMU-1-Small-Region sample)"
    )
    parser.add_argument(
        "--headless",
        action="store_true",
        help="no window: open the slide through the core, compute its tissue mask, write a PNG",
    )
    parser.add_argument(
        "--screenshot", type=Path, help="write a screenshot to this PNG (default with --headless: demo.png)"
    )
    parser.add_argument("--quit", action="store_true", help="close napari after the screenshot")


def default_slide() -> Path:
    """The real sample slide shipped in ``sample_data/``."""
    from .._sample_data import find_cmu1

    return find_cmu1()


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    slide = args.slide or default_slide()
    if args.headless:
        return run_headless(slide, args.screenshot or Path("demo.png"))
    return run_napari(slide, args.screenshot, args.quit)


def run_headless(slide: Path, screenshot: Path) -> int:
    """Open a slide through the core, as napari would, and write what the viewer would show."""
    import numpy as np
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    from .._reader import napari_get_reader
    from ..core.data.tissue import tissue_mask

    start = time.perf_counter()
    reader_function = napari_get_reader(str(slide))
    if reader_function is None:
        from ..core.io import open_slide

        open_slide(slide)  # raises the typed error that says why
        raise RuntimeError(f"{slide}: no reader")
    data, kwargs, _ = reader_function(str(slide))[0]
    reader = kwargs["metadata"]["reader"]
    lowest = np.asarray(data[-1])
    opened_ms = 1000 * (time.perf_counter() - start)

    mask = tissue_mask(reader)
    outline = resize(mask.mask, lowest.shape[:2], order=0) if mask.mask.any() else None
    picture = lowest.copy()
    if outline is not None:
        edges = find_boundaries(outline, mode="thick")
        picture[edges] = (0, 160, 255)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    imsave(screenshot, picture, check_contrast=False)

    width, height = reader.dimensions
    mpp = "unknown" if reader.mpp is None else f"{reader.mpp[0]:.4g} um/px"
    print(f"Opened {slide} ({reader.format}): {width}x{height} px, {reader.level_count} levels, {mpp}")
    print(f"  layer '{kwargs['name']}': multiscale RGB, scale {tuple(kwargs['scale'])} (y, x)")
    print(f"  first screen (smallest level {lowest.shape[1]}x{lowest.shape[0]}) in {opened_ms:.0f} ms")
    print(f"  tissue covers {100 * mask.fraction():.1f}% of the slide")
    print(f"  wrote {screenshot} (smallest level with the tissue outline in blue)")
    return 0


def run_napari(slide: Path, screenshot: Path | None, quit_after: bool) -> int:
    """Open napari with the slide and the plugin's dock widgets."""
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-wsl-al demo")
    viewer.window.resize(1500, 950)
    viewer.open(str(slide), plugin="napari-wsl-al")
    docked = 0
    for widget_name in DEMO_WIDGETS:
        try:
            # One dock area, one tab per widget: the slide keeps most of the window.
            viewer.window.add_plugin_dock_widget("napari-wsl-al", widget_name, tabify=docked > 0)
        except KeyError:
            continue
        docked += 1
    viewer.scale_bar.visible = True
    viewer.reset_view()
    if screenshot is not None or quit_after:

        def finish() -> None:
            if screenshot is not None:
                viewer.screenshot(str(screenshot), canvas_only=False)
                print(f"wrote {screenshot}")
            if quit_after:
                viewer.close()

        QTimer.singleShot(1500, finish)
    napari.run()
    return 0
