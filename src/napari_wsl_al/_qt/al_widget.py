"""Active learning dock widget: suggested superpixels, key-press labels, and the next round in the background.

The widget is a view over a :class:`~napari_wsl_al.core.al.session.LabellingSession` (the
Qt-free state of labelling one slide) and runs the core generators
(:func:`~napari_wsl_al.core.al.session.suggest_and_open`,
:func:`~napari_wsl_al.core.al.rounds.run_round`) in napari thread workers. While the dock is
open it binds the class keys, Enter, S, U and Ctrl+Z on the viewer and on every layer (layer
key bindings come first in napari), and a click on the slide selects the superpixel under it;
all of them are removed when the dock is hidden, closed or removed.
"""

from __future__ import annotations

import functools
import html
import importlib
import threading
from dataclasses import replace
from pathlib import Path

from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._reader import layer_data
from ..core.al import rounds
from ..core.al.acquisition import STRATEGIES
from ..core.al.session import LabellingSession, round_and_open, suggest_and_open
from ..core.errors import WslAlError
from ..core.infer.session import map_layer_specs
from ..core.infer.store import MapStore
from ..core.io.base import SlideReader, given_mpp
from ..core.project import PROJECT_FILE, Project
from .infer_widget import default_project_path, keep_selection
from .slide_widget import match_recorded_resolution, slide_layers
from .slots import reported, set_progress

#: Names of the layers the widget draws.
SUGGESTIONS_LAYER = "suggestions"
LABELS_LAYER = "labels"

#: Outline colours: suggestions waiting for an answer, and the region being labelled.
PENDING_COLOUR = "#ffd700"
CURRENT_COLOUR = "#00e5ff"

#: Outline widths in working pixels of the superpixel grid (thin: the tissue shows through).
PENDING_WIDTH_PX = 1.0
CURRENT_WIDTH_PX = 2.0

#: Opacity of the labelled regions' fill.
LABELS_OPACITY = 0.4
#: Maps of each round that the dock shows (the others are in the round's map store).
ROUND_MAP_LAYERS = ("fg", "uncertainty/ovr_entropy_max")
#: Pause before each round map layer is added: napari takes 0.1-0.3 s to make an image layer,
#: and the pause lets the UI handle what waits (paint, input) between two of them.
MAP_LAYER_DELAY_MS = 60
#: The dock's Shapes layers, in drawing order, with what they are made with.
SHAPES_LAYERS = {
    LABELS_LAYER: {"opacity": LABELS_OPACITY},
    SUGGESTIONS_LAYER: {"face_color": "transparent"},
}

#: Mouse travel (screen pixels) under which a press and release is a click, not a pan.
CLICK_TOLERANCE_PX = 4.0

#: Modes in the mode box: label shown, session mode.
MODES = (
    ("Dominant class: a key sets it", "dominant"),
    ("Several classes: keys toggle them", "multi"),
)

#: The mode the box starts in: several classes (in the cross-validated simulation, answers
#: naming every class of a superpixel end higher and steadier than the dominant class alone,
#: and a superpixel of one class still takes one key and Enter).
DEFAULT_MODE = "multi"

#: Command keys bound while the dock is open, and what they do.
COMMAND_KEYS = (("Enter", "confirm"), ("s", "skip"), ("u", "undo"), ("Control-z", "undo"))


#: Modules imported on first use that hold the interpreter for a long time: napari imports
#: pandas when the first Shapes layer is made (about half a second on the UI thread), and
#: torch's first optimizer imports torch._dynamo and sympy (a 250 ms stall in the middle of
#: the first round). The dock imports them in the background as it opens.
SLOW_IMPORTS = ("pandas", "torch._dynamo")


def _import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    """Import ``modules`` in a daemon thread, one after the other."""

    def load() -> None:
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:  # reported where the module is needed
                pass

    thread = threading.Thread(target=load, name="wsl-al imports", daemon=True)
    thread.start()
    return thread


def _same_file(first, second) -> bool:
    return (
        first is not None and second is not None and Path(first).resolve() == Path(second).resolve()
    )


