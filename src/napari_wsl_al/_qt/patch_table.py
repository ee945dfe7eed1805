"""Table of the patches of a folder with their predicted class; a click shows the patch."""

from __future__ import annotations

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.infer.patches import PatchPrediction, read_patch_predictions

#: Columns of the table.
COLUMNS = ("Patch", "Prediction", "Confidence")

#: Fraction of the view the chosen patch fills.
VIEW_FRACTION = 0.9


class _NumberItem(QTableWidgetItem):
    """A cell shown as text, sorted by its number."""

    def __init__(self, value: float, text: str):
        super().__init__(text)
        self.value = float(value)

    def __lt__(self, other) -> bool:
        if isinstance(other, _NumberItem):
            return self.value < other.value
        return super().__lt__(other)


def _camera(viewer):
    """``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return viewer.camera if scene is None else scene.camera


class PatchTable(QWidget):
    """The patches of a folder with their class: sortable; a click centres the patch.

    Hidden until it has patches (a slide has none). The widget only shows
    :class:`~napari_wsl_al.core.infer.patches.PatchPrediction` records and moves the camera;
    the records come from the inference result or from the map store.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose camera moves.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.patches: list[PatchPrediction] = []
        self.layer = None
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        for column in range(1, len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeToContents)
        header.setSortIndicator(0, Qt.AscendingOrder)  # mosaic order at first
        self.table.setSortingEnabled(True)
        self.table.setToolTip("The class the model gives each patch as a whole image. "
                              "Click a row to show that patch; click a header to sort.")
        self.table.cellClicked.connect(self._cell_clicked)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        self.setVisible(False)

    # ------------------------------------------------------------------ filling
    def update_from(self, result=None, store=None, layer=None) -> None:
        """Show the patches of an inference result, or those finished in a map store.

        A slide (no patches) hides the table. Errors are shown as notifications.
        """
        try:
            patches = list(getattr(result, "patches", None) or [])
            if not patches and store is not None and store.exists():
                patches = read_patch_predictions(store.path)
            self.set_patches(patches, layer)
        except Exception as error:  # noqa: BLE001 (every error must become a notification)
            show_error(f"cannot show the patch classes: {error}")

    def set_patches(self, patches: list[PatchPrediction], layer=None) -> None:
        """Fill the table (empty: hide it). ``layer`` is the slide layer of the folder."""
        self.patches = list(patches)
        self.layer = layer
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self.patches))
        for row, patch in enumerate(self.patches):
            name = QTableWidgetItem(patch.name)
            name.setData(Qt.UserRole, row)
            tip = " · ".join(f"{c} {p:.2f}" for c, p in zip(patch.classes, patch.probabilities))
            name.setToolTip(tip)
            prediction = QTableWidgetItem(patch.prediction)
            prediction.setToolTip(tip)
            confidence = _NumberItem(patch.confidence, f"{patch.confidence:.2f}")
            confidence.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
            for column, item in enumerate((name, prediction, confidence)):
                self.table.setItem(row, column, item)
        self.table.setSortingEnabled(True)
        self.summary.setText(self._summary())
        self.setVisible(bool(self.patches))

    def _summary(self) -> str:
        if not self.patches:
            return ""
        counts: dict[str, int] = {}
        for patch in self.patches:
            counts[patch.prediction] = counts.get(patch.prediction, 0) + 1
        order = [name for name in self.patches[0].classes if name in counts]
        return (f"{len(self.patches)} patches: "
                + ", ".join(f"{counts[name]} {name}" for name in order))

    # ------------------------------------------------------------------ the camera
    def patch_in_row(self, row: int) -> PatchPrediction | None:
        """The patch shown in a table row (after any sorting)."""
        item = self.table.item(row, 0)
        if item is None:
            return None
        return self.patches[int(item.data(Qt.UserRole))]

    def _cell_clicked(self, row: int, column: int) -> None:
        try:
            patch = self.patch_in_row(row)
            if patch is not None:
                self.go_to(patch)
        except Exception as error:  # noqa: BLE001 (every error must become a notification)
            show_error(f"cannot show the patch: {error}")

    def view_px(self) -> tuple[float, float]:
        """``(height, width)`` of the viewer's canvas area in screen pixels."""
        window = self.window()
        central = window.centralWidget() if hasattr(window, "centralWidget") else None
        if central is None:
            return (800.0, 800.0)
        return (float(central.height()), float(central.width()))

    def go_to(self, patch: PatchPrediction) -> None:
        """Centre the camera on a patch, zoomed so that it fills most of the view."""
        if self.layer is None or self.layer not in self.viewer.layers:
            raise ValueError("the patch folder's layer is no longer in the viewer")
        x, y, width, height = patch.box
        # Level-0 pixel centres are at integer data coordinates.
        centre = self.layer.data_to_world((y + (height - 1) / 2, x + (width - 1) / 2))
        scale_y, scale_x = (abs(float(s)) for s in self.layer.scale[-2:])
        view_h, view_w = self.view_px()
        camera = _camera(self.viewer)
        camera.center = tuple(float(v) for v in centre[-2:])
        camera.zoom = VIEW_FRACTION * min(view_h / (height * scale_y), view_w / (width * scale_x))
