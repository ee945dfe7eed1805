"""Slide dock widget: what the open slide is, its resolution, its tissue, its label and macro images."""

from __future__ import annotations

import html
import math

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.io.base import SlideReader

#: Side of the associated-image preview, in screen pixels.
PREVIEW_SIZE = 180


def slide_layers(viewer) -> list[Image]:
    """Image layers opened by this plugin (their metadata carries the slide reader)."""
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Image) and isinstance(layer.metadata.get("reader"), SlideReader)
    ]


def set_layer_resolution(layer: Image, mpp: float) -> None:
    """Give a slide layer's reader ``mpp`` µm per pixel and rescale the layer to microns."""
    reader = layer.metadata["reader"]
    reader.set_mpp(mpp)
    layer.scale = reader.napari_scale()
    layer.units = "um"  # as the maps of it will be (napari warns about mixed units)
    layer.metadata["slide"] = reader.metadata()


def match_recorded_resolution(layer: Image, mpp: float | None, name: str) -> bool:
    """Give a slide layer the resolution its project records (``mpp``; None: none) when it
    reads at another, and say so; whether the layer changed."""
    current = layer.metadata["reader"].mpp
    if mpp is None or (current is not None and math.isclose(current[0], mpp, rel_tol=1e-9)):
        return False
    set_layer_resolution(layer, mpp)
    show_info(f"{name}: resolution set to {mpp:g} µm/px, as recorded in the project")
    return True