def viewer_camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return viewer.camera if scene is None else scene.camera


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class ViewerHooks:
    """The key bindings and the mouse callback the dock puts on a viewer, and their removal.

    A plain object (not a Qt one), so that it can still clean up when the widget's C++ side is
    destroyed.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    """

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.keys: dict[str, object] = {}
        self.mouse_callback = None
        #: Whether the bindings should be on (the dock is open).
        self.wanted = True
        #: ``(emitter, callback)`` pairs of viewer events the widget listens to.
        self.connections: list[tuple[object, object]] = []
        self._bound: list[tuple[object, str, object]] = []

    @property
    def attached(self) -> bool:
        """Whether the bindings are on the viewer."""
        return bool(self._bound) or self.mouse_callback in self.viewer.mouse_drag_callbacks

    def connect(self, emitter, callback) -> None:
        """Listen to a viewer event until :meth:`release`."""
        emitter.connect(callback)
        self.connections.append((emitter, callback))

    def attach(self) -> None:
        """Bind the keys on the viewer and its layers, and add the mouse callback."""
        self.detach()
        self.wanted = True
        for provider in (self.viewer, *self.viewer.layers):
            self.bind(provider)
        if self.mouse_callback is not None:
            self.viewer.mouse_drag_callbacks.append(self.mouse_callback)

    def bind(self, provider) -> None:
        """Bind the keys on one keymap provider (the viewer or a layer)."""
        for key, action in self.keys.items():
            previous = provider.bind_key(key, lambda _provider, act=action: act(), overwrite=True)
            self._bound.append((provider, key, previous))

    def detach(self) -> None:
        """Remove every binding (restoring what they replaced) and the mouse callback."""
        for provider, key, previous in reversed(self._bound):
            provider.bind_key(key, previous, overwrite=True)
        self._bound.clear()
        while self.mouse_callback in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self.mouse_callback)

    def release(self) -> None:
        """Detach, and stop listening to the viewer's events (the widget is gone)."""
        self.wanted = False
        self.detach()
        for emitter, callback in self.connections:
            emitter.disconnect(callback)
        self.connections.clear()


