"""The Project dock: open or create a project folder, its slides, its classes and its rounds.

A thin view over :class:`~napari_wsl_al.core.project.Project`: every change goes through a
core method that saves ``project.json`` at once (:meth:`~.Project.add_slide`,
:meth:`~.Project.remove_slide`, :meth:`~.Project.set_classes`); the round history is read
from ``labels.sqlite``. Before each change the project is read again from disk, so that what
other docks or the command line saved meanwhile is kept. :attr:`ProjectWidget.project_changed`
tells other docks when the project is opened, created or changed.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QColorDialog,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.al.labels import LABELS_FILE, LabelStore
from ..core.errors import ProjectError, WslAlError
from ..core.io import SLIDE_EXTENSIONS, open_slide
from ..core.io.base import given_mpp
from ..core.project import (
    DEFAULT_CLASS_COLOURS,
    PROJECT_FILE,
    ClassSpec,
    Project,
    check_class_specs,
    default_project_classes,
    free_class_key,
    slide_key,
)
from .al_widget import _same_file, slide_layers
from .infer_widget import default_project_path
from .slots import reported

#: Columns of the class table.
CLASS_COLUMNS = ("Name", "Colour", "Key")

#: Rows of the class table shown without scrolling.
CLASS_ROWS_SHOWN = 6

#: Columns of the round table.
ROUND_COLUMNS = ("Round", "Finished", "Labels", "Loss", "Dice")

#: Shown in a round table cell for a value the round did not record.
MISSING = "–"


def _round_time(text: str | None, form: str = "%Y-%m-%d %H:%M") -> str:
    """An ISO 8601 UTC time as local time (``YYYY-MM-DD HH:MM`` by default)."""
    if not text:
        return MISSING
    try:
        return datetime.fromisoformat(text).astimezone().strftime(form)
    except ValueError:
        return text


def _number(value, digits: int = 3) -> str:
    """A metric for the round table, or :data:`MISSING`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return MISSING
    return f"{value:.{digits}f}" if math.isfinite(value) else MISSING


def _count(number: int, noun: str) -> str:
    """``"1 slide"``, ``"2 slides"``, ``"2 classes"``."""
    if number == 1:
        return f"{number} {noun}"
    return f"{number} {noun}" + ("es" if noun.endswith("s") else "s")


def _text_colour(colour: str) -> str:
    """Black or white, whichever reads better on ``colour``."""
    rgb = QColor(colour)
    luminance = 0.299 * rgb.red() + 0.587 * rgb.green() + 0.114 * rgb.blue()
    return "#000000" if luminance > 140 else "#ffffff"


