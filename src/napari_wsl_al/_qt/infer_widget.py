"""Inference dock widget: run a model over a slide in the background and overlay its maps in microns."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils.colormaps import Colormap, ensure_colormap
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.infer.engine import InferenceConfig
from ..core.infer.session import InferenceSession, region_from_corners, region_from_points
from ..core.io.base import SlideReader
from .patch_table import PatchTable

#: Seconds between refreshes of the map layers while a run goes on.
REFRESH_INTERVAL_S = 1.0

#: Map check boxes: label, maps.
MAP_BOXES = (("CAM", "cam"), ("Foreground", "fg"), ("Background", "bg"),
             ("Probabilities", "probs"), ("Uncertainty", "uncertainty"))

REGIONS = ("Whole tissue", "Current view", "Drawn rectangle")
RESOLUTIONS = ("Model's resolution", "Microns per pixel", "Slide level")


#: Colormaps whose low end is made transparent, so unprocessed (zero) pixels do not tint.
FADED_COLORMAPS = ("inferno", "turbo", "viridis")


def default_project_path() -> Path:
    """Where maps go unless the user picks another project: ``$NAPARI_WSL_AL_PROJECT`` or
    ``~/napari-wsl-al/study.wslal``."""
    configured = os.environ.get("NAPARI_WSL_AL_PROJECT")
    return Path(configured) if configured else Path.home() / "napari-wsl-al" / "study.wslal"


def faded_colormap(name: str) -> Colormap:
    """``name`` with an alpha ramp over its lowest quarter (0 is fully transparent)."""
    positions = np.linspace(0.0, 1.0, 33)
    colors = np.array(ensure_colormap(name).map(positions))
    colors[:, 3] = np.clip(positions * 4.0, 0.0, 1.0)
    return Colormap(colors, controls=positions, name=f"{name} (faded)")


def _slide_layers(viewer) -> list[Image]:
    return [layer for layer in viewer.layers
            if isinstance(layer, Image) and isinstance(layer.metadata.get("reader"), SlideReader)]


class InferenceWidget(QWidget):
    """Dock widget: choose slide, model, resolution, region and maps; Run / Cancel; overlays.

    The widget owns an :class:`~napari_wsl_al.core.infer.session.InferenceSession` (the
    Qt-free logic) and only wires signals: the job runs in a napari thread worker, and layers
    are added or refreshed in the worker's signal handlers on the main thread.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = InferenceSession()
        #: A callable returning a model, used instead of the model field when set (scripts, tests).
        self.model_factory = None
        #: Least tissue fraction of a processed tile.
        self.tissue_threshold = 0.05
        self.worker = None
        self._last_refresh = 0.0
        self._outline_timer = QTimer(self)
        self._outline_timer.setSingleShot(True)
        self._outline_timer.setInterval(150)
        self._outline_timer.timeout.connect(self.update_outline)

        self.slide_combo = QComboBox()
        self.model_edit = QLineEdit("default")
        self.model_edit.setToolTip("'default' or a checkpoint file (.pt)")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)

        self.project_edit = QLineEdit(str(default_project_path()))
        self.project_edit.setToolTip(
            "Project folder: maps are saved in <project>/maps/<slide>.zarr and reopen without "
            "recomputing. Created on the first run. Empty: a temporary folder (lost on exit)."
        )
        project_browse = QPushButton("…")
        project_browse.setMaximumWidth(30)
        project_browse.clicked.connect(self._browse_project)
        project_row = QHBoxLayout()
        project_row.addWidget(self.project_edit)
        project_row.addWidget(project_browse)

        self.resolution_combo = QComboBox()
        self.resolution_combo.addItems(RESOLUTIONS)
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.05, 64.0)
        self.mpp_spin.setDecimals(3)
        self.mpp_spin.setValue(0.5)
        self.mpp_spin.setSuffix(" µm/px")
        self.level_spin = QSpinBox()
        self.level_spin.setRange(0, 16)
        resolution_row = QHBoxLayout()
        for widget in (self.resolution_combo, self.mpp_spin, self.level_spin):
            resolution_row.addWidget(widget)

        self.region_combo = QComboBox()
        self.region_combo.addItems(REGIONS)

        self.map_checks = {}
        maps_row = QGridLayout()
        for index, (label, name) in enumerate(MAP_BOXES):
            box = QCheckBox(label)
            box.setChecked(name != "bg")
            self.map_checks[name] = box
            maps_row.addWidget(box, index // 3, index % 3)
        self.mc_spin = QSpinBox()
        self.mc_spin.setRange(0, 64)
        self.mc_spin.setSpecialValueText("off")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(32, 4096)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setValue(512)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setValue(8)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])

        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.threshold_slider = QSlider(Qt.Horizontal)
        self.threshold_slider.setRange(1, 99)
        self.threshold_slider.setValue(50)
        self.threshold_label = QLabel("0.50")
        self.threshold_slider.valueChanged.connect(self._threshold_changed)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.threshold_slider)
        threshold_row.addWidget(self.threshold_label)

        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("Model", model_row)
        form.addRow("Project", project_row)
        form.addRow("Resolution", resolution_row)
        form.addRow("Region", self.region_combo)
        form.addRow("Maps", maps_row)
        form.addRow("MC-dropout passes", self.mc_spin)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("FG outline threshold", threshold_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        self.patch_table = PatchTable(self.viewer)
        layout.addWidget(self.patch_table)
        layout.addStretch(1)

        self.resolution_combo.currentIndexChanged.connect(self._resolution_changed)
        self._resolution_changed()
        self.viewer.layers.events.inserted.connect(self._refresh_slides)
        self.viewer.layers.events.removed.connect(self._refresh_slides)
        self._refresh_slides()

    # ------------------------------------------------------------------ choices
    def _refresh_slides(self, event=None) -> None:
        current = self.slide_combo.currentText()
        names = [layer.name for layer in _slide_layers(self.viewer)]
        self.slide_combo.clear()
        self.slide_combo.addItems(names)
        if current in names:
            self.slide_combo.setCurrentText(current)

    def _resolution_changed(self, index=None) -> None:
        choice = self.resolution_combo.currentText()
        self.mpp_spin.setVisible(choice == "Microns per pixel")
        self.level_spin.setVisible(choice == "Slide level")

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", "", "Checkpoints (*.pt)")
        if path:
            self.model_edit.setText(path)

    def _browse_project(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Project folder (study.wslal)")
        if path:
            self.project_edit.setText(path)

    def project_choice(self) -> Path | None:
        """The project folder chosen in the form (None: a temporary folder)."""
        text = self.project_edit.text().strip()
        return Path(text).expanduser() if text else None

    def slide_layer(self) -> Image | None:
        """The chosen slide layer."""
        name = self.slide_combo.currentText()
        for layer in _slide_layers(self.viewer):
            if layer.name == name:
                return layer
        return None

    def model_choice(self):
        """``"default"``, a checkpoint path, or a callable set by code (tests, scripts)."""
        text = self.model_edit.text().strip() or "default"
        if self.model_factory is not None:
            return self.model_factory
        return text if text == "default" else Path(text)

    def config(self) -> InferenceConfig:
        """The inference parameters chosen in the form."""
        maps = tuple(name for name, box in self.map_checks.items() if box.isChecked())
        choice = self.resolution_combo.currentText()
        return InferenceConfig(
            mpp=self.mpp_spin.value() if choice == "Microns per pixel" else None,
            level=self.level_spin.value() if choice == "Slide level" else None,
            tile_size=self.tile_spin.value(),
            overlap=self.tile_spin.value() // 4,
            batch_size=self.batch_spin.value(),
            device=self.device_combo.currentText(),
            maps=maps or ("fg",),
            mc_passes=self.mc_spin.value(),
            tissue_threshold=self.tissue_threshold,
        )

    def region(self, layer: Image):
        """The level-0 box of the chosen region, or None for the whole tissue."""
        reader: SlideReader = layer.metadata["reader"]
        choice = self.region_combo.currentText()
        if choice == "Current view":
            level = layer.data_level
            downsample = tuple(layer.downsample_factors[level][-2:])
            return region_from_corners(layer.corner_pixels[:, -2:], downsample, reader.dimensions)
        if choice == "Drawn rectangle":
            shapes = [item for item in self.viewer.layers
                      if isinstance(item, Shapes) and len(item.data)
                      and not item.metadata.get("wslal_outline")]
            if not shapes:
                raise ValueError("draw a rectangle in a Shapes layer first")
            active = self.viewer.layers.selection.active
            source = active if active in shapes else shapes[-1]
            vertices = source.data[-1]
            points = [layer.world_to_data(source.data_to_world(v)) for v in vertices]
            return region_from_points(points, reader.dimensions)
        return None

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        """Start inference on the chosen slide in a thread worker."""
        if self.worker is not None:
            return
        layer = self.slide_layer()
        if layer is None:
            show_error("Open a slide first (File > Open, or a sample from napari-wsl-al).")
            return
        try:
            config = self.config()
            region = self.region(layer)
        except ValueError as error:
            show_error(str(error))
            return
        self._slide = layer
        self._last_refresh = 0.0
        self.progress_bar.setRange(0, 0)
        self.status.setText("loading the model…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker = create_worker(
            self.session.run_with_model, layer.metadata["reader"], self.model_choice(), config,
            region, self.project_choice(), _start_thread=False, _ignore_errors=True,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Stop the run after the current batch (the maps computed so far are kept)."""
        self.session.cancel()
        self.status.setText("cancelling…")
        self.cancel_button.setEnabled(False)

    def _on_progress(self, progress) -> None:
        self.progress_bar.setRange(0, progress.total or 0)
        self.progress_bar.setValue(progress.step)
        self.status.setText(f"{progress.message} · {progress.metrics.get('tiles_per_s', 0):.1f} tiles/s")
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_INTERVAL_S:
            self._last_refresh = now
            self.refresh_layers()

    def _on_returned(self, result) -> None:
        self.refresh_layers()
        self.update_outline()
        self.patch_table.update_from(result, self.session.store, getattr(self, "_slide", None))
        if result is None:
            self.status.setText("cancelled; run again to resume")
            return
        self.progress_bar.setRange(0, max(1, result.tiles_total))
        self.progress_bar.setValue(result.tiles_total)
        self.status.setText(
            f"{result.tiles_computed} of {result.tiles_total} tiles computed in "
            f"{result.seconds:.1f} s on {result.device}; maps in {result.path}")
        show_info(f"Maps written to {result.path}")

    def _on_error(self, error: Exception) -> None:
        self.status.setText(f"failed: {error}")
        show_error(str(error))

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)

    # ------------------------------------------------------------------ layers
    def refresh_layers(self) -> None:
        """Add the map layers, or give the existing ones fresh data (tiles finished since)."""
        for spec in self.session.layer_specs():
            if spec.name in self.viewer.layers:
                self.viewer.layers[spec.name].data = spec.data
            else:
                kwargs = dict(spec.kwargs)
                if kwargs.get("colormap") in FADED_COLORMAPS:
                    kwargs["colormap"] = faded_colormap(kwargs["colormap"])
                self.viewer.add_image(spec.data, name=spec.name, **kwargs)
        if getattr(self, "_slide", None) is not None and self._slide in self.viewer.layers:
            self.viewer.layers.selection.active = self._slide

    def _threshold_changed(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        self._outline_timer.start()

    def outline_layer_name(self) -> str:
        """Name of the foreground outline layer of the current slide."""
        return f"{self.session.slide_name} fg outline"

    def update_outline(self) -> None:
        """Redraw the contours of foreground > threshold (for spotting false positives)."""
        handles = self.session.handles()
        if "fg" not in handles:
            return
        threshold = self.threshold_slider.value() / 100
        polygons = self.session.outline(threshold)
        name = self.outline_layer_name()
        width = max(handles["fg"].scale) * 0.75
        active = self.viewer.layers.selection.active
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = []
        else:
            layer = self.viewer.add_shapes(
                name=name, ndim=2, edge_color="yellow", face_color="transparent",
                edge_width=width, metadata={"wslal_outline": True},
                **({"units": "um"} if handles["fg"].unit == "micrometer" else {}),
            )
        if polygons:
            layer.add_polygons(polygons, edge_width=width, edge_color="yellow",
                               face_color="transparent")
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.session.close()
        super().closeEvent(event)
