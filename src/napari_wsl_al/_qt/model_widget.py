"""Model dock widget: the model in use (shipped default or a checkpoint file), and WSL training from image-level labels.

The chosen model is stored in the project's active-learning settings (``settings.active_learning
.model`` in ``project.json``, read by the rounds), handed to the Inference docks that are open,
and announced by :attr:`ModelWidget.model_changed`. Training runs the same steps as
``napari-wsl-al train-wsl`` (the options are parsed by that command's own parser) in a napari
thread worker, one progress record per batch, so that Cancel stops it between two batches.
"""

from __future__ import annotations

import argparse
import html
import platform
import shlex
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..commands import train_wsl as train_command
from ..core.al.rounds import ALSettings
from ..core.data.glas import GLAS_MPP, load_dataset, split_by_patient
from ..core.errors import DatasetError, WslAlError
from ..core.infer.loading import DEFAULT_MODEL
from ..core.models.checkpoint import default_checkpoint_path, load_checkpoint, save_checkpoint
from ..core.models.factory import ARCHITECTURES, ModelConfig
from ..core.progress import Progress
from ..core.project import PROJECT_FILE, Project
from ..core.wsl.train import train_wsl
from .infer_widget import InferenceWidget, default_project_path
from .slots import reported, set_progress

#: Choices of the model source.
SOURCE_DEFAULT = "Shipped default"
SOURCE_FILE = "Checkpoint file"

#: Where a folder of patches must hold its image-level labels (the hint of folder errors).
LABELS_HINT = (
    "the GlaS layout (images/ and grade.csv naming each image's class) or one sub-folder of "
    "images per class"
)

#: How the summary tells why training ended (``TrainResult.stopped``).
STOP_REASONS = {"early-stopping": ", stopped early", "time-limit": ", stopped at the time limit"}


# ---------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class ModelInfo:
    """What the dock shows of a checkpoint.

    Attributes
    ----------
    choice : str
        ``"default"`` or the checkpoint's path: what the project stores and the Inference
        dock reads.
    path : Path
        The checkpoint file.
    name : str
        Short name (``default`` or the file name).
    architecture : str
        Architecture and backbone, e.g. ``"maxmin, ResNet-18 x0.25"``.
    classes : tuple of str
        Image-level classes.
    mpp : float or None
        Microns per pixel of the training images.
    summary : str
        One or two sentences: data, training, validation figures.
    details : str
        Longer text (the command that trained it), for a tooltip.
    """

    choice: str
    path: Path
    name: str
    architecture: str
    classes: tuple[str, ...]
    mpp: float | None
    summary: str
    details: str = ""


def _percent(value) -> str:
    return f"{100.0 * float(value):.1f}%"


def checkpoint_summary(config: ModelConfig, extra: dict) -> tuple[str, str]:
    """A short summary of a checkpoint's provenance and figures, and a longer text.

    Parameters
    ----------
    config : ModelConfig
        The checkpoint's configuration.
    extra : dict
        Its ``extra``: written by ``train-wsl`` (and this dock), by an active-learning round,
        or anything else.

    Returns
    -------
    summary, details : str
    """
    if "round" in extra:
        metrics = extra.get("metrics") or {}
        parts = [f"Active-learning round {extra['round']}"]
        if metrics.get("loss") is not None:
            parts.append(f"loss {float(metrics['loss']):.3f}")
        if metrics.get("labels") is not None:
            parts.append(f"{metrics['labels']} labelled regions")
        return ", ".join(parts) + ".", ""
    card = train_command.model_card(config.to_dict(), extra)
    sentences = []
    data = card["data"] or {}
    note = str(data.get("note") or "").split(";")[0].strip()
    if note:
        sentences.append(f"Trained on {note}.")
    elif data.get("n_images"):
        folder = Path(str(data.get("path", ""))).name
        sentences.append(f"Trained on {data['n_images']} images of {folder}.")
    training = card["training"]
    if training.get("epochs_run"):
        best = training.get("best_epoch")
        stopped = STOP_REASONS.get(training.get("stopped"), "")
        sentences.append(
            f"Best epoch {int(best) + 1 if best is not None else '?'} of "
            f"{training['epochs_run']}{stopped}."
        )
    validation = card["validation_percent"]
    if validation.get("classification_error") is not None:
        text = f"Validation error {validation['classification_error']:.1f}%"
        if validation.get("f1_pos") is not None:
            text += f", F1+ {validation['f1_pos']:.1f}%, F1- {validation['f1_neg']:.1f}%"
        sentences.append(text + f" ({validation.get('n_images')} images).")
    elif (card["split"] or {}).get("grouped_by") == "none":
        sentences.append("Trained on every image: no validation figures.")
    if not sentences:
        sentences.append("No training record in the checkpoint.")
    if config.colour_target is not None:
        sentences.append("Colour-normalises every image (Reinhard).")
    if config.fg_class is not None:
        sentences.append(f"Its foreground is the {config.fg_class} class's map on every image.")
    return " ".join(sentences), str(card.get("command") or "")