class ProjectWidget(QWidget):
    """Dock widget: the project folder, its slides, its classes (name, colour, key) and the
    round history.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose open slides can be added to the project.

    Attributes
    ----------
    project : Project or None
        The open project; None while the folder holds none (Create makes it).
    project_changed : Signal(object)
        Emitted with the :class:`~napari_wsl_al.core.project.Project` when it is opened,
        created or changed.
    """

    project_changed = Signal(object)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        #: The classes shown; those of the next Create while no project is open.
        self.specs: tuple[ClassSpec, ...] = default_project_classes()

        # ---------------------------------------------------------- project folder
        self.project_edit = QLineEdit(str(default_project_path()))
        self.project_edit.setToolTip(
            "Project folder (study.wslal), shared with the Inference, Active learning and "
            "Metrics docks: slides, classes, labels, maps and rounds are saved there"
        )
        self.project_edit.returnPressed.connect(lambda: self.open_project())
        browse = QPushButton("Browse…")
        browse.setToolTip("Choose the project folder")
        browse.clicked.connect(lambda: self._browse_project())
        self.open_button = QPushButton("Open")
        self.open_button.setToolTip("Open the project in this folder (again, to reload it)")
        self.open_button.clicked.connect(lambda: self.open_project())
        self.create_button = QPushButton("Create")
        self.create_button.setToolTip(
            "Create a project in this folder with the classes of the table below"
        )
        self.create_button.clicked.connect(lambda: self.create_project())
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.project_edit, 1)
        folder_row.addWidget(browse)
        buttons_row = QHBoxLayout()
        buttons_row.addWidget(self.open_button)
        buttons_row.addWidget(self.create_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)

        # ---------------------------------------------------------- slides
        self.slide_list = QListWidget()
        self.slide_list.setToolTip("The project's slides and patch folders")
        self.slide_list.setMinimumHeight(60)
        self.add_file_button = QPushButton("Add slide…")
        self.add_file_button.setToolTip("Add a slide or image file to the project")
        self.add_file_button.clicked.connect(lambda: self._browse_slide())
        self.add_folder_button = QPushButton("Add patch folder…")
        self.add_folder_button.setToolTip("Add a folder of patches (or a zarr pyramid)")
        self.add_folder_button.clicked.connect(lambda: self._browse_folder())
        self.add_open_button = QPushButton("Add open slides")
        self.add_open_button.setToolTip("Add the slides open in napari that are not in it yet")
        self.add_open_button.clicked.connect(lambda: self.add_open_slides())
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip(
            "Remove the selected slide from the project; its labels stay in labels.sqlite"
        )
        self.remove_button.clicked.connect(lambda: self.remove_selected_slide())
        self.delete_files_check = QCheckBox("Also delete its maps and superpixels")
        self.delete_files_check.setToolTip(
            "Also delete what was computed for the slide (its maps and each round's maps in "
            "maps/, its superpixels/); the slide file itself is never touched"
        )
        slide_buttons = QGridLayout()
        slide_buttons.addWidget(self.add_file_button, 0, 0)
        slide_buttons.addWidget(self.add_folder_button, 0, 1)
        slide_buttons.addWidget(self.add_open_button, 1, 0)
        slide_buttons.addWidget(self.remove_button, 1, 1)
        slide_buttons.addWidget(self.delete_files_check, 2, 0, 1, 2)
        slides_box = QGroupBox("Slides")
        slides_layout = QVBoxLayout(slides_box)
        slides_layout.addWidget(self.slide_list, 1)
        slides_layout.addLayout(slide_buttons)

        # ---------------------------------------------------------- classes
        self.class_table = QTableWidget(0, len(CLASS_COLUMNS))
        self.class_table.setHorizontalHeaderLabels(CLASS_COLUMNS)
        self.class_table.verticalHeader().setVisible(False)
        header = self.class_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.class_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.class_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.class_table.setToolTip(
            "Double-click a name or a key to edit it; click a colour to change it"
        )
        self.class_table.itemChanged.connect(lambda _item: self._class_edited())
        self.add_class_button = QPushButton("Add class")
        self.add_class_button.clicked.connect(lambda: self.add_class())
        self.remove_class_button = QPushButton("Remove class")
        self.remove_class_button.setToolTip(
            "Remove the selected class (refused while labels use it)"
        )
        self.remove_class_button.clicked.connect(lambda: self.remove_selected_class())
        class_buttons = QHBoxLayout()
        class_buttons.addWidget(self.add_class_button)
        class_buttons.addWidget(self.remove_class_button)
        keys_help = QLabel(
            "Key <b>1</b> labels background, <b>S</b> skips, <b>U</b> undoes.<br>"
            "A class without a key takes its place + 1."
        )
        classes_box = QGroupBox("Classes")
        classes_layout = QVBoxLayout(classes_box)
        classes_layout.addWidget(self.class_table, 1)
        classes_layout.addLayout(class_buttons)
        classes_layout.addWidget(keys_help)

        # ---------------------------------------------------------- rounds
        self.round_table = QTableWidget(0, len(ROUND_COLUMNS))
        self.round_table.setHorizontalHeaderLabels(ROUND_COLUMNS)
        self.round_table.verticalHeader().setVisible(False)
        self.round_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.round_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.round_table.setToolTip(
            "Rounds trained so far (Active learning dock, Train next round): labels used, "
            "training loss, and Dice when the round measured it"
        )
        rounds_box = QGroupBox("Rounds")
        rounds_layout = QVBoxLayout(rounds_box)
        rounds_layout.addWidget(self.round_table)

        layout = QVBoxLayout(self)
        layout.addLayout(folder_row)
        layout.addLayout(buttons_row)
        layout.addWidget(self.status)
        layout.addWidget(slides_box, 1)
        layout.addWidget(classes_box)
        layout.addWidget(rounds_box, 1)
        self.open_project(notify=False)

    # ------------------------------------------------------------------ errors
    def report(self, error: Exception) -> None:
        """Show an error in the status line and as a notification that says what to do."""
        if isinstance(error, (WslAlError, ValueError)):
            text = str(error)
        else:
            text = f"Project: {type(error).__name__}: {error}"
        self.status.setText(text)
        show_error(text)

    # ------------------------------------------------------------------ project
    def folder(self) -> Path:
        """The folder named in the project field."""
        text = self.project_edit.text().strip()
        if not text:
            raise ProjectError("no project folder given", hint="type one or press Browse…")
        return Path(text).expanduser()

    @reported
    def open_project(self, path: str | Path | None = None, notify: bool = True) -> None:
        """Open the project in ``path`` (the project field by default).

        When the folder holds no project yet, the class table shows the classes the next
        Create will give it.
        """
        if path is not None:
            self.project_edit.setText(str(path))
        folder = self.folder()
        if (folder / PROJECT_FILE).is_file():
            self._set_project(Project.open(folder))
            if notify:
                show_info(f"Opened project {self.project.path}")
            return
        self.project = None
        self.specs = default_project_classes()
        self._fill()
        self.status.setText(
            f"No project in {folder} yet: check its classes below and press Create."
        )
        if notify:
            show_info(f"{folder}: no project here yet; press Create to make one")

    @reported
    def create_project(self, path: str | Path | None = None) -> None:
        """Create a project in ``path`` (the project field by default) with the classes of the
        class table."""
        if path is not None:
            self.project_edit.setText(str(path))
        folder = self.folder()
        if (folder / PROJECT_FILE).is_file():
            raise ProjectError(
                "a project already exists here", path=folder,
                hint="press Open to open it, or choose a new folder",
            )
        project = Project.create(folder, classes=check_class_specs(self.specs))
        self._set_project(project)
        show_info(f"Created project {project.path}")

    def _set_project(self, project: Project) -> None:
        """Show ``project`` and tell the other docks."""
        self.project = project
        self.specs = project.classes
        self.project_edit.setText(str(project.path))
        self._fill()
        self.project_changed.emit(project)

    def _current(self) -> Project:
        """The open project, read again from disk (what other docks saved is kept)."""
        if self.project is None:
            raise ProjectError(
                "no project is open", path=self.project_edit.text().strip() or None,
                hint="press Open, or Create to make one here",
            )
        self.project = Project.open(self.project.path)
        return self.project

    def _changed(self, message: str) -> None:
        """Show the saved project and tell the other docks."""
        self.specs = self.project.classes
        self._fill()
        self.status.setText(message)
        self.project_changed.emit(self.project)

    def _fill(self) -> None:
        self._fill_slides()
        self._fill_classes()
        self._fill_rounds()
        has_project = self.project is not None
        for button in (
            self.add_file_button,
            self.add_folder_button,
            self.add_open_button,
            self.remove_button,
        ):
            button.setEnabled(has_project)
        self.create_button.setEnabled(not has_project)
        if has_project:
            self.status.setText(
                f"Project {self.project.path.name}: {_count(len(self.project.slides), 'slide')}, "
                f"{_count(len(self.project.classes), 'class')}, "
                f"{_count(self.round_table.rowCount(), 'round')}"
            )

    # ------------------------------------------------------------------ slides
    def _fill_slides(self) -> None:
        self.slide_list.clear()
        for entry in self.project.slides if self.project else []:
            path = entry.get("path")
            if path is None:
                where = "in memory (no file)"
            else:
                where = Path(path).name + ("" if Path(path).exists() else " (file missing)")
            if entry.get("mpp") is not None:  # given by the user: the file does not say it
                where += f"   ·   {entry['mpp']:g} µm/px"
            item = QListWidgetItem(f"{entry['name']}   ·   {where}")
            item.setToolTip(str(path) if path else "an in-memory slide: it has no file")
            item.setData(Qt.ItemDataRole.UserRole, entry["name"])
            self.slide_list.addItem(item)

    def _add(self, path: str | Path, name: str | None = None) -> str:
        """Register a readable slide; returns a sentence saying what happened."""
        project = self._current()
        path = Path(path)
        with open_slide(path):
            pass  # refused here, with what to do, when it is no slide that can be read
        before = set(project.slide_names())
        added = project.add_slide(path, name=name)
        if added in before:
            return f"{added} is already in the project"
        wanted = slide_key(name if name is not None else (path.stem if path.suffix else path.name))
        if added != wanted:
            return f"added {added} (the name {wanted} was taken by another file)"
        return f"added {added}"

    @reported
    def add_slide_file(self, path: str | Path) -> None:
        """Add a slide or image file to the project."""
        message = self._add(path)
        self._changed(message[0].upper() + message[1:] + ".")

    @reported
    def add_patch_folder(self, path: str | Path) -> None:
        """Add a folder of patches (or a zarr pyramid) to the project."""
        if not Path(path).is_dir():
            raise ProjectError("not a folder", path=path, hint="choose a folder of patch images")
        message = self._add(path)
        self._changed(message[0].upper() + message[1:] + ".")

    @reported
    def add_open_slides(self) -> None:
        """Add the slides open in napari (those read by this plugin) that have a file."""
        project = self._current()
        layers = slide_layers(self.viewer)
        if not layers:
            raise ProjectError(
                "no slide is open in napari",
                hint="open one with File > Open (napari-wsl-al reader), or press Add slide…",
            )
        added, without_file = [], []
        for layer in layers:
            path = layer.metadata["reader"].path
            if path is None:
                without_file.append(layer.name)
            elif not any(_same_file(entry.get("path"), path) for entry in project.slides):
                added.append(project.add_slide(
                    path, name=layer.name, mpp=given_mpp(layer.metadata["reader"])))
        parts = [f"Added {', '.join(added)}." if added else "Every open slide is in it already."]
        if without_file:
            parts.append(
                f"Left out {', '.join(without_file)}: no file on disk (save it as a file first)."
            )
        self._changed(" ".join(parts))

    def selected_slide(self) -> str | None:
        """The name of the slide selected in the list."""
        item = self.slide_list.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    @reported
    def remove_selected_slide(self) -> None:
        """Remove the selected slide (and its computed files when the box is ticked)."""
        name = self.selected_slide()
        if name is None:
            raise ProjectError("no slide selected", hint="click a slide in the list first")
        # the UI thread does not wait for a run writing the slide's maps: it says so at once
        removed = self._current().remove_slide(
            name, delete_files=self.delete_files_check.isChecked(), lock_timeout=0
        )
        deleted = " and its maps and superpixels" if removed.deleted else ""
        message = (
            f"Removed {name}{deleted}. Its labels ({removed.labels_kept}) stay in "
            f"{LABELS_FILE}: adding the slide again brings them back."
        )
        self._changed(message)
        show_info(message)

    # ------------------------------------------------------------------ classes
    def _fill_classes(self) -> None:
        table = self.class_table
        table.blockSignals(True)
        table.setRowCount(len(self.specs))
        for row, spec in enumerate(self.specs):
            table.setItem(row, 0, QTableWidgetItem(spec.name))
            button = table.cellWidget(row, 1)
            if button is None:  # buttons are kept: a replaced one lingers until deleted
                button = QPushButton()
                button.clicked.connect(lambda _checked=False, r=row: self._pick_colour(r))
                table.setCellWidget(row, 1, button)
            button.setText(spec.colour)
            button.setToolTip(f"Colour of {spec.name}: click to change it")
            button.setStyleSheet(
                f"background-color: {spec.colour}; color: {_text_colour(spec.colour)};"
            )
            key = QTableWidgetItem(spec.key)
            key.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            key.setToolTip("Empty: the class takes its place + 1 as key")
            table.setItem(row, 2, key)
        table.blockSignals(False)
        self._fit_class_table()

    def _fit_class_table(self) -> None:
        """Make the class table as tall as its rows (up to :data:`CLASS_ROWS_SHOWN`)."""
        table = self.class_table
        table.resizeRowsToContents()
        shown = min(table.rowCount(), CLASS_ROWS_SHOWN)
        rows = sum(table.rowHeight(row) for row in range(shown))
        if shown == 0:
            rows = table.verticalHeader().defaultSectionSize()
        header = table.horizontalHeader()
        table.setFixedHeight(
            max(header.height(), header.sizeHint().height()) + rows + 2 * table.frameWidth()
        )

    def showEvent(self, event) -> None:
        """Fit the class table to its rows once the dock's style is applied."""
        super().showEvent(event)
        self._fit_class_table()

    def _table_specs(self) -> list[ClassSpec]:
        """The classes as edited in the table (colours are kept from :attr:`specs`)."""
        specs = []
        for row, spec in enumerate(self.specs):
            name = self.class_table.item(row, 0)
            key = self.class_table.item(row, 2)
            specs.append(
                replace(
                    spec,
                    name=spec.name if name is None else name.text(),
                    key=spec.key if key is None else key.text(),
                )
            )
        return specs

    def set_classes(self, specs) -> None:
        """Make ``specs`` the classes: saved in ``project.json`` when a project is open, kept
        for Create otherwise. Refused (and the table shows the classes as they were) when a
        rule is broken.

        Raises
        ------
        ValueError
            When :func:`~napari_wsl_al.core.project.check_class_specs` or
            :meth:`~napari_wsl_al.core.project.Project.set_classes` refuses them.
        """
        try:
            if self.project is None:
                self.specs = check_class_specs(specs)
                self._fill_classes()
                self.status.setText("Classes set: press Create to make the project.")
                return
            self._current().set_classes(specs)
        except Exception:
            if self.project is not None:
                self.specs = self.project.classes
            self._fill_classes()
            raise
        self._changed(f"Classes saved in {PROJECT_FILE}.")

    @reported
    def _class_edited(self) -> None:
        self.set_classes(self._table_specs())

    @reported
    def set_class_colour(self, row: int, colour: str) -> None:
        """Give the class in ``row`` the colour ``colour`` (``#rrggbb``)."""
        specs = self._table_specs()
        specs[row] = replace(specs[row], colour=colour)
        self.set_classes(specs)

    @reported
    def add_class(self, name: str | None = None) -> None:
        """Add a class (named ``class N`` by default) with a free key."""
        specs = self._table_specs()
        names = {spec.name for spec in specs}
        number = len(specs) + 1
        while name is None or name in names:
            name, number = f"class {number}", number + 1
        colour = DEFAULT_CLASS_COLOURS[len(specs) % len(DEFAULT_CLASS_COLOURS)]
        self.set_classes([*specs, ClassSpec(name, colour, free_class_key(specs))])

    @reported
    def remove_selected_class(self) -> None:
        """Remove the selected class (refused while labels use it)."""
        row = self.class_table.currentRow()
        if not 0 <= row < len(self.specs):
            raise ValueError("no class selected: click a class in the table first")
        specs = self._table_specs()
        del specs[row]
        self.set_classes(specs)

    # ------------------------------------------------------------------ rounds
    @reported
    def _fill_rounds(self) -> None:
        table = self.round_table
        table.setRowCount(0)
        if self.project is None or not (self.project.path / LABELS_FILE).is_file():
            return
        with LabelStore.for_project(self.project.path) as store:
            records = store.rounds()
        table.setRowCount(len(records))
        for row, record in enumerate(records):
            metrics = record.metrics or {}
            done = record.status == "done"
            when = record.finished or record.started
            cells = (
                str(record.number),
                _round_time(when, "%Y-%m-%d"),
                str(int(metrics.get("labels", record.labels_used))),
                _number(metrics.get("loss")) if done else record.status,
                _number(metrics.get("dice")),
            )
            tip = f"round {record.number}: {record.status}" + (
                f" ({record.reason})" if record.reason else ""
            ) + f", {'finished' if record.finished else 'started'} {_round_time(when)}"
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column != 1:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if not done:
                    item.setForeground(QColor("#a0a0a0"))
                item.setToolTip(tip)
                table.setItem(row, column, item)

    # ------------------------------------------------------------------ dialogs
    @reported
    def _browse_project(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Project folder (study.wslal)", self.project_edit.text()
        )
        if path:
            self.open_project(path)

    @reported
    def _browse_slide(self) -> None:
        patterns = " ".join(f"*{suffix}" for suffix in SLIDE_EXTENSIONS)
        path, _ = QFileDialog.getOpenFileName(
            self, "Add a slide", "", f"Slides and images ({patterns});;All files (*)"
        )
        if path:
            self.add_slide_file(path)

    @reported
    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a folder of patches")
        if path:
            self.add_patch_folder(path)

    @reported
    def _pick_colour(self, row: int) -> None:
        colour = QColorDialog.getColor(
            QColor(self.specs[row].colour), self, f"Colour of {self.specs[row].name}"
        )
        if colour.isValid():
            self.set_class_colour(row, colour.name())
