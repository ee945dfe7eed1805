"""The legend of the Inference dock's maps: each map's colour ramp, value range and meaning."""

from __future__ import annotations

import html

import numpy as np
from napari.utils.colormaps import ensure_colormap
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

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
    """One row per map: its colour ramp, its range, its layer titles and what it means.

    Attributes
    ----------
    rows : list of dict
        ``title``, ``low``, ``high``, ``description`` of each row shown (for scripts and tests).
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
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
        self.setVisible(False)

    def add_row(self, title: str, swatch: QPixmap, description: str,
                low: float | None = None, high: float | None = None) -> None:
        """Add a row; ``low``/``high`` label the ends of a ramp."""
        row = len(self.rows)
        picture = QLabel()
        picture.setPixmap(swatch)
        picture.setToolTip(description)
        span = "" if low is None else f"{low:g} – {high:.2g}"
        scale = QLabel(span)
        scale.setStyleSheet("color: gray;")
        text = QLabel(f"<b>{html.escape(title)}</b>: {html.escape(description)}")
        text.setTextFormat(Qt.RichText)
        text.setWordWrap(True)
        self._grid.addWidget(picture, row, 0, Qt.AlignTop)
        self._grid.addWidget(scale, row, 1, Qt.AlignTop)
        self._grid.addWidget(text, row, 2)
        self.rows.append({"title": title, "low": low, "high": high, "description": description})
        self.setVisible(True)