def describe_checkpoint(choice: str | Path) -> ModelInfo:
    """Read a checkpoint (``"default"``: the shipped one) and describe it.

    Raises
    ------
    CheckpointError
        Missing, damaged or incompatible file (the message names it and says what to do).
    """
    is_default = str(choice) == DEFAULT_MODEL
    path = default_checkpoint_path() if is_default else Path(choice).expanduser()
    _, config, extra = load_checkpoint(path, device="cpu")
    summary, details = checkpoint_summary(config, extra)
    return ModelInfo(
        choice=DEFAULT_MODEL if is_default else str(path),
        path=path,
        name=DEFAULT_MODEL if is_default else path.name,
        architecture=f"{config.arch}, ResNet-{config.depth} x{config.width:g}",
        classes=tuple(config.classes),
        mpp=config.mpp,
        summary=summary,
        details=details,
    )


def stored_model(project_path: str | Path) -> str:
    """The model stored in a project's active-learning settings (``"default"`` without a
    project)."""
    path = Path(project_path).expanduser()
    if not (path / PROJECT_FILE).is_file():
        return DEFAULT_MODEL
    return ALSettings.of_project(Project.open(path)).model


def store_model(project_path: str | Path, info: ModelInfo) -> Project:
    """Make ``info`` the project's model (the first round starts from it).

    A project that does not exist yet is created with the model's classes.

    Raises
    ------
    ProjectError
        The project is damaged, or its classes are not the model's.
    """
    path = Path(project_path).expanduser()
    if (path / PROJECT_FILE).is_file():
        project = Project.open(path)
        project.check_model_classes(info.classes, f"model {info.name}")
    else:
        project = Project.create(path, classes=list(info.classes), exist_ok=True)
    replace(ALSettings.of_project(project), model=info.choice).save_to(project)
    return project


# ---------------------------------------------------------------------- training
class _OptionParser(argparse.ArgumentParser):
    """The ``train-wsl`` parser, raising ``ValueError`` instead of exiting."""

    def error(self, message):
        raise ValueError(f"train-wsl options: {message}")


def train_parser() -> argparse.ArgumentParser:
    """The options of ``napari-wsl-al train-wsl``, from the command's own definition."""
    parser = _OptionParser(prog=f"napari-wsl-al {train_command.NAME}", add_help=False)
    train_command.add_arguments(parser)
    return parser


def train_options(
    folder: str | Path,
    arch: str,
    epochs: int,
    lr: float,
    crop_size: int,
    out: str | Path,
    more: str = "",
) -> argparse.Namespace:
    """The ``train-wsl`` options of a run from the dock.

    Parameters
    ----------
    folder : str or Path
        The patch folder.
    arch, epochs, lr, crop_size, out
        The dock's fields.
    more : str
        Further ``train-wsl`` options, as typed on a command line (``--width 0.5``).

    Raises
    ------
    ValueError
        An unknown option or a bad value.
    """
    words = [
        str(folder), "--arch", arch, "--epochs", str(int(epochs)), "--lr", repr(float(lr)),
        "--crop-size", str(int(crop_size)), "--out", str(out), *shlex.split(more),
    ]
    args = train_parser().parse_args(words)
    try:
        train_command._parse_head(args.head)
    except SystemExit as error:
        raise ValueError(str(error)) from None
    return args