class ActiveLearningWidget(QWidget):
    """Dock widget: project and slide, Suggest, the list of suggestions, key-press labels and
    Train next round.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer to draw in and bind keys on.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        _import_in_background(SLOW_IMPORTS)
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.session: LabellingSession | None = None
        self.worker = None
        self.camera_view_px: tuple[float, float] | None = None
        #: ``(role, round, slide, MapLayerSpec)`` of the round map layers still to add.
        self._pending_maps: list = []
        self._entries: list[dict] = []
        self._slide_name: str | None = None
        #: Label row ids drawn in the labels layer, in layer order.
        self._drawn_labels: list[int] = []
        #: ``(region, is current)`` of the outlines in the suggestions layer, in layer order.
        self._drawn_outlines: list[tuple[int, bool]] = []
        self._loaded_path: Path | None = None

        self.project_edit = QLineEdit(str(default_project_path()))
        self.project_edit.setToolTip(
            "Project folder (the Inference widget's too): labels, suggestions and rounds are "
            "saved there as you go. Created by the first Suggest when it does not exist."
        )
        self.project_edit.returnPressed.connect(lambda: self.load_project(notify=True))
        # a path typed and left (Tab, or a click on Suggest) is opened too, so that Suggest
        # never writes into the project shown before
        self.project_edit.editingFinished.connect(self._project_field_left)
        open_button = QPushButton("Open")
        open_button.clicked.connect(lambda: self.load_project(notify=True))
        project_row = QHBoxLayout()
        project_row.addWidget(self.project_edit)
        project_row.addWidget(open_button)

        self.slide_combo = QComboBox()
        self.slide_combo.setToolTip("The project's slides, and the slides open in napari")
        self.slide_combo.currentIndexChanged.connect(lambda _index: self._slide_chosen())
        self.strategy_combo = QComboBox()
        self.strategy_combo.addItems(STRATEGIES)
        self.strategy_combo.setToolTip("How the regions worth labelling are scored")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 500)
        self.batch_spin.setToolTip("Regions suggested per slide")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100000)
        self.steps_spin.setSingleStep(100)
        self.steps_spin.setToolTip(
            "Training steps of the next round (the project's setting, 300 by default). "
            "More steps on a few labels over-fit them: raise it when the labels are many"
        )
        self.reinit_check = QCheckBox("From the start")
        self.reinit_check.setToolTip(
            "Train the next round from the weakly-supervised model instead of the last "
            "round's (to start over, e.g. after many labels were changed)"
        )
        training_row = QHBoxLayout()
        training_row.addWidget(self.steps_spin)
        training_row.addWidget(self.reinit_check)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems([label for label, _ in MODES])
        self.mode_combo.setCurrentIndex([mode for _, mode in MODES].index(DEFAULT_MODE))
        self.mode_combo.setToolTip(
            "Several classes: each key toggles a class and Enter stores them all (for a "
            "superpixel across a gland's edge). Dominant class: a key sets the one class.")
        self.mode_combo.currentIndexChanged.connect(lambda _index: self._mode_chosen())

        self.suggest_button = QPushButton("Suggest")
        self.suggest_button.setToolTip("Score the slide's superpixels and list the most useful")
        self.suggest_button.clicked.connect(lambda: self.suggest())
        self.train_button = QPushButton("Train next round")
        self.train_button.setToolTip("Train on every label given so far, then suggest again")
        self.train_button.clicked.connect(lambda: self.train())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.cancel())
        run_row = QHBoxLayout()
        for button in (self.suggest_button, self.train_button, self.cancel_button):
            run_row.addWidget(button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.previous_button = QPushButton("◀ Previous")
        self.previous_button.clicked.connect(lambda: self.go("previous"))
        self.next_button = QPushButton("Next ▶")
        self.next_button.clicked.connect(lambda: self.go("next"))
        walk_row = QHBoxLayout()
        walk_row.addWidget(self.previous_button)
        walk_row.addWidget(self.next_button)
        self.current_label = QLabel("")
        self.current_label.setWordWrap(True)
        self.suggestion_list = QListWidget()
        self.suggestion_list.setMinimumHeight(60)
        self.suggestion_list.setToolTip("Click a suggestion to go to it")
        self.suggestion_list.itemClicked.connect(
            lambda item: self.go_to(self.suggestion_list.row(item))
        )
        self.counters_label = QLabel("")
        self.help_label = QLabel("")

        form = QFormLayout()
        form.addRow("Project", project_row)
        form.addRow("Slide", self.slide_combo)
        form.addRow("Strategy", self.strategy_combo)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Training steps", training_row)
        form.addRow("Mode", self.mode_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(run_row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.current_label)
        layout.addLayout(walk_row)
        layout.addWidget(self.counters_label)
        layout.addWidget(self.help_label)
        # Last: when the dock is short, the list of suggestions gives way (it scrolls).
        layout.addWidget(self.suggestion_list, 1)
        for label in (self.status, self.current_label, self.counters_label, self.help_label):
            label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)

        hooks = self.hooks = ViewerHooks(napari_viewer)
        hooks.mouse_callback = self._on_mouse
        self.destroyed.connect(lambda *_: hooks.release())
        hooks.connect(self.viewer.layers.events.inserted, self._layer_inserted)
        hooks.connect(self.viewer.layers.events.removed, self._layers_changed)
        self.load_project(notify=False)
        QTimer.singleShot(0, self._prepare_layers)

    # ------------------------------------------------------------------ errors
    def report(self, error: Exception) -> None:
        """Show an error in the status line and as a notification."""
        text = str(error) if isinstance(error, WslAlError) else f"{type(error).__name__}: {error}"
        self.status.setText(text)
        show_error(text)

    # ------------------------------------------------------------------ project and slide
    @reported
    def _project_field_left(self) -> None:
        """Open the project named in the field when it is not the one open."""
        path = Path(self.project_edit.text().strip()).expanduser()
        if self._loaded_path is None or path.resolve() != self._loaded_path.resolve():
            self.load_project(notify=True)

    @reported
    def load_project(self, notify: bool = True) -> None:
        """Open the project named in the project field (nothing yet when it does not exist)."""
        path = Path(self.project_edit.text().strip()).expanduser()
        self._loaded_path = path
        self.project = None
        if self.session is not None:
            self.session.close()
            self.session = None
        if (path / PROJECT_FILE).is_file():
            self.project = Project.open(path)
            settings = rounds.ALSettings.of_project(self.project)
            self._show_settings(settings)
            self.status.setText(
                f"Project {self.project.path.name}: {len(self.project.slide_names())} slides"
            )
        else:
            self._show_settings(rounds.ALSettings())
            self.status.setText(
                "No project here yet: Suggest creates it with the default model's classes."
            )
            if notify:
                show_info(f"{path}: no project yet; Suggest creates it")
        self._slide_name = None
        self._refresh_slides()

    def _show_settings(self, settings: rounds.ALSettings) -> None:
        self.strategy_combo.setCurrentText(settings.strategy)
        self.batch_spin.setValue(settings.n_suggestions)
        self.steps_spin.setValue(settings.train.steps)
        self.reinit_check.setChecked(settings.init == "wsl")

    def _entry_for_layer(self, layer: Image) -> dict:
        reader: SlideReader = layer.metadata["reader"]
        for entry in self.project.slides if self.project else []:
            if _same_file(entry.get("path"), reader.path):
                return {"name": entry["name"], "path": entry["path"], "in_project": True}
        return {"name": layer.name, "path": reader.path, "in_project": False}

    def _refresh_slides(self) -> None:
        """List the project's slides and the open slides that are not in it yet."""
        entries = [
            {"name": entry["name"], "path": entry.get("path"), "in_project": True}
            for entry in (self.project.slides if self.project else [])
        ]
        names = {entry["name"] for entry in entries}
        for layer in slide_layers(self.viewer):
            entry = self._entry_for_layer(layer)
            if entry["name"] not in names:
                entries.append(entry)
                names.add(entry["name"])
        wanted = self._slide_name
        if wanted not in names:
            active = self.viewer.layers.selection.active
            wanted = (
                self._entry_for_layer(active)["name"]
                if active in slide_layers(self.viewer)
                else (entries[0]["name"] if entries else None)
            )
        self._entries = entries
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        for entry in entries:
            suffix = "" if entry["in_project"] else "  (new: Suggest adds it)"
            self.slide_combo.addItem(entry["name"] + suffix)
        names = [entry["name"] for entry in entries]
        if wanted in names:
            self.slide_combo.setCurrentIndex(names.index(wanted))
        self.slide_combo.blockSignals(False)
        self._slide_chosen()

    def slide_entry(self) -> dict | None:
        """The chosen slide: ``name``, ``path``, ``in_project``."""
        index = self.slide_combo.currentIndex()
        return self._entries[index] if 0 <= index < len(self._entries) else None

    def slide_layer(self) -> Image | None:
        """The chosen slide's image layer, when it is open."""
        entry = self.slide_entry()
        if entry is None:
            return None
        for layer in slide_layers(self.viewer):
            if _same_file(layer.metadata["reader"].path, entry["path"]) or (
                entry["path"] is None and layer.name == entry["name"]
            ):
                return layer
        return None

    @reported
    def _slide_chosen(self) -> None:
        entry = self.slide_entry()
        name = None if entry is None else entry["name"]
        in_project = entry is not None and entry["in_project"]
        if name == self._slide_name and (self.session is not None or not in_project):
            return
        self._slide_name = name
        self._open_session()

    def _open_session(self) -> None:
        """A session on the chosen slide (opening its image when it is not shown yet)."""
        entry = self.slide_entry()
        if entry is not None and entry["in_project"] and self.project is not None:
            session = LabellingSession(self.project, entry["name"], mode=self.mode())
            self._install_session(session)
            self._queue_round_maps(session.slide, session.store.last_done_round())
            return
        if self.session is not None:
            self.session.close()
            self.session = None
        self._drawn_labels = []
        self._drawn_outlines = []
        self._bind_class_keys()
        self.show_state(centre=True)

    @reported
    def _layer_inserted(self, event) -> None:
        if self.hooks.attached:
            self.hooks.bind(event.value)
        if isinstance(event.value, Image) and isinstance(
            event.value.metadata.get("reader"), SlideReader
        ):
            for name in SHAPES_LAYERS:  # the empty layers follow the slide's units
                if name in self.viewer.layers and not len(self.viewer.layers[name].data):
                    self._shapes_layer(name)
            self._layers_changed()

    @reported
    def _layers_changed(self, event=None) -> None:
        self._refresh_slides()

    # ------------------------------------------------------------------ keys and mouse
    def mode(self) -> str:
        """``"dominant"`` or ``"multi"``, as chosen in the mode box."""
        return MODES[self.mode_combo.currentIndex()][1]

    @reported
    def _mode_chosen(self) -> None:
        if self.session is not None:
            self.session.set_mode(self.mode())
            self.show_state(centre=False)

    def _bind_class_keys(self) -> None:
        # Without a slide the digits are still taken: they say what to do instead of
        # switching the image layer's mode.
        class_keys = self.session.keys if self.session is not None else tuple("123456789")
        keys = {
            key: functools.partial(self.press_class, index)
            for index, key in enumerate(class_keys)
            if key
        }
        for key, action in COMMAND_KEYS:
            keys[key] = getattr(self, action)
        self.hooks.keys = keys
        self._update_help()
        if self.hooks.wanted:
            self.hooks.attach()

    def _update_help(self) -> None:
        rows = []
        if self.session is not None:
            for key, name, colour in zip(
                self.session.keys, self.session.classes, self.session.colours
            ):
                if key:
                    rows.append(
                        f"<b>{html.escape(key)}</b> <span style='color:{colour}'>■</span> "
                        f"{html.escape(name)}"
                    )
        classes = "<br>" + " · ".join(rows) if rows else "open a project slide"
        # Short lines without word wrap: a wrapped label is cut short in a dock.
        self.help_label.setText(
            f"<b>Keys</b> in the viewer: {classes}<br>"
            "<b>Enter</b> confirm and next · <b>S</b> skip · <b>U</b>, <b>Ctrl+Z</b> undo<br>"
            "A click on a superpixel picks it for labelling."
        )

    def showEvent(self, event) -> None:
        """Bind the keys when the dock is shown."""
        self.hooks.attach()
        super().showEvent(event)

    def hideEvent(self, event) -> None:
        """Unbind the keys when the dock is hidden (not when the window is minimised)."""
        if not event.spontaneous():
            self.hooks.wanted = False
            self.hooks.detach()
        super().hideEvent(event)

    def closeEvent(self, event) -> None:
        """Unbind the keys and close the label store."""
        self.hooks.wanted = False
        self.hooks.detach()
        if self.session is not None:
            self.session.close()
        super().closeEvent(event)

    def changeEvent(self, event) -> None:
        """Unbind the keys when the dock is taken out of the window."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.hooks.wanted = False
            self.hooks.detach()
        super().changeEvent(event)

    def _on_mouse(self, viewer, event):
        """A click (no drag) on the slide selects the superpixel under it."""
        if event.button != 1 or event.modifiers or self.session is None:
            return
        active = viewer.layers.selection.active
        if active is not None and str(getattr(active, "mode", "pan_zoom")) != "pan_zoom":
            return
        start = tuple(event.pos)
        yield
        while event.type == "mouse_move":
            yield
        travel = max(abs(a - b) for a, b in zip(event.pos, start))
        if travel <= CLICK_TOLERANCE_PX:
            self.select_at(event.position[-2], event.position[-1])

    # ------------------------------------------------------------------ labelling
    @reported
    def press_class(self, index: int) -> None:
        """A class key (1-9)."""
        if self.session is None:
            raise WslAlError("no slide to label", hint="choose a project slide and press Suggest")
        self.session.press_class(index)
        self.show_state(centre=False, labels=False)

    @reported
    def confirm(self) -> None:
        """Enter: store the label, go to the next pending suggestion."""
        if self.session is None:
            return
        self.session.confirm()
        self.show_state(centre=True)

    @reported
    def skip(self) -> None:
        """S: skip the current suggestion."""
        if self.session is None:
            return
        self.session.skip()
        self.show_state(centre=True)

    @reported
    def undo(self) -> None:
        """U, Ctrl+Z: undo the last label."""
        if self.session is None:
            return
        if self.session.undo() is None:
            self.status.setText("Nothing to undo.")
        self.show_state(centre=True)

    @reported
    def go(self, direction: str) -> None:
        """Previous / Next."""
        if self.session is None:
            return
        moved = self.session.next() if direction == "next" else self.session.previous()
        if moved is None:
            self.status.setText(
                "That was the last suggestion."
                if direction == "next"
                else "That was the first suggestion."
            )
        self.show_state(centre=True, labels=False)

    @reported
    def go_to(self, row: int) -> None:
        """A click in the list of suggestions."""
        if self.session is not None:
            self.session.go_to(row)
            self.show_state(centre=True, labels=False)

    @reported
    def select_at(self, y_um: float, x_um: float) -> None:
        """A click on the slide."""
        if self.session is not None and self.session.select_at(y_um, x_um):
            self.show_state(centre=False, labels=False)

    # ------------------------------------------------------------------ drawing
    def show_state(self, centre: bool, labels: bool = True) -> None:
        """Redraw the outlines (and the labelled regions), the list and the counters; centre
        the camera on the current region."""
        self._draw_suggestions()
        if labels:
            self._draw_labels()
        self._fill_list()
        self._update_texts()
        if centre:
            self.centre_camera()

    def _shapes_layer(self, name: str) -> Shapes:
        """The dock's Shapes layer ``name`` (made when missing), in the session's units."""
        if self.session is not None and self.session.superpixels is not None:
            units = ("um", "um") if self.session.superpixels.unit == "micrometer" else None
        else:  # before a session: those of an open slide, if any
            slides = slide_layers(self.viewer)
            units = tuple(slides[0].units)[-2:] if slides else None
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if units and tuple(layer.units) != tuple(units):
                layer.units = units
            return layer
        active = self.viewer.layers.selection.active
        layer = self.viewer.add_shapes(
            name=name, ndim=2, **({"units": units} if units else {}), **SHAPES_LAYERS[name]
        )
        layer.metadata["wslal_outline"] = True
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return layer

    @reported
    def _prepare_layers(self) -> None:
        """Make the two Shapes layers while nothing is running: adding a layer holds the UI
        thread for about 0.1 s, too long at the end of Suggest."""
        for name in SHAPES_LAYERS:
            if name not in self.viewer.layers:
                self._shapes_layer(name)

    def _raise_layers(self) -> None:
        """Put the labelled regions, then the outlines, above every other layer."""
        layers = self.viewer.layers
        for name in (LABELS_LAYER, SUGGESTIONS_LAYER):
            if name in layers and layers.index(layers[name]) != len(layers) - 1:
                layers.move(layers.index(layers[name]), len(layers))

    @staticmethod
    def _update_shapes(layer: Shapes, drawn: list, wanted: dict, add) -> list:
        """Remove the shapes of ``layer`` whose key is not wanted and add the wanted ones
        missing (``add(keys)``); returns the keys now drawn, in layer order."""
        if len(layer.data) != len(drawn):
            layer.data = []  # changed by hand: drawn again
            drawn = []
        gone = [index for index, key in enumerate(drawn) if key not in wanted]
        if gone:
            layer.selected_data = set(gone)
            layer.remove_selected()
            drawn = [key for key in drawn if key in wanted]
        present = set(drawn)
        new = [key for key in wanted if key not in present]
        if new:
            add(new)
        return drawn + new

    def _draw_suggestions(self) -> None:
        session = self.session
        if session is None or session.superpixels is None:
            if SUGGESTIONS_LAYER in self.viewer.layers:
                self.viewer.layers[SUGGESTIONS_LAYER].data = []
            self._drawn_outlines = []
            return
        step = session.superpixels.scale[0]
        wanted = {
            (region, False): polygon
            for region, polygon in session.pending_outlines()
            if region != session.current_region
        }
        if session.current_region is not None:
            wanted[(session.current_region, True)] = session.current_outline_um()
        layer = self._shapes_layer(SUGGESTIONS_LAYER)

        def add(keys):
            # Closed paths: outlines without a face to triangulate (fast to draw).
            layer.add_paths(
                [wanted[key] for key in keys],
                edge_width=[
                    (CURRENT_WIDTH_PX if current else PENDING_WIDTH_PX) * step
                    for _, current in keys
                ],
                edge_color=[CURRENT_COLOUR if current else PENDING_COLOUR for _, current in keys],
            )

        self._drawn_outlines = self._update_shapes(layer, self._drawn_outlines, wanted, add)

    def _draw_labels(self) -> None:
        session = self.session
        if session is None or session.superpixels is None:
            if LABELS_LAYER in self.viewer.layers:
                self.viewer.layers[LABELS_LAYER].data = []
            return
        wanted = {shape.label_id: shape for shape in session.labelled_polygons()}
        layer = self._shapes_layer(LABELS_LAYER)

        def add(keys):
            # Only new labels are filled: triangulating polygons is the slow part of a key press.
            colours = [wanted[key].colour for key in keys]
            layer.add_polygons(
                [wanted[key].polygon_um for key in keys],
                edge_width=0.0,
                edge_color=colours,
                face_color=colours,
            )

        self._drawn_labels = self._update_shapes(layer, self._drawn_labels, wanted, add)
        if SUGGESTIONS_LAYER in self.viewer.layers:
            # Outlines stay above the filled labels.
            below = self.viewer.layers.index(layer)
            above = self.viewer.layers.index(self.viewer.layers[SUGGESTIONS_LAYER])
            if above < below:
                self.viewer.layers.move(below, above)

    def _fill_list(self) -> None:
        self.suggestion_list.blockSignals(True)
        self.suggestion_list.clear()
        session = self.session
        for suggestion in [] if session is None else session.suggestions:
            mark = {"pending": "•", "labelled": "✓", "skipped": "–"}[suggestion.status]
            score = ("random pick" if suggestion.strategy == "random"
                     else f"score {suggestion.score:.3f}")
            self.suggestion_list.addItem(
                f"{mark} {suggestion.rank:>3}. region {suggestion.region_id}   "
                f"{score}   {suggestion.status}"
            )
        if session is not None and session.position is not None:
            self.suggestion_list.setCurrentRow(session.position)
        self.suggestion_list.blockSignals(False)

    def _update_texts(self) -> None:
        session = self.session
        if session is None:
            self.current_label.setText("")
            self.counters_label.setText("")
            return
        counters = session.counters()
        self.counters_label.setText(
            f"<b>{counters.labels}</b> labels · <b>{counters.clicks}</b> clicks · "
            f"<b>{format_seconds(counters.seconds)}</b> spent · {counters.pending} to go"
        )
        if session.current_region is None:
            text = (
                "Every suggestion is answered: train the next round, or Suggest again."
                if session.suggestions
                else "No suggestions yet: press Suggest."
            )
        else:
            where = (
                f"{session.position + 1} of {len(session.suggestions)}"
                if session.position is not None
                and session.suggestions[session.position].region_id == session.current_region
                else "a region you clicked"
            )
            colours = dict(zip(session.classes, session.colours))
            chosen = (
                " + ".join(
                    f"<span style='color:{colours[name]}'>■</span> {html.escape(name)}"
                    for name in session.chosen
                )
                or "press a class key"
            )
            text = f"<b>Region {session.current_region}</b> ({where}): {chosen}"
        self.current_label.setText(text)

    def view_px(self) -> tuple[float, float]:
        """``(height, width)`` of the viewer's canvas area in screen pixels."""
        window = self.window()
        central = window.centralWidget() if hasattr(window, "centralWidget") else None
        if central is None:
            return (800.0, 800.0)
        return (float(central.height()), float(central.width()))

    def centre_camera(self) -> None:
        """Centre the camera on the current region at a zoom where it can be judged."""
        if self.session is None or self.session.current_region is None:
            return
        # the canvas size the camera is fitted to (the dock's layout may change it after)
        self.camera_view_px = self.view_px()
        target = self.session.camera_target(self.camera_view_px)
        camera = viewer_camera(self.viewer)
        camera.center = target.center
        camera.zoom = target.zoom

    # ------------------------------------------------------------------ jobs
    def _start(self, job, *args, on_returned, message: str, **kwargs) -> None:
        set_progress(self.progress_bar, 0, 0)
        self.status.setText(message)
        self.suggest_button.setEnabled(False)
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker = create_worker(job, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(on_returned)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    @reported
    def suggest(self) -> None:
        """Score the chosen slide's regions in a worker and list the suggestions."""
        if self.worker is not None:
            return
        entry = self.slide_entry()
        if entry is None:
            raise WslAlError("no slide", hint="open a slide (File > Open) or a project with slides")
        if not entry["in_project"] and entry["path"] is None:
            raise WslAlError(
                f"slide {entry['name']!r} has no file",
                hint="active learning needs a slide file: open one from disk",
            )
        project_path = self.project.path if self.project else self.project_edit.text().strip()
        layer = self.slide_layer()
        self._start(
            suggest_and_open,
            project_path,
            None if entry["in_project"] else entry["path"],
            entry["name"],
            self.strategy_combo.currentText(),
            self.batch_spin.value(),
            self.mode(),
            None if layer is None else given_mpp(layer.metadata["reader"]),
            on_returned=self._suggested,
            message="Suggest: loading the model…",
        )

    def _install_session(self, session: LabellingSession) -> None:
        """Put a session opened in a worker in place of the current one, and draw it."""
        same_slide = self.session is not None and self.session.slide == session.slide
        if self.session is not None:
            self.session.close()
        self.session = session
        self._slide_name = session.slide
        if not same_slide:  # on the same slide, the shapes already drawn stay
            self._drawn_labels = []
            self._drawn_outlines = []
        self._refresh_slides()  # the chosen slide is the session's: no new session opened
        self._match_resolution(session.project, session.slide)
        if self.slide_layer() is None:
            entry = self.slide_entry()
            if entry is not None and entry["path"]:
                reader = rounds.open_project_slide(self.project, session.slide)
                data, kwargs, _ = layer_data(reader)[0]
                kwargs["name"] = session.slide
                self.viewer.add_image(data, **kwargs)
        self._raise_layers()
        self._bind_class_keys()
        self.show_state(centre=True)

    def _match_resolution(self, project: Project, slide: str) -> None:
        """Give the open layer of ``slide`` the resolution the project records for it (set in
        the Slide dock in an earlier session), so that outlines and labels fall on the tissue."""
        layer = self.slide_layer()
        if layer is not None:
            match_recorded_resolution(layer, project.slide_mpp(slide), slide)

    @reported
    def _suggested(self, result) -> None:
        project, slide, selection, session = result
        self.project_edit.setText(str(project.path))
        self.project, self._loaded_path = project, project.path
        self._install_session(session)
        if selection.strategy == "random" and self.strategy_combo.currentText() != "random":
            self.status.setText(f"{len(selection.ids)} suggestions, random: no round trained yet")
            self.status.setToolTip(
                "No round has trained the model's segmentation yet, so the first suggestions "
                "are random tissue regions; label them, then Train next round")
        else:
            self.status.setText(
                f"{len(selection.ids)} suggestions ({selection.strategy}) on {slide}")
            self.status.setToolTip("")

    @reported
    def train(self) -> None:
        """Train the next round in a worker; suggestions and labels refresh when it ends."""
        if self.worker is not None:
            return
        if self.project is None:
            raise WslAlError("no project yet", hint="press Suggest and label some regions first")
        # read again: another dock (Model, Project) may have changed the settings
        self.project = Project.open(self.project.path)
        settings = rounds.ALSettings.of_project(self.project)
        settings = replace(
            settings,
            strategy=self.strategy_combo.currentText(),
            n_suggestions=self.batch_spin.value(),
            train=replace(settings.train, steps=self.steps_spin.value()),
            init="wsl" if self.reinit_check.isChecked() else "previous",
        )
        self._start(
            round_and_open,
            self.project,
            settings,
            self._slide_name if self.session is not None else None,
            self.mode(),
            on_returned=self._trained,
            message="Train: reading the labelled tiles…",
        )

    @reported
    def _trained(self, returned) -> None:
        result, session = returned
        if session is not None:
            self._install_session(session)
        else:
            self.show_state(centre=True)
        text = f"Round {result['round']} done: loss {result['metrics']['loss']:.3f}"
        self.status.setText(text)
        show_info(text)
        if session is not None:  # in a later pass of the event loop, after this one returns
            slide, number = session.slide, result["round"]
            QTimer.singleShot(0, lambda: self._queue_round_maps(slide, number))

    @reported
    def _queue_round_maps(self, slide: str, number: int | None) -> None:
        """Show round ``number``'s maps of ``slide`` (:data:`ROUND_MAP_LAYERS`) and, hidden,
        the round before's foreground for comparison.

        The layers are made once and then given each new round's data (a few tens of ms;
        making an image layer takes napari 0.1-0.5 s); missing ones are added one at a time,
        :data:`MAP_LAYER_DELAY_MS` apart, so that the UI runs in between.
        """
        if number is None:
            return
        wanted = [("latest", number, spec) for spec in self.round_map_specs(slide, number)]
        if number > 1:
            wanted += [("previous", number - 1, spec)
                       for spec in self.round_map_specs(slide, number - 1)
                       if spec.kwargs["metadata"]["wslal_map"] == "fg"]
        self._pending_maps = []
        for role, round_number, spec in wanted:
            layer = self._round_layer(slide, role, spec.kwargs["metadata"]["wslal_map"])
            if layer is None:
                self._pending_maps.append((role, round_number, slide, spec))
            else:
                layer.data = spec.data
                layer.name = spec.name
                layer.metadata["wslal_round"] = round_number
        if self._pending_maps:
            QTimer.singleShot(MAP_LAYER_DELAY_MS, self._add_next_map)

    def _round_layer(self, slide: str, role: str, map_name: str):
        """The dock's layer of ``map_name`` for the ``"latest"`` or ``"previous"`` round."""
        for layer in self.viewer.layers:
            meta = layer.metadata
            if (meta.get("wslal_round_role") == role and meta.get("wslal_map") == map_name
                    and meta.get("wslal_slide") == slide):
                return layer
        return None

    def round_map_specs(self, slide: str, number: int) -> list:
        """Layer specifications of round ``number``'s maps of ``slide`` shown by the dock
        (:data:`ROUND_MAP_LAYERS`), named ``"<slide> round N <map>"``."""
        if self.project is None:
            return []
        path = rounds.round_maps_path(self.project, slide, number)
        if not path.exists():
            return []
        specs = map_layer_specs(MapStore(path).handles(), f"{slide} round {number}")
        return [spec for spec in specs if spec.kwargs["metadata"]["wslal_map"] in ROUND_MAP_LAYERS]

    @reported
    def _add_next_map(self) -> None:
        """Add one round map layer, and plan the next one after :data:`MAP_LAYER_DELAY_MS`."""
        if not self._pending_maps:
            return
        role, number, slide, spec = self._pending_maps.pop(0)
        kwargs = dict(spec.kwargs)
        kwargs["metadata"] = {**kwargs["metadata"], "wslal_round": number,
                              "wslal_round_role": role, "wslal_slide": slide}
        kwargs["visible"] = role == "latest" and kwargs["metadata"]["wslal_map"] == "fg"
        with keep_selection(self.viewer.layers):  # the new map is not picked
            self.viewer.add_image(spec.data, name=spec.name, **kwargs)
        self._raise_layers()
        if self._pending_maps:
            QTimer.singleShot(MAP_LAYER_DELAY_MS, self._add_next_map)

    def cancel(self) -> None:
        """Stop the running job at its next step (a round is then run again from scratch)."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Cancelling…")
            self.cancel_button.setEnabled(False)

    def _on_progress(self, progress) -> None:
        set_progress(self.progress_bar, progress.step, progress.total or 0)
        self.status.setText(progress.message)

    def _on_error(self, error: Exception) -> None:
        self.report(error)

    def _on_aborted(self) -> None:
        self.status.setText("Cancelled.")

    def _on_finished(self) -> None:
        self.worker = None
        self.suggest_button.setEnabled(True)
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        set_progress(self.progress_bar, 1, 1)
