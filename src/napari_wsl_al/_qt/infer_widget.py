"""Inference dock widget: run a model over a slide in the background and overlay its maps in microns."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils.colormaps import Colormap, ensure_colormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.infer.engine import InferenceConfig
from ..core.infer.session import (
    InferenceSession,
    MapLayerSpec,
    OutlineData,
    levels_in_memory,
    map_description,
    outline_layer_name,
    region_from_corners,
    region_from_points,
    result_summary,
    same_levels,
)
from ..core.io.base import SlideReader
from ..core.progress import Progress
from ..core.project import PROJECT_FILE, Project
from .map_legend import MapLegend, line_pixmap, ramp_pixmap
from .patch_table import PatchTable
from .slide_widget import match_recorded_resolution, slide_layers
from .slots import reported, set_progress

#: Seconds between refreshes of the visible map layers while a run goes on.
REFRESH_INTERVAL_S = 1.0

#: Pause before each map layer is added: napari takes 0.1-0.5 s to make an image layer (its
#: controls and visual), and the pause lets the UI paint and take input between two of them.
MAP_LAYER_DELAY_MS = 50

#: Map levels of at most this many pixels (16 MiB of float32) are read in the worker thread
#: for the layers shown, so napari shows them without reading the store on the UI thread
#: (where a read waits behind a running job's writes: 50-250 ms measured).
MEMORY_LEVEL_PIXELS = 1 << 22

#: While napari makes and first paints the layer of the map shown first, the run waits (at
#: most this many seconds): both need the CPU, and napari's layer (Qt controls, vispy visual,
#: software OpenGL's first paint) takes twice as long with inference running beside it.
LAYER_PAUSE_S = 2.0

#: The run goes on this many ms after that layer was added, the time of its first paint.
FIRST_PAINT_MS = 150

#: Legend key of the foreground outline's box (map layers are keyed by :func:`map_key`).
OUTLINE_KEY = "outline"

#: Map check boxes: label, maps.
MAP_BOXES = (("CAM", "cam"), ("Foreground", "fg"), ("Background", "bg"),
             ("Probabilities", "probs"), ("Uncertainty", "uncertainty"))

#: Maps checked at first: one overlay per question (what class, where, how sure).
DEFAULT_MAPS = ("cam", "fg", "uncertainty")

#: What each map check box gives (its tooltip, and the help under the boxes).
MAP_HELP = {
    "cam": ("P(class): one class activation map per class, how strongly each spot looks like "
            "that class, 0 to 1; the class of interest (the last class, or the project's "
            "class_of_interest) is shown first"),
    "fg": ("foreground: where the model finds its evidence, 0 to 1: for its foreground class "
           "when it has one (the shipped model: malignant), else for its decision; outlined in "
           "yellow above the outline threshold"),
    "bg": "background: 1 - foreground",
    "probs": ("tile P(class): the class probabilities of the whole tile (or patch) around "
              "each spot, the image-level decision"),
    "uncertainty": ("uncertainty: how unsure the model is, 0 (sure) to 0.69 (a coin flip): "
                    "the places worth labelling"),
}

REGIONS = ("Whole tissue", "Current view", "Drawn rectangle")
RESOLUTIONS = ("Model's resolution", "Microns per pixel", "Slide level")

#: Colormaps whose low end is made transparent, so unprocessed (zero) pixels do not tint.
FADED_COLORMAPS = ("inferno", "turbo", "viridis")

#: Colour of the foreground outline (RGBA); 0 is transparent.
OUTLINE_COLOR = (1.0, 0.9, 0.0, 1.0)


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


def outline_colormap() -> Colormap:
    """Transparent at 0, :data:`OUTLINE_COLOR` at 1."""
    return Colormap([[0.0, 0.0, 0.0, 0.0], list(OUTLINE_COLOR)], name="foreground outline")


def map_key(layer) -> tuple | None:
    """``(store, map, channel)`` of a map layer made by this widget, None for other layers."""
    meta = layer.metadata
    if "wslal_store" not in meta or "wslal_map" not in meta:
        return None
    return (meta["wslal_store"], meta["wslal_map"], meta.get("channel"))


def spec_key(spec: MapLayerSpec) -> tuple:
    """The :func:`map_key` the layer of ``spec`` has."""
    meta = spec.kwargs["metadata"]
    return (meta["wslal_store"], meta["wslal_map"], meta.get("channel"))


def layer_kwargs(spec: MapLayerSpec) -> dict:
    """``add_image`` / ``Image`` keyword arguments of a spec, with the faded colormaps."""
    kwargs = dict(spec.kwargs)
    if kwargs.get("colormap") in FADED_COLORMAPS:
        kwargs["colormap"] = faded_colormap(kwargs["colormap"])
    return kwargs


def make_map_layer(spec: MapLayerSpec) -> Image:
    """The napari image layer of a map, shown.

    Made in the worker thread for the maps shown when a run's maps appear: building the layer
    reads its first slice and thumbnail, and only adding it to the viewer is left to the UI
    thread. Its colour bar stays off: the dock's legend gives the colours (napari builds a
    colour bar's vispy visual, 0.3-0.8 s on the UI thread, as soon as it is on).
    """
    return Image(spec.data, name=spec.name, **{**layer_kwargs(spec), "visible": True})


def in_memory(spec: MapLayerSpec) -> MapLayerSpec:
    """The spec with its small levels read into memory (:func:`levels_in_memory`)."""
    return replace(spec, data=levels_in_memory(spec.data, MEMORY_LEVEL_PIXELS))


@dataclass
class PreparedOutline:
    """A traced outline and, when made in a worker thread, its layer (``layer`` is None when
    only the data of an existing layer is to change)."""

    outline: OutlineData
    layer: Image | None = None


def make_outline_layer(outline: OutlineData, store_key: str, name: str) -> Image:
    """The napari image layer of a foreground outline, made off the UI thread like
    :func:`make_map_layer` (building it reads its coarsest level and thumbnail)."""
    return Image(
        outline.levels, name=name, multiscale=True,
        scale=outline.scale, translate=outline.translate, colormap=outline_colormap(),
        contrast_limits=(0, 1), blending="translucent", opacity=1.0,
        metadata={"wslal_outline": True, "wslal_store": store_key,
                  "threshold": outline.threshold,
                  "description": "contours of the foreground above the outline threshold"},
        **({"units": "um"} if outline.unit == "micrometer" else {}),
    )


@contextmanager
def keep_selection(layers):
    """Add layers without changing which layer is selected.

    napari selects a layer as it is added (its controls are swapped in, and every widget that
    follows the selection updates: 50-130 ms measured for a map layer), and selecting the old
    one again costs as much. napari's layer list skips the first when its
    ``_activate_on_insert`` is off; where it has no such switch, the old selection is restored.
    """
    active = layers.selection.active
    switch = hasattr(layers, "_activate_on_insert")
    if switch:
        before, layers._activate_on_insert = layers._activate_on_insert, False
    try:
        yield
    finally:
        if switch:
            layers._activate_on_insert = before
        elif active is not None and active in layers:
            layers.selection.active = active


def legend_rows(specs: list[MapLayerSpec]) -> list[dict]:
    """One legend row per map of a run: its layers' titles, colormap, range and meaning, and
    the ``(key, title)`` of each of its layers (``toggles``)."""
    groups: dict[str, list[MapLayerSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.kwargs["metadata"]["wslal_map"], []).append(spec)
    rows = []
    for name, group in groups.items():
        shown = [spec for spec in group if spec.kwargs.get("visible")]
        if len(group) == 1 or shown:
            description = (shown or group)[0].description
        else:
            description = map_description(name)
        low, high = group[0].kwargs.get("contrast_limits", (0.0, 1.0))
        rows.append({"title": ", ".join(spec.title for spec in group),
                     "colormap": layer_kwargs(group[0]).get("colormap", "gray"),
                     "low": low, "high": high, "description": description,
                     "toggles": [(spec_key(spec), spec.title) for spec in group]})
    return rows


@dataclass
class PreparedLayers:
    """Map layers made in the worker thread, handed to the UI thread to add or update.

    Attributes
    ----------
    specs : list of MapLayerSpec
        Every map layer of the run.
    layers : dict
        ``spec_key -> Image`` for the maps shown first that had no layer when the run started.
    final : bool
        The maps as the run left them (the last specs of a run).
    """

    specs: list
    layers: dict
    final: bool = False


class ScrollArea(QScrollArea):
    """A vertical scroll area as wide as its content (napari sizes docks by their hints)."""

    def _width(self, content_width: int) -> int:
        return content_width + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        if self.widget() is not None:
            hint.setWidth(self._width(self.widget().minimumSizeHint().width()))
        return hint

    def sizeHint(self):
        hint = super().sizeHint()
        if self.widget() is not None:
            hint.setWidth(self._width(self.widget().sizeHint().width()))
        return hint


class InferenceWidget(QWidget):
    """Dock widget: choose slide, model, resolution, region and maps; Run / Cancel; overlays.

    The widget owns an :class:`~napari_wsl_al.core.infer.session.InferenceSession` (the
    Qt-free logic) and only wires signals: the job runs in a napari thread worker, which also
    makes the layer of the map shown first and traces the foreground outline; the UI thread
    adds those layers, one per event-loop turn, and refreshes the shown maps (a refresh reads
    the visible window from the store's arrays: no dask graph, no new layer). The other maps
    get a layer when the user ticks them in the legend, in a turn of their own.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = InferenceSession()
        #: A callable returning a model, used instead of the model field when set (scripts, tests).
        self.model_factory = None
        self.worker = None
        #: The worker tracing the outline at a new threshold, and whether another is due.
        self.outline_worker = None
        self._outline_due = False
        self._slide = None
        self._store_key: str | None = None
        #: Layers (or specs, or an outline) still to add, one per event-loop turn.
        self._pending: list = []
        self._add_planned = False
        #: Map keys whose layers are being made in a worker thread, and those workers.
        self._making: set = set()
        self._layer_workers: list = []
        #: Set once the first map layer of a run is added and painted (the run waits for it).
        self._first_layer_shown = threading.Event()
        #: Keys of the maps shown or to show, for the worker thread (a frozen copy).
        self._shown_keys: frozenset = frozenset()
        self._legend_key: tuple = ()
        #: The current run's specs by :func:`spec_key` (a map's layer is made from its spec).
        self._specs: dict = {}
        #: Keys of the maps to show (a layer is made for those without one); None until the
        #: run's maps appear, when it becomes the maps shown first.
        self._wanted: set | None = None
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
        self.resolution_combo.setToolTip(
            "Model's resolution: the slide is read at the µm/px the model was trained at (it "
            "needs the slide's µm/px). Microns per pixel: a resolution of your choice. Slide "
            "level: a level of the file as it is.")
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
            box.setChecked(name in DEFAULT_MAPS)
            box.setToolTip(MAP_HELP[name])
            self.map_checks[name] = box
            maps_row.addWidget(box, index // 3, index % 3)
        self.maps_help = QLabel(
            "The maps to compute. One is shown at first, the class of interest's P(class), with "
            "the foreground's outline; tick the others in the legend below the progress bar "
            "to show them. Hover a box for what it means.")
        self.maps_help.setWordWrap(True)
        self.maps_help.setStyleSheet("color: gray;")
        maps_box = QVBoxLayout()
        maps_box.addLayout(maps_row)
        maps_box.addWidget(self.maps_help)

        self.tissue_spin = QDoubleSpinBox()
        self.tissue_spin.setRange(0.0, 1.0)
        self.tissue_spin.setDecimals(2)
        self.tissue_spin.setSingleStep(0.01)
        self.tissue_spin.setValue(InferenceConfig.tissue_threshold)
        self.tissue_spin.setToolTip(
            "Least fraction of tissue in a tile for it to be processed (0: every tile, no "
            "tissue detection). Lower it when no tile holds enough tissue (faint stains, "
            "small regions).")
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
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #e8a33d;")
        self.warning.setVisible(False)
        self.legend = MapLegend()
        self.legend.toggled.connect(self._legend_toggled)

        self.threshold_slider = QSlider(Qt.Horizontal)
        self.threshold_slider.setRange(1, 99)
        self.threshold_slider.setValue(50)
        self.threshold_slider.setToolTip("The yellow outline surrounds foreground above this value")
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
        form.addRow("Tissue threshold", self.tissue_spin)
        form.addRow("Maps", maps_box)
        form.addRow("MC-dropout passes", self.mc_spin)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Outline threshold", threshold_row)
        # Everything scrolls: with the legend, a warning and the patch table the dock is taller
        # than napari's window, and Qt would otherwise squash the form's rows into each other.
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.warning)
        layout.addWidget(self.legend)
        self.patch_table = PatchTable(self.viewer)
        layout.addWidget(self.patch_table)
        layout.addStretch(1)
        scroll = self._scroll = ScrollArea()
        scroll.setWidget(content)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.resolution_combo.currentIndexChanged.connect(self._resolution_changed)
        self.slide_combo.currentIndexChanged.connect(self._update_resolution_warning)
        self._resolution_changed()
        self.viewer.layers.events.inserted.connect(self._refresh_slides)
        self.viewer.layers.events.removed.connect(self._refresh_slides)
        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        self.viewer.layers.events.removed.connect(self._layer_removed)
        self._refresh_slides()

    def report(self, error: Exception) -> None:
        """Show a failed slot's error in the status line and as a notification."""
        self.status.setText(f"failed: {error}")
        show_error(str(error))

    # ------------------------------------------------------------------ choices
    @property
    def tissue_threshold(self) -> float:
        """Least tissue fraction of a processed tile (the Tissue threshold field)."""
        return float(self.tissue_spin.value())

    @tissue_threshold.setter
    def tissue_threshold(self, value: float) -> None:
        self.tissue_spin.setValue(float(value))

    def _refresh_slides(self, event=None) -> None:
        current = self.slide_combo.currentText()
        names = [layer.name for layer in slide_layers(self.viewer)]
        if names == [self.slide_combo.itemText(i) for i in range(self.slide_combo.count())]:
            return
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        self.slide_combo.addItems(names)
        if current in names:
            self.slide_combo.setCurrentText(current)
        self.slide_combo.blockSignals(False)
        self._update_resolution_warning()

    def _resolution_changed(self, index=None) -> None:
        choice = self.resolution_combo.currentText()
        self.mpp_spin.setVisible(choice == "Microns per pixel")
        self.level_spin.setVisible(choice == "Slide level")
        self._update_resolution_warning()

    def resolution_warning(self) -> str:
        """Why the chosen resolution cannot be applied to the chosen slide ("" when it can)."""
        layer = self.slide_layer()
        if layer is None or layer.metadata["reader"].mpp is not None:
            return ""
        choice = self.resolution_combo.currentText()
        name = layer.name
        if choice == "Model's resolution":
            return (f"{name} has no resolution (µm per pixel): the model's resolution cannot be "
                    "applied, so the model runs on the image's own pixels. Set its µm / pixel in "
                    "the Slide widget for maps at the model's scale.")
        if choice == "Microns per pixel":
            return (f"{name} has no resolution (µm per pixel): it cannot be read at a µm/px "
                    "until its µm / pixel is set in the Slide widget.")
        return ""

    def _update_resolution_warning(self, index=None) -> None:
        self._set_warning(self.resolution_warning())

    def _set_warning(self, text: str) -> None:
        self.warning.setText(text)
        self.warning.setVisible(bool(text))

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
        for layer in slide_layers(self.viewer):
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
    @reported
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
        self._match_project_resolution(layer)
        self._slide = layer
        self._update_resolution_warning()
        set_progress(self.progress_bar, 0, 0)
        self.status.setText("starting…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._wanted = None
        self._first_layer_shown.clear()
        existing = {map_key(item) for item in self.viewer.layers} - {None}
        worker = create_worker(
            self._job, layer.metadata["reader"], self.model_choice(), config, region,
            self.project_choice(), existing, self.threshold_slider.value() / 100,
            _start_thread=False, _ignore_errors=True,
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def _match_project_resolution(self, layer: Image) -> None:
        """Give the slide the resolution its project records for it (a folder of patches
        given its µm / pixel in an earlier session), so that its maps are read as before."""
        folder = self.project_choice()
        reader = layer.metadata["reader"]
        if folder is None or reader.path is None or not (folder / PROJECT_FILE).is_file():
            return
        project = Project.open(folder)
        name = project.slide_for_path(reader.path)
        if name is not None and match_recorded_resolution(layer, project.slide_mpp(name),
                                                          layer.name):
            self.viewer.reset_view()

    def _job(self, reader, choice, config, region, project, existing, threshold):
        """The worker's generator: the session's job, plus the layer of the map shown first
        made once the map store exists, fresh specs every :data:`REFRESH_INTERVAL_S` and at the
        end, and the outline traced at the end (all off the UI thread)."""
        job = self.session.run_with_model(reader, choice, config, region, project)
        prepared, last = False, 0.0
        while True:
            try:
                record = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            yield record
            if record.total and time.monotonic() - last >= REFRESH_INTERVAL_S:
                specs = self.session.layer_specs()
                if specs:
                    layers = self._prepare_layers(specs, existing, first=not prepared)
                    yield layers
                    if layers.layers:  # napari makes them now: the run waits (LAYER_PAUSE_S)
                        self._first_layer_shown.wait(LAYER_PAUSE_S)
                    prepared, last = True, time.monotonic()
        specs = self.session.layer_specs()
        if specs:
            last = self._prepare_layers(specs, existing, first=not prepared)
            yield PreparedLayers(last.specs, last.layers, final=True)
        return result, self._trace_outline(threshold, make_layer=True)

    def _trace_outline(self, threshold: float, make_layer: bool) -> PreparedOutline | None:
        """The outline of the current maps at ``threshold`` (a worker thread's call), with its
        layer when ``make_layer``."""
        outline = self.session.outline_data(threshold)
        if outline is None:
            return None
        layer = None
        if make_layer:  # the store key of the run's layers (MapLayerSpec's wslal_store)
            layer = make_outline_layer(outline, str(self.session.store.path),
                                       self.outline_layer_name())
        return PreparedOutline(outline, layer)

    def _prepare_layers(self, specs: list[MapLayerSpec], existing: set,
                        first: bool) -> PreparedLayers:
        """Fresh specs of the map layers, the small levels of the shown ones read into memory
        (:data:`MEMORY_LEVEL_PIXELS`); the ``first`` time, the layers of the maps shown first
        that had none when the run started, too. A worker thread's call."""
        shown = self._shown_keys
        specs = [in_memory(spec) if spec.kwargs.get("visible") and first
                 or spec_key(spec) in shown else spec for spec in specs]
        if not first:
            return PreparedLayers(specs, {})
        layers = {spec_key(spec): make_map_layer(spec) for spec in specs
                  if spec.kwargs.get("visible") and spec_key(spec) not in existing}
        return PreparedLayers(specs, layers)

    def cancel(self) -> None:
        """Stop the run after the current batch (the maps computed so far are kept)."""
        self.session.cancel()
        self._first_layer_shown.set()
        self.status.setText("cancelling…")
        self.cancel_button.setEnabled(False)

    @reported
    def _on_yielded(self, item) -> None:
        if isinstance(item, PreparedLayers):
            self._receive_layers(item)
        elif isinstance(item, Progress):
            self._on_progress(item)

    def _on_progress(self, progress: Progress) -> None:
        set_progress(self.progress_bar, progress.step, progress.total or 0)
        warning = progress.metrics.get("warning")
        if warning:
            self._set_warning(warning)
            show_warning(warning)
            return
        rate = progress.metrics.get("tiles_per_s", 0.0)
        unit = self.session.unit
        self.status.setText(progress.message + (f" · {rate:.1f} {unit}/s" if rate else ""))

    @reported
    def _on_returned(self, returned) -> None:
        result, outline = returned
        if outline is not None:
            self._show_outline(outline)
        self.patch_table.update_from(result, self.session.store, getattr(self, "_slide", None))
        if result is None:
            self.status.setText("cancelled; run again to resume")
            return
        set_progress(self.progress_bar, result.tiles_total, max(1, result.tiles_total))
        self.status.setText(result_summary(result, self.session.unit))
        show_info(f"Maps written to {result.path}")

    def _on_error(self, error: Exception) -> None:
        self.status.setText(f"failed: {error}")
        show_error(str(error))

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress_bar.maximum() == 0:
            set_progress(self.progress_bar, 0, 1)

    # ------------------------------------------------------------------ layers
    def map_layers(self, store: str | None = None) -> list[Image]:
        """The map layers of a store (default: the current run's), in layer order."""
        store = self._store_key if store is None else store
        return [layer for layer in self.viewer.layers
                if (key := map_key(layer)) is not None and key[0] == store]

    def _map_layer(self, key: tuple) -> Image | None:
        for layer in self.viewer.layers:
            if map_key(layer) == key:
                return layer
        return None

    def _receive_layers(self, prepared: PreparedLayers) -> None:
        """Refresh the existing layers of the run's maps, and plan adding the layers of the
        maps to show (:attr:`_wanted`) that have none, one per event-loop turn."""
        if prepared.specs:
            self._store_key = spec_key(prepared.specs[0])[0]
            self._specs = {spec_key(spec): spec for spec in prepared.specs}
            if self._wanted is None:
                self._wanted = {key for key, spec in self._specs.items()
                                if spec.kwargs.get("visible")}
        self._show_legend(prepared.specs)
        planned = {_planned_key(item) for item in self._pending}
        for spec in prepared.specs:
            key = spec_key(spec)
            layer = self._map_layer(key)
            if layer is not None:
                self._watch(layer)
                self._update_layer(layer, spec, prepared.final)
            elif key in (self._wanted or ()) and key not in planned:
                self._pending.append(prepared.layers.get(key, spec))
        self._sync_legend()
        self._schedule_next()

    def _show_legend(self, specs: list[MapLayerSpec]) -> None:
        key = tuple((spec_key(spec), spec.title, spec.description) for spec in specs)
        if key == self._legend_key:
            return
        self._legend_key = key
        self.legend.clear()
        for row in legend_rows(specs):
            self.legend.add_row(row["title"], ramp_pixmap(row["colormap"]), row["description"],
                                row["low"], row["high"], toggles=row["toggles"])
        if specs and "fg" in {spec.kwargs["metadata"]["wslal_map"] for spec in specs}:
            self.legend.add_row("outline", line_pixmap(OUTLINE_COLOR),
                                "contours of the foreground above the outline threshold",
                                toggles=[(OUTLINE_KEY, "outline")])

    @staticmethod
    def _update_layer(layer: Image, spec: MapLayerSpec, final: bool = False) -> None:
        """Show what was written since, in the same layer, reading only what is on screen.

        The levels are views of the store's zarr arrays (no dask graph on the UI thread).
        Zoomed in on a layer that already reads them, a refresh reads the visible window
        again; otherwise, and for the last specs of a run, the layer's data is set again:
        napari keeps the coarsest level it read (whole, it is the smallest) until then.
        """
        zoomed_in = layer.multiscale and layer.data_level < len(layer.data) - 1
        if zoomed_in and not final and same_levels(layer.data, spec.data):
            if layer.visible:
                layer.refresh()
        else:
            layer.data = spec.data
        if not np.allclose(layer.scale[-2:], spec.kwargs["scale"]):
            layer.scale = spec.kwargs["scale"]
        if not np.allclose(layer.translate[-2:], spec.kwargs["translate"]):
            layer.translate = spec.kwargs["translate"]

    # ------------------------------------------------------------------ shown maps
    def run_map_key(self, name: str, channel: str | None = None) -> tuple:
        """The :func:`map_key` of the current run's map ``name`` (and ``channel``)."""
        return (self._store_key, name, channel)

    def show_map(self, key, shown: bool = True) -> None:
        """Show or hide the layer of a map of the current run (``key``: :func:`map_key`, see
        :meth:`run_map_key`).

        The layer is made the first time the map is shown, in an event-loop turn of its own;
        afterwards showing and hiding only change its visibility.
        """
        layer = self._map_layer(key)
        if layer is not None:
            layer.visible = bool(shown)
        elif shown:
            spec = self._specs.get(key)
            if spec is None:
                raise ValueError(f"{key[1]} is not a map of the current run: run it first")
            if self._wanted is None:
                self._wanted = set()
            self._wanted.add(key)
            if key not in {_planned_key(item) for item in self._pending} | self._making:
                self._make_layer(key, spec)
        else:
            if self._wanted is not None:
                self._wanted.discard(key)
            self._pending = [item for item in self._pending if _planned_key(item) != key]
        self._sync_legend()

    def _make_layer(self, key: tuple, spec: MapLayerSpec) -> None:
        """Make the layer of a map in a worker thread (building it reads the map's first
        slice and thumbnail); it is added in an event-loop turn of its own when ready."""
        self._making.add(key)
        worker = create_worker(lambda: make_map_layer(in_memory(spec)), _start_thread=False,
                               _ignore_errors=True)
        worker.returned.connect(lambda layer: self._layer_made(key, layer))
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self._layer_worker_done(key, worker))
        self._layer_workers.append(worker)
        worker.start()

    @reported
    def _layer_made(self, key: tuple, layer: Image) -> None:
        self._making.discard(key)
        planned = {_planned_key(item) for item in self._pending}
        if key in (self._wanted or ()) and self._map_layer(key) is None and key not in planned:
            self._pending.append(layer)
            self._schedule_next()
        self._sync_legend()

    def _layer_worker_done(self, key: tuple, worker) -> None:
        if worker in self._layer_workers:
            self._layer_workers.remove(worker)
        if key in self._making:  # failed: nothing to add
            self._making.discard(key)
            self._sync_legend()

    @property
    def adding_layers(self) -> bool:
        """Whether map or outline layers are still being made or waiting to be added."""
        return bool(self._pending or self._making)

    @reported
    def _legend_toggled(self, key, checked: bool) -> None:
        if key != OUTLINE_KEY:
            self.show_map(key, checked)
            return
        layer = self.outline_layer()
        if layer is not None:
            layer.visible = bool(checked)
        elif checked:
            self.update_outline()
        self._sync_legend()

    def _sync_legend(self, event=None) -> None:
        """Tick the legend's box of each layer shown or about to be added, untick the others."""
        self._shown_keys = frozenset(self._wanted or ())
        planned = {_planned_key(item) for item in self._pending}
        for key in self.legend.boxes:
            layer = self.outline_layer() if key == OUTLINE_KEY else self._map_layer(key)
            if layer is not None:
                shown = bool(layer.visible)
            else:
                making = key in self._making and key in (self._wanted or ())
                shown = (key in planned or making
                         or (key == OUTLINE_KEY and self.outline_worker is not None))
            self.legend.set_checked(key, shown)

    def _watch(self, layer) -> None:
        """Follow a map or outline layer's visibility in the legend (connected once)."""
        if map_key(layer) is not None or layer.metadata.get("wslal_outline"):
            layer.events.visible.connect(self._sync_legend)

    def _layer_inserted(self, event) -> None:
        self._watch(event.value)
        if self.legend.boxes:
            self._sync_legend()

    def _layer_removed(self, event) -> None:
        layer = event.value
        key = map_key(layer)
        if key is None and not layer.metadata.get("wslal_outline"):
            return
        layer.events.visible.disconnect(self._sync_legend)
        if key is not None and self._wanted is not None:
            self._wanted.discard(key)
        self._sync_legend()

    # ------------------------------------------------------------------ adding layers
    def _schedule_next(self) -> None:
        if self._pending and not self._add_planned:
            self._add_planned = True
            QTimer.singleShot(MAP_LAYER_DELAY_MS, self._add_next)

    @reported
    def _add_next(self) -> None:
        """Add one planned layer (napari makes its controls and visual), then plan the next."""
        self._add_planned = False
        if not self._pending:
            return
        item = self._pending.pop(0)
        try:
            self._add(item)
        finally:  # the next one is planned even when this one failed
            if isinstance(item, Image):  # made by a worker: a run may wait for it
                QTimer.singleShot(FIRST_PAINT_MS, self._first_layer_shown.set)
            if not self._pending:
                self._outline_on_top()
            self._schedule_next()

    def _add(self, item) -> None:
        with keep_selection(self.viewer.layers):
            if isinstance(item, PreparedOutline):
                self._add_outline_layer(item)
            elif isinstance(item, MapLayerSpec):
                if self._map_layer(spec_key(item)) is None:
                    self.viewer.add_image(item.data, name=item.name,
                                          **{**layer_kwargs(item), "visible": True})
            elif item not in self.viewer.layers and self._map_layer(map_key(item)) is None:
                self.viewer.add_layer(item)

    def refresh_layers(self) -> None:
        """Add the layers of the current maps to show now, or refresh the existing ones
        (scripts)."""
        self._receive_layers(PreparedLayers(self.session.layer_specs(), {}, final=True))
        while self._pending:
            self._add_next()

    # ------------------------------------------------------------------ outline
    def _threshold_changed(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        self._outline_timer.start()

    def outline_layer_name(self) -> str:
        """Name of the foreground outline layer of the current slide."""
        return outline_layer_name(self.session.slide_name)

    def outline_layer(self) -> Image | None:
        """The foreground outline layer of the current run's maps."""
        for layer in self.viewer.layers:
            meta = layer.metadata
            if meta.get("wslal_outline") and meta.get("wslal_store") == self._store_key:
                return layer
        return None

    @reported
    def update_outline(self) -> None:
        """Trace the contours of foreground > threshold again, in a worker thread (the layer
        gets the new outline when it is ready)."""
        if self._store_key is None or not self.session.handles():
            return
        if self.outline_worker is not None:
            self._outline_due = True
            return
        worker = create_worker(self._trace_outline, self.threshold_slider.value() / 100,
                               self.outline_layer() is None,
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._outline_traced)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._outline_finished)
        self.outline_worker = worker
        worker.start()

    @reported
    def _outline_traced(self, outline) -> None:
        if outline is not None:
            self._show_outline(outline)

    def _outline_finished(self) -> None:
        self.outline_worker = None
        if self._outline_due:
            self._outline_due = False
            self.update_outline()

    def _show_outline(self, prepared: PreparedOutline) -> None:
        layer = self.outline_layer()
        if layer is None:
            self._pending = [item for item in self._pending
                             if not isinstance(item, PreparedOutline)]
            self._pending.append(prepared)
            self._schedule_next()
            self._sync_legend()
            return
        outline = prepared.outline
        layer.data = outline.levels
        if not np.allclose(layer.scale[-2:], outline.scale):
            layer.scale = outline.scale
        if not np.allclose(layer.translate[-2:], outline.translate):
            layer.translate = outline.translate
        layer.metadata["threshold"] = outline.threshold

    def _add_outline_layer(self, prepared: PreparedOutline) -> None:
        if self.outline_layer() is not None:
            self._show_outline(prepared)
            return
        layer = prepared.layer
        if layer is None or layer.metadata.get("wslal_store") != self._store_key:
            layer = make_outline_layer(prepared.outline, self._store_key,
                                       self.outline_layer_name())
        self.viewer.add_layer(layer)

    def _outline_on_top(self) -> None:
        layer = self.outline_layer()
        if layer is None:
            return
        index = self.viewer.layers.index(layer)
        maps = [self.viewer.layers.index(item) for item in self.map_layers()]
        if maps and index < max(maps):
            self.viewer.layers.move(index, len(self.viewer.layers))

    def showEvent(self, event) -> None:
        # napari styles the dock when it is shown, which widens the form: ask for the width.
        super().showEvent(event)
        self._scroll.updateGeometry()

    def closeEvent(self, event) -> None:
        self._first_layer_shown.set()
        self.session.close()
        super().closeEvent(event)


def _planned_key(item):
    """The legend key of a planned layer: :data:`OUTLINE_KEY` for the outline."""
    if isinstance(item, PreparedOutline):
        return OUTLINE_KEY
    if isinstance(item, MapLayerSpec):
        return spec_key(item)
    return map_key(item)