def check_two_classes(dataset) -> None:
    """Refuse image-level labels with fewer than two classes (nothing to learn from).

    Raises
    ------
    DatasetError
        Naming the folder and what to add.
    """
    present = [name for name, count in dataset.class_counts().items() if count]
    if len(present) < 2:
        raise DatasetError(
            f"the image-level labels have {len(present)} class"
            f"{'' if len(present) == 1 else 'es'} ({', '.join(present) or 'none'})",
            dataset.root,
            hint="training needs images of at least two classes: add a class to grade.csv, "
            "or another class sub-folder",
        )


def train_from_folder(args: argparse.Namespace) -> Generator[Progress, None, Path]:
    """Train and save a model as ``napari-wsl-al train-wsl`` does, yielding a record per batch.

    Parameters
    ----------
    args : argparse.Namespace
        ``train-wsl`` options (:func:`train_options`).

    Yields
    ------
    Progress
        Reading the folder; every batch and epoch of :func:`train_wsl`; saving.

    Returns
    -------
    Path
        The checkpoint written (only when training ran to its end: a job closed early writes
        nothing).

    Raises
    ------
    DatasetError
        The folder has no image-level labels, one class only, or an unreadable image.
    """
    import torch

    folder = Path(args.data).expanduser()
    yield Progress(0, None, f"reading the labels of {folder.name}")
    dataset = load_dataset(folder)
    check_two_classes(dataset)
    layout = "glas" if (folder / "grade.csv").exists() else "class-folders"
    data_mpp = args.mpp if args.mpp is not None else (GLAS_MPP if layout == "glas" else None)
    if args.target_mpp and not data_mpp:
        raise DatasetError(
            "the images' resolution is unknown", folder,
            hint="add --mpp (microns per pixel of the images) to the options, or drop --target-mpp",
        )
    split = split_by_patient(dataset, val_fraction=args.val_fraction, seed=args.seed)
    try:
        train_config, model_config = train_command.configs_from_args(
            args, dataset.classes, data_mpp, split.train)
    except SystemExit as error:  # an option that does not fit the data (--fg-class)
        raise DatasetError(str(error), folder, hint="change the option under More options") from None
    model, pretrained, split_train, split_val = train_command.model_and_data(
        args, model_config, split, data_mpp)
    result = yield from train_wsl(
        model, split_train, split_val, train_config, model_config=model_config,
        batch_progress=True,
    )
    fg_range = train_command.calibrate_if_maxmin(args, model, model_config, split_train,
                                                 train_config)
    yield Progress(1, 1, f"saving {Path(args.out).name}")
    val_metrics = {key[4:]: value for key, value in result.best_metrics.items()
                   if key.startswith("val_")}
    extra = {
        "command": train_command.command_line(args),
        "data": {
            "path": str(folder.resolve()), "layout": layout, "note": args.data_note,
            "n_images": len(dataset), "class_counts": dataset.class_counts(), "mpp": data_mpp,
        },
        "split": split.to_dict(),
        "val_metrics": val_metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped": result.stopped,
        "train_seconds": round(result.seconds, 1),
        "train_config": train_config.to_dict(),
        "pretrained": pretrained,
        "fg_range": None if fg_range is None else list(fg_range),
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads(),
        },
        "history": result.history,
    }
    return save_checkpoint(args.out, model, model_config, extra=extra)


# ---------------------------------------------------------------------- widget
def _row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


def _browse_button(tooltip: str, slot) -> QPushButton:
    button = QPushButton("Browse…")
    button.setToolTip(tooltip)
    button.clicked.connect(lambda: slot())
    return button


