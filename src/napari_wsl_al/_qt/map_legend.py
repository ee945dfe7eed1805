"""The legend of the Inference dock's maps: each map's colour ramp, value range and meaning,
and a box per layer that shows it."""

from __future__ import annotations

import html

import numpy as np
from napari.utils.colormaps import ensure_colormap
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QCheckBox, QGridLayout, QHBoxLayout, QLabel, QVBoxLayout, QWidget

#: Size of a colour ramp, in screen pixels.
RAMP_SIZE = (72, 10)

#: Grey the transparent part of a ramp is drawn over (the look of a map over glass and tissue).
RAMP_BACKGROUND = 0.45


def ramp_pixmap(colormap, size: tuple[int, int] = RAMP_SIZE) -> QPixmap:
    """A horizontal ramp of ``colormap`` from 0 (left) to 1, its transparency shown over grey."""
    width, height = size
    colors = np.asarray(ensure_colormap(colormap).map(np.linspace(0.0, 1.0, width)), float)
    alpha = colors[:, 3:4]
    rgb = alpha * colors[:, :3] + (1.0 - alpha) * RAMP_BACKGROUND
    image = np.ascontiguousarray(
        np.repeat((255 * rgb).round().astype(np.uint8)[None], height, axis=0))
    qimage = QImage(image.data, width, height, 3 * width, QImage.Format_RGB888).copy()
    return QPixmap.fromImage(qimage)


def line_pixmap(color, size: tuple[int, int] = RAMP_SIZE) -> QPixmap:
    """A line of ``color`` (RGBA in [0, 1]) across a grey swatch: how an outline looks."""
    width, height = size
    image = np.full((height, width, 3), round(255 * RAMP_BACKGROUND), np.uint8)
    middle = height // 2
    image[middle - 1 : middle + 1] = (255 * np.asarray(color[:3])).round().astype(np.uint8)
    qimage = QImage(np.ascontiguousarray(image).data, width, height, 3 * width,
                    QImage.Format_RGB888).copy()
    return QPixmap.fromImage(qimage)


class MapLegend(QWidget):
    """One row per map: its colour ramp, its range, a box per layer and what the map means.

    The legend stands in for napari's colour bars (one vispy overlay per layer, slow to build
    on the UI thread). Each layer of a row has a check box: ticking it shows the layer (the dock
    makes it on the first tick), unticking it hides it.

    Attributes
    ----------
    rows : list of dict
        ``title``, ``low``, ``high``, ``description`` and ``toggles`` (the ``(key, label)`` of
        each box) of each row shown (for scripts and tests).
    boxes : dict
        ``key -> QCheckBox`` of every layer box.

    Signals
    -------
    toggled(object, bool)
        A box was ticked or unticked by the user: its key and its new state.
    """

    toggled = Signal(object, bool)

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.boxes: dict = {}
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setColumnStretch(2, 1)
        self.setVisible(False)

    def clear(self) -> None:
        """Remove every row."""
        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.rows = []
        self.boxes = {}
        self.setVisible(False)

    def add_row(self, title: str, swatch: QPixmap, description: str,
                low: float | None = None, high: float | None = None,
                toggles: list[tuple] | None = None) -> None:
        """Add a row; ``low``/``high`` label the ends of a ramp; ``toggles`` are the
        ``(key, label)`` of the row's layers, each given a check box (unticked)."""
        row = len(self.rows)
        picture = QLabel()
        picture.setPixmap(swatch)
        picture.setToolTip(description)
        span = "" if low is None else f"{low:g} – {high:.2g}"
        scale = QLabel(span)
        scale.setStyleSheet("color: gray;")
        toggles = list(toggles or [])
        if toggles:
            text = QLabel(html.escape(description))
        else:
            text = QLabel(f"<b>{html.escape(title)}</b>: {html.escape(description)}")
            text.setTextFormat(Qt.RichText)
        text.setWordWrap(True)
        cell = QWidget()
        column = QVBoxLayout(cell)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        if toggles:
            line = QHBoxLayout()
            line.setSpacing(10)
            for key, label in toggles:
                box = QCheckBox(label)
                box.setStyleSheet("font-weight: bold;")
                box.setToolTip(f"show {label} (its layer is made on the first tick)")
                box.toggled.connect(lambda checked, key=key: self.toggled.emit(key, checked))
                self.boxes[key] = box
                line.addWidget(box)
            line.addStretch(1)
            column.addLayout(line)
        column.addWidget(text)
        self._grid.addWidget(picture, row, 0, Qt.AlignTop)
        self._grid.addWidget(scale, row, 1, Qt.AlignTop)
        self._grid.addWidget(cell, row, 2)
        self.rows.append({"title": title, "low": low, "high": high, "description": description,
                          "toggles": toggles})
        self.setVisible(True)

    def set_checked(self, key, checked: bool) -> None:
        """Tick or untick a layer's box without emitting :attr:`toggled` (the layer changed)."""
        box = self.boxes.get(key)
        if box is not None and box.isChecked() != bool(checked):
            box.blockSignals(True)
            box.setChecked(bool(checked))
            box.blockSignals(False)
