"""Make docs/patch_table.png: the Inference dock's patch table after a run on 4 GlaS images.

The four images are linked into a temporary folder, opened as a folder of patches (0.62 um per
pixel), inferred with the shipped default model on the CPU, and the camera is moved to the
least confident patch by clicking its row, as a user would.

Run under Xvfb: ``xvfb-run -a .venv/bin/python docs/make_patch_table_screenshot.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLAS = ROOT.parent / "shared" / "data" / "glas_train" / "images"
IMAGES = ("train_1", "train_12", "train_2", "train_67")


def main() -> None:
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_wsl_al._qt.infer_widget import InferenceWidget
    from napari_wsl_al._reader import layer_data
    from napari_wsl_al.core.io.image_backend import PatchFolderReader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "patch_table.png")
    args = parser.parse_args()
    app = QApplication.instance()

    def settle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    with tempfile.TemporaryDirectory(prefix="patch-table-") as scratch:
        folder = Path(scratch) / "glas_4"
        folder.mkdir()
        for name in IMAGES:
            (folder / f"{name}.png").symlink_to(GLAS / f"{name}.png")
        viewer = napari.Viewer()
        app = QApplication.instance()
        viewer.window.resize(1500, 950)
        data, kwargs, _ = layer_data(PatchFolderReader(folder, mpp=0.62))[0]
        viewer.add_image(data, **kwargs)
        widget = InferenceWidget(viewer)
        widget.project_edit.setText(str(Path(scratch) / "study.wslal"))
        viewer.window.add_dock_widget(widget, area="right", name="Inference")
        widget.device_combo.setCurrentText("cpu")
        widget.run()
        while widget.worker is not None or widget._pending:  # the layers come one per turn
            settle(0.05)
        for layer in viewer.layers:
            if layer.metadata.get("wslal_outline"):
                layer.visible = False  # the patch itself, not the outline, is the point here
        table = widget.patch_table
        table.table.sortItems(2, Qt.AscendingOrder)  # least confident first
        settle(0.5)
        table.table.selectRow(0)
        table.table.cellClicked.emit(0, 0)
        widget._scroll.ensureWidgetVisible(table)  # below the legend in the dock
        settle(1.5)
        viewer.screenshot(str(args.out), canvas_only=False)
        sys.path.insert(0, str(ROOT / "docs"))
        from make_inference_screenshot import shrink_png

        shrink_png(args.out)
        print(args.out, args.out.stat().st_size, widget.status.text())
        viewer.close()


if __name__ == "__main__":
    main()