class ModelWidget(QWidget):
    """Dock widget: the model in use, and training one from a folder of labelled patches.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer; the Inference docks open in its window follow the chosen model.

    Attributes
    ----------
    model_changed : Signal(Path)
        Emitted with the checkpoint file of a newly chosen model (the shipped default's too).
    model_info : ModelInfo or None
        The model in use, once read.
    """

    model_changed = Signal(object)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model_info: ModelInfo | None = None
        self.worker = None
        self._inspectors: set = set()
        self._request = 0
        self._output_edited = False
        self._val_error: float | None = None
        self._training_folder: Path | None = None
        defaults = train_parser()

        # -------------------------------------------------------------- model in use
        self.default_radio = QRadioButton(SOURCE_DEFAULT)
        self.default_radio.setToolTip("The model shipped with napari-wsl-al")
        self.file_radio = QRadioButton(SOURCE_FILE)
        self.file_radio.setToolTip("A .pt checkpoint: trained here, with train-wsl, or a round's")
        self._sources = QButtonGroup(self)
        self._sources.addButton(self.default_radio)
        self._sources.addButton(self.file_radio)
        self.default_radio.setChecked(True)
        self.default_radio.toggled.connect(lambda checked: self._source_chosen(checked))
        self.file_edit = QLineEdit()
        self.file_edit.setPlaceholderText("checkpoint file (.pt)")
        self.file_edit.returnPressed.connect(lambda: self.choose_file(self.file_edit.text()))
        self.project_edit = QLineEdit(str(default_project_path()))
        self.project_edit.setToolTip(
            "Project folder (the Inference and Active learning docks' too): the chosen model is "
            "stored in its project.json, and the first active-learning round starts from it."
        )
        self.project_edit.editingFinished.connect(lambda: self.load_project())
        self.name_label = QLabel()
        self.arch_label = QLabel()
        self.classes_label = QLabel()
        self.mpp_label = QLabel()
        self.summary_label = QLabel()
        for label in (self.name_label, self.arch_label, self.classes_label, self.summary_label):
            label.setWordWrap(True)

        source_row = _row(self.default_radio, self.file_radio)
        source_row.addStretch(1)
        model_form = QFormLayout()
        model_form.addRow("Source", source_row)
        model_form.addRow("File", _row(self.file_edit, _browse_button(
            "Open a checkpoint file", self.browse_checkpoint)))
        model_form.addRow("Project", _row(self.project_edit, _browse_button(
            "Choose the project folder (study.wslal)", self.browse_project)))
        model_form.addRow("Name", self.name_label)
        model_form.addRow("Architecture", self.arch_label)
        model_form.addRow("Classes", self.classes_label)
        model_form.addRow("Resolution", self.mpp_label)
        model_form.addRow("Summary", self.summary_label)
        model_box = QGroupBox("Model in use")
        model_box.setLayout(model_form)

        # -------------------------------------------------------------- training
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder of patches with image-level labels")
        self.folder_edit.setToolTip(f"A folder in {LABELS_HINT}")
        self.folder_edit.textChanged.connect(lambda _text: self._suggest_output())
        self.arch_combo = QComboBox()
        self.arch_combo.addItems(ARCHITECTURES)
        self.arch_combo.setCurrentText(defaults.get_default("arch"))
        self.arch_combo.setToolTip("Max-Min: the method of the papers; cam-*, wildcat, deepmil: "
                                   "baselines")
        self.arch_combo.currentTextChanged.connect(lambda _text: self._suggest_output())
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(defaults.get_default("epochs"))
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(4)
        self.lr_spin.setRange(1e-4, 1.0)
        self.lr_spin.setSingleStep(0.001)
        self.lr_spin.setValue(defaults.get_default("lr"))
        self.crop_spin = QSpinBox()
        self.crop_spin.setRange(32, 2048)
        self.crop_spin.setSingleStep(32)
        self.crop_spin.setValue(defaults.get_default("crop_size"))
        self.crop_spin.setSuffix(" px")
        self.crop_spin.setToolTip("Side of the random square crops the model is trained on")
        self.reinhard_check = QCheckBox("Colour-normalise the images (Reinhard)")
        self.reinhard_check.setChecked(bool(defaults.get_default("reinhard")))
        self.reinhard_check.setToolTip(
            "Give every image's tissue the average colour of the training images (mean and "
            "spread of L*, a*, b*), in training and whenever the model is used: the stain of "
            "a lab or a patient stops being a cue (train-wsl --reinhard)")
        self.output_edit = QLineEdit()
        self.output_edit.setToolTip("Where the trained checkpoint is written (.pt)")
        self.output_edit.textEdited.connect(lambda _text: self._output_was_edited())
        self.options_edit = QLineEdit()
        self.options_edit.setPlaceholderText("--width 0.5 --batch-size 16 --device cuda")
        self.options_edit.setToolTip(
            "Further options of `napari-wsl-al train-wsl` (see its --help): depth, width, "
            "batch size, validation fraction, patience, device, --mpp of the images, --fg-class "
            "(the class whose map is the foreground on every image, as the shipped model's "
            "malignant) ..."
        )
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train in the background; the new model is then used")
        self.train_button.clicked.connect(lambda: self.train())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current batch; nothing is saved")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.cancel())
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_label = QLabel("")
        self.progress_label.setWordWrap(True)

        train_form = QFormLayout()
        train_form.addRow("Patch folder", _row(self.folder_edit, _browse_button(
            "Choose the folder of labelled patches", self.browse_folder)))
        train_form.addRow("Architecture", self.arch_combo)
        train_form.addRow("Epochs", self.epochs_spin)
        train_form.addRow("Learning rate", self.lr_spin)
        train_form.addRow("Crop size", self.crop_spin)
        train_form.addRow("", self.reinhard_check)
        train_form.addRow("Output", _row(self.output_edit, _browse_button(
            "Choose where the checkpoint is written", self.browse_output)))
        train_form.addRow("More options", self.options_edit)
        train_layout = QVBoxLayout()
        train_layout.addLayout(train_form)
        train_layout.addLayout(_row(self.train_button, self.cancel_button))
        train_layout.addWidget(self.progress_bar)
        train_layout.addWidget(self.progress_label)
        train_box = QGroupBox("Train from image-level labels")
        train_box.setLayout(train_layout)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(model_box)
        layout.addWidget(train_box)
        layout.addWidget(self.status)
        layout.addStretch(1)
        for label in (self.summary_label, self.progress_label, self.status):
            label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        # A plain set, not the widget: it still stops the job once the widget's C++ side is gone.
        jobs = self._jobs = set()
        self.destroyed.connect(lambda *_: [job.quit() for job in list(jobs)])

        self._show_info(None)
        self._suggest_output()
        self.load_project()

    # ------------------------------------------------------------------ errors
    def report(self, error: Exception, context: str = "") -> None:
        """Show an error in the status line and as a notification."""
        text = str(error) if isinstance(error, WslAlError) else f"{type(error).__name__}: {error}"
        text = f"{context}{text}"
        self.status.setText(text)
        show_error(text)

    # ------------------------------------------------------------------ model in use
    def project_path(self) -> Path:
        """The project folder named in the dock."""
        text = self.project_edit.text().strip()
        return Path(text).expanduser() if text else default_project_path()

    def model_choice(self) -> str | Path:
        """``"default"`` or the chosen checkpoint's path (as the Inference dock takes it)."""
        if self.model_info is None or self.model_info.choice == DEFAULT_MODEL:
            return DEFAULT_MODEL
        return self.model_info.path

    @reported
    def set_project(self, project: Project | str | Path) -> None:
        """Follow another project (a slot for the Project dock's ``project_changed``)."""
        path = project.path if isinstance(project, Project) else Path(project)
        if path.expanduser() != self.project_path():
            self.project_edit.setText(str(path))
            self.load_project()

    @reported
    def load_project(self) -> None:
        """Show the model stored in the project (the shipped default when there is none)."""
        self._inspect(stored_model(self.project_path()), store=False)
        self._suggest_output()

    @reported
    def _source_chosen(self, default_checked: bool) -> None:
        self.file_edit.setEnabled(not default_checked)
        if default_checked:
            self.choose_default()
        elif self.file_edit.text().strip():
            self.choose_file(self.file_edit.text())
        else:
            self.status.setText("Browse for a checkpoint file (.pt), or type its path and Enter.")

    @reported
    def choose_default(self) -> None:
        """Use the shipped default model."""
        self._inspect(DEFAULT_MODEL, store=True)

    @reported
    def choose_file(self, path: str | Path) -> None:
        """Use the checkpoint file ``path``."""
        text = str(path).strip()
        if not text:
            raise WslAlError("no checkpoint file", hint="browse for a .pt file")
        self._inspect(Path(text).expanduser(), store=True)

    def _inspect(self, choice: str | Path, store: bool) -> None:
        """Read a checkpoint in a worker, then show it (and make it the model when ``store``)."""
        self._request += 1
        request = self._request
        self.status.setText(f"Reading {Path(str(choice)).name}…")
        worker = create_worker(describe_checkpoint, choice, _start_thread=False,
                               _ignore_errors=True)
        worker.returned.connect(lambda info: self._inspected(info, request, store))
        worker.errored.connect(lambda error: self._inspect_failed(error, request))
        worker.finished.connect(lambda: self._inspectors.discard(worker))
        self._inspectors.add(worker)
        worker.start()

    @reported
    def _inspected(self, info: ModelInfo, request: int, store: bool) -> None:
        if request != self._request:
            return  # a later choice replaced this one
        self._show_info(info)
        if not store:
            self.status.setText(f"Model in use: {info.name}.")
            return
        self.use_model(info)

    @reported
    def _inspect_failed(self, error: Exception, request: int) -> None:
        if request != self._request:
            return
        if self.model_info is not None:
            self._show_info(self.model_info)  # the source buttons show the model still in use
        self.report(error)

    def use_model(self, info: ModelInfo) -> None:
        """Make ``info`` the model: stored in the project, given to the open Inference docks,
        announced by :attr:`model_changed`."""
        self._show_info(info)
        for widget in self._inference_widgets():
            widget.model_edit.setText(info.choice)
        try:
            project = store_model(self.project_path(), info)
        except (WslAlError, OSError) as error:
            text = (f"{error} The model is used for inference; active-learning rounds keep "
                    f"the project's model.")
            self.status.setText(text)
            show_warning(text)
        else:
            self.project_edit.setText(str(project.path))
            self.status.setText(f"Model in use: {info.name} (stored in {project.path.name}).")
        self.model_changed.emit(info.path)

    def _inference_widgets(self) -> list[InferenceWidget]:
        docks = getattr(self.viewer.window, "dock_widgets", None) or {}
        return [widget for widget in docks.values() if isinstance(widget, InferenceWidget)]

    def _show_info(self, info: ModelInfo | None) -> None:
        self.model_info = info
        if info is None:
            for label in (self.name_label, self.arch_label, self.classes_label, self.mpp_label,
                          self.summary_label):
                label.setText("–")
            return
        is_default = info.choice == DEFAULT_MODEL
        for radio, checked in ((self.default_radio, is_default), (self.file_radio, not is_default)):
            radio.blockSignals(True)
            radio.setChecked(checked)
            radio.blockSignals(False)
        self.file_edit.setEnabled(not is_default)
        if not is_default:
            self.file_edit.setText(str(info.path))
        self.name_label.setText(f"<b>{html.escape(info.name)}</b>")
        self.name_label.setToolTip(str(info.path))
        self.arch_label.setText(info.architecture)
        self.classes_label.setText(", ".join(info.classes))
        self.mpp_label.setText("unknown" if info.mpp is None else f"{info.mpp:g} µm/px")
        self.summary_label.setText(info.summary)
        self.summary_label.setToolTip(info.details)

    # ------------------------------------------------------------------ browsing
    @reported
    def browse_checkpoint(self) -> None:
        """Ask for a checkpoint file and use it."""
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", "", "Checkpoints (*.pt)")
        if path:
            self.choose_file(path)

    @reported
    def browse_project(self) -> None:
        """Ask for the project folder."""
        path = QFileDialog.getExistingDirectory(self, "Project folder (study.wslal)")
        if path:
            self.project_edit.setText(path)
            self.load_project()

    @reported
    def browse_folder(self) -> None:
        """Ask for the folder of labelled patches."""
        path = QFileDialog.getExistingDirectory(self, "Folder of patches with image-level labels")
        if path:
            self.folder_edit.setText(path)

    @reported
    def browse_output(self) -> None:
        """Ask where the trained checkpoint goes."""
        path, _ = QFileDialog.getSaveFileName(self, "Trained checkpoint", self.output_edit.text(),
                                              "Checkpoints (*.pt)")
        if path:
            self.output_edit.setText(path if path.endswith(".pt") else f"{path}.pt")
            self._output_edited = True

    def _output_was_edited(self) -> None:
        self._output_edited = bool(self.output_edit.text().strip())

    def _suggest_output(self) -> None:
        """``<project>/checkpoints/wsl_<folder>_<arch>.pt`` until the user types a path."""
        if self._output_edited:
            return
        folder = Path(self.folder_edit.text().strip()).name or "patches"
        name = f"wsl_{folder}_{self.arch_combo.currentText()}.pt"
        self.output_edit.setText(str(self.project_path() / "checkpoints" / name))

    # ------------------------------------------------------------------ training
    @reported
    def train(self) -> None:
        """Train on the patch folder in a worker; the new checkpoint is then the model."""
        if self.worker is not None:
            return
        folder = self.folder_edit.text().strip()
        if not folder:
            raise WslAlError("no patch folder", hint=f"choose a folder in {LABELS_HINT}")
        out = self.output_edit.text().strip()
        if not out:
            raise WslAlError("no output file", hint="choose where the checkpoint is written")
        if Path(out).expanduser().is_dir():
            raise WslAlError("the output is a folder", path=out,
                             hint="give a file name ending in .pt")
        try:
            args = train_options(
                Path(folder).expanduser(), self.arch_combo.currentText(), self.epochs_spin.value(),
                self.lr_spin.value(), self.crop_spin.value(), Path(out).expanduser(),
                self.options_edit.text() + (" --reinhard" if self.reinhard_check.isChecked()
                                            else " --no-reinhard"),
            )
        except ValueError as error:
            raise WslAlError(
                str(error), hint="fix the options (napari-wsl-al train-wsl --help)"
            ) from None
        self._training_folder = Path(folder).expanduser()
        self._val_error = None
        self._started = time.monotonic()
        set_progress(self.progress_bar, 0, 0)
        self.progress_label.setText("Starting…")
        self.status.setText("")
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker = create_worker(train_from_folder, args, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_trained)
        worker.errored.connect(self._on_train_error)
        worker.aborted.connect(self._on_cancelled)
        worker.finished.connect(self._on_finished)
        worker.finished.connect(lambda: self._jobs.discard(worker))
        self.worker = worker
        self._jobs.add(worker)
        worker.start()

    @reported
    def cancel(self) -> None:
        """Stop training after the current batch (nothing is saved)."""
        if self.worker is not None:
            self.worker.quit()
            self.progress_label.setText("Cancelling after this batch…")
            self.cancel_button.setEnabled(False)

    @reported
    def _on_progress(self, progress: Progress) -> None:
        metrics = progress.metrics
        if "batch" in metrics:
            set_progress(self.progress_bar, progress.step, progress.total or 0)
            epochs = (progress.total or 0) // max(1, metrics["batches"])
            text = (f"Epoch <b>{metrics['epoch'] + 1}</b> of {epochs} · batch {metrics['batch']} "
                    f"of {metrics['batches']} · loss <b>{metrics['train_loss']:.4f}</b>")
        elif "epoch" in metrics:
            if metrics.get("val_error") is not None:
                self._val_error = float(metrics["val_error"])
            text = (f"Epoch <b>{metrics['epoch'] + 1}</b> of {progress.total} done · loss "
                    f"<b>{metrics['train_loss']:.4f}</b>")
        else:
            if progress.total is None:
                set_progress(self.progress_bar, 0, 0)
            self.progress_label.setText(progress.message[:1].upper() + progress.message[1:] + "…")
            return
        if self._val_error is not None:
            text += f" · validation error <b>{_percent(self._val_error)}</b>"
        text += f" · {time.monotonic() - self._started:.0f} s"
        self.progress_label.setText(text)

    @reported
    def _on_trained(self, path: Path) -> None:
        set_progress(self.progress_bar, 1, 1)
        self.progress_label.setText(
            f"Done in {time.monotonic() - self._started:.0f} s: {Path(path).name}"
            + (f" · validation error {_percent(self._val_error)}"
               if self._val_error is not None else "")
        )
        show_info(f"Trained model written to {path}")
        self._inspect(Path(path), store=True)

    @reported
    def _on_train_error(self, error: Exception) -> None:
        self.progress_label.setText("Training failed.")
        self.report(error, context=f"Training on {self._training_folder} failed: ")

    @reported
    def _on_cancelled(self) -> None:
        name = self.model_info.name if self.model_info is not None else DEFAULT_MODEL
        self.progress_label.setText(
            f"Cancelled: no checkpoint written; the model in use is still {name}."
        )

    @reported
    def _on_finished(self) -> None:
        self.worker = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)

    # ------------------------------------------------------------------ life cycle
    def closeEvent(self, event) -> None:
        """Stop training when the dock closes."""
        for job in list(self._jobs):
            job.quit()
        super().closeEvent(event)