def describe(reader: SlideReader) -> str:
    """An HTML summary of a slide for the info panel."""
    width, height = reader.dimensions
    native = len(reader.native_dimensions)
    lazy = reader.level_count - native
    levels = f"{native} in the file" + (f" + {lazy} computed on the fly" if lazy else "")
    mpp = "unknown: set it below" if reader.mpp is None else f"{reader.mpp[0]:.4g} x {reader.mpp[1]:.4g}"
    rows = [
        ("Format", reader.format),
        ("Size", f"{width:,} x {height:,} px"),
        ("Levels", levels),
        ("µm / pixel", mpp),
        ("Objective", "unknown" if reader.objective_power is None else f"{reader.objective_power:g}x"),
    ]
    if reader.mpp is not None:
        rows.append(("Extent", f"{width * reader.mpp[0] / 1000:.2f} x {height * reader.mpp[1] / 1000:.2f} mm"))
    cells = "".join(
        f"<tr><td><b>{html.escape(k)}</b>&nbsp;</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def _pixmap(image: np.ndarray, size: int = PREVIEW_SIZE) -> QPixmap:
    rgb = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    qimage = QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy()
    return QPixmap.fromImage(qimage).scaled(size, size, Qt.KeepAspectRatio, Qt.SmoothTransformation)


class SlideWidget(QWidget):
    """Information on the selected slide layer, its resolution, tissue mask and associated images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose slide layers the widget shows.
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        #: The reader whose information and associated images are shown.
        self._shown: SlideReader | None = None

        self.layer_combo = QComboBox()
        self.info = QLabel("Open a slide: File > Open, or File > Open Sample > WSL Active Learning.")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setRange(0.01, 100.0)
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setValue(0.5)
        self.mpp_button = QPushButton("Set resolution")
        self.mpp_button.setToolTip("Microns per pixel at full resolution; maps and labels use it")
        mpp_row = QHBoxLayout()
        mpp_row.addWidget(self.mpp_spin)
        mpp_row.addWidget(self.mpp_button)

        self.tissue_button = QPushButton("Show tissue mask")
        self.tissue_button.setToolTip("Otsu on saturation at low resolution: where inference will run")

        self.associated_combo = QComboBox()
        self.preview = QLabel()
        self.preview.setAlignment(Qt.AlignCenter)
        self.preview.setMinimumHeight(PREVIEW_SIZE // 2)

        form = QFormLayout()
        form.addRow("Slide", self.layer_combo)
        form.addRow("µm / pixel", mpp_row)
        form.addRow("Associated", self.associated_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.info)
        layout.addWidget(self.tissue_button)
        layout.addWidget(self.preview)
        layout.addStretch(1)

        self.layer_combo.currentIndexChanged.connect(self._show_selected)
        self.mpp_button.clicked.connect(self.set_resolution)
        self.tissue_button.clicked.connect(self.show_tissue_mask)
        self.associated_combo.currentTextChanged.connect(self._show_associated)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ state
    @property
    def layer(self) -> Image | None:
        """The slide layer chosen in the combo box."""
        name = self.layer_combo.currentText()
        for layer in slide_layers(self.viewer):
            if layer.name == name:
                return layer
        return None

    @property
    def reader(self) -> SlideReader | None:
        """The reader of the chosen slide layer."""
        layer = self.layer
        return None if layer is None else layer.metadata["reader"]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in slide_layers(self.viewer)]
        listed = [self.layer_combo.itemText(i) for i in range(self.layer_combo.count())]
        if names and names == listed and self.reader is not None and self.reader is self._shown:
            return  # another kind of layer came or went (maps, outlines): nothing to redo
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        elif names:
            self.layer_combo.setCurrentIndex(len(names) - 1)
        self.layer_combo.blockSignals(False)
        self._show_selected()

    def _show_selected(self, index: int | None = None) -> None:
        reader = self.reader
        self._shown = reader
        enabled = reader is not None
        for widget in (self.mpp_spin, self.mpp_button, self.tissue_button, self.associated_combo):
            widget.setEnabled(enabled)
        self.associated_combo.blockSignals(True)
        self.associated_combo.clear()
        self.preview.clear()
        if reader is None:
            self.associated_combo.blockSignals(False)
            return
        self.info.setText(describe(reader))
        if reader.mpp is not None:
            self.mpp_spin.setValue(reader.mpp[0])
        names = reader.associated_image_names()
        self.associated_combo.addItems(names)
        self.associated_combo.setEnabled(bool(names))
        self.associated_combo.blockSignals(False)
        if names:
            self._show_associated(names[0])

    # ------------------------------------------------------------------ actions
    def set_resolution(self) -> None:
        """Give the slide the resolution in the spin box and rescale its layer to microns."""
        layer, reader = self.layer, self.reader
        if reader is None:
            return
        set_layer_resolution(layer, self.mpp_spin.value())
        self.viewer.reset_view()
        self.info.setText(describe(reader))
        show_info(f"{reader.name}: resolution set to {reader.mpp[0]:.4g} µm/px")

    def show_tissue_mask(self) -> None:
        """Compute the tissue mask in a background thread and add it as a labels layer."""
        from ..core.data.tissue import tissue_mask

        layer, reader = self.layer, self.reader
        if reader is None:
            return
        self.tissue_button.setEnabled(False)
        self.tissue_button.setText("Computing tissue mask…")
        worker = create_worker(tissue_mask, reader)
        worker.returned.connect(lambda mask: self._add_tissue_layer(layer, reader, mask))
        worker.errored.connect(lambda error: show_error(f"Tissue mask of {reader.name}: {error}"))
        worker.finished.connect(self._tissue_done)
        self._worker = worker
        worker.start()

    def _tissue_done(self) -> None:
        self._worker = None
        self.tissue_button.setText("Show tissue mask")
        self.tissue_button.setEnabled(self.reader is not None)

    def _add_tissue_layer(self, layer: Image, reader: SlideReader, mask) -> None:
        name = f"{layer.name} tissue"
        scale = tuple(s * mask.downsample for s in reader.napari_scale())
        # Mask pixel centres sit in the middle of the level-0 blocks they summarise.
        translate = tuple((mask.downsample - 1) / 2 * s for s in reader.napari_scale())
        labels = mask.mask.astype(np.uint8)
        if name in self.viewer.layers:
            existing = self.viewer.layers[name]
            existing.data, existing.scale, existing.translate = labels, scale, translate
        else:
            added = self.viewer.add_labels(
                labels, name=name, scale=scale, translate=translate, units=layer.units, opacity=0.7
            )
            added.colormap = DirectLabelColormap(color_dict={None: "transparent", 1: "cyan"})
            added.contour = 3
        show_info(f"{reader.name}: tissue covers {100 * mask.fraction():.1f}% of the slide")

    def _show_associated(self, name: str) -> None:
        reader = self.reader
        if reader is None or not name:
            self.preview.clear()
            return
        try:
            image = reader.read_associated(name)
        except (KeyError, OSError, ValueError) as error:
            show_error(f"{reader.name}: cannot read the {name} image: {error}")
            return
        self.preview.setPixmap(_pixmap(image))
        self.preview.setToolTip(f"{name}: {image.shape[1]} x {image.shape[0]} px")
