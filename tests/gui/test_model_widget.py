"""The Model dock: the shipped default, a checkpoint file, WSL training from a patch folder, Cancel, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from napari_wsl_al._qt.infer_widget import InferenceWidget
from napari_wsl_al._qt.model_widget import ModelWidget, stored_model
from napari_wsl_al.core.data.synthetic import write_synthetic_patch_set
from napari_wsl_al.core.models.checkpoint import default_checkpoint_path, save_checkpoint
from napari_wsl_al.core.models.factory import ModelConfig, build_model
from napari_wsl_al.core.project import Project

pytestmark = pytest.mark.gui

#: Where the test leaves its screenshot: ``docs/model_widget.png`` only when asked
#: (``NAPARI_WSL_AL_SCREENSHOTS=1``), so that a test run never changes tracked files.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "model_widget.png"

#: A tiny, fast model and run for the tests (the dock passes them to train-wsl).
TINY = "--width 0.0625 --batch-size 2 --device cpu --threads 1"


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> Path:
    """Eight 64 x 64 synthetic patches in the GlaS layout (benign and malignant, 4 patients)."""
    return write_synthetic_patch_set(tmp_path_factory.mktemp("data") / "glas_synth",
                                     n_per_class=4, shape=(64, 64), seed=1)


@pytest.fixture
def errors(monkeypatch):
    """The error notifications shown by the dock."""
    shown: list[str] = []
    monkeypatch.setattr("napari_wsl_al._qt.model_widget.show_error", shown.append)
    return shown


def open_dock(viewer, qtbot) -> ModelWidget:
    widget = ModelWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Model", area="right")
    qtbot.waitUntil(lambda: widget.model_info is not None, timeout=20000)
    return widget


def fill_training(widget, folder, out, epochs=2, options=TINY) -> None:
    widget.folder_edit.setText(str(folder))
    widget.epochs_spin.setValue(epochs)
    widget.lr_spin.setValue(0.01)
    widget.crop_spin.setValue(64)
    widget.output_edit.setText(str(out))
    widget.options_edit.setText(options)


def tiny_checkpoint(path, classes=("benign", "malignant")) -> Path:
    config = ModelConfig(arch="cam-avg", classes=classes, width=0.0625, mpp=0.5)
    extra = {"data": {"path": "/data/tiny_set", "n_images": 12}, "best_epoch": 2,
             "epochs_run": 5, "stopped": "epochs", "val_metrics": {"error": 0.25, "n_images": 4}}
    return save_checkpoint(path, build_model(config), config, extra=extra)


def test_train_from_the_dock_and_use_the_new_model(make_napari_viewer, qtbot, patches, tmp_path,
                                                   errors):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 980)
    viewer.open(str(patches / "images"), plugin="napari-wsl-al")
    inference = InferenceWidget(viewer)
    viewer.window.add_dock_widget(inference, name="Inference", area="right")
    widget = open_dock(viewer, qtbot)
    assert widget.model_info.name == "default" and widget.default_radio.isChecked()
    assert widget.model_info.path == default_checkpoint_path()
    assert widget.model_info.classes == ("benign", "malignant")
    assert widget.mpp_label.text() == "2.48 µm/px"
    summary = widget.summary_label.text()
    assert "Trained on every image: no validation figures." in summary
    assert "Best epoch 60 of 60" in summary and "Colour-normalises" in summary
    assert "Its foreground is the malignant class's map on every image." in summary
    assert not (tmp_path / "study.wslal").exists()  # showing the default writes nothing

    changed = []
    widget.model_changed.connect(changed.append)
    out = tmp_path / "models" / "tiny.pt"
    # the dock starts from train-wsl's defaults: the shipped model's recipe
    assert widget.arch_combo.currentText() == "wildcat" and widget.reinhard_check.isChecked()
    widget.arch_combo.setCurrentText("maxmin")  # its foreground is calibrated after training
    fill_training(widget, patches, out)
    widget.train()
    assert widget.worker is not None and not widget.train_button.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert not errors, errors
    assert out.is_file()
    qtbot.waitUntil(lambda: len(changed) == 1, timeout=20000)
    assert changed == [out] and widget.model_choice() == out
    info = widget.model_info
    assert info.path == out and info.architecture == "maxmin, ResNet-18 x0.0625"
    assert info.classes == ("benign", "malignant") and info.mpp == pytest.approx(0.62)
    assert "Best epoch" in info.summary and "glas_synth" in info.summary
    assert "train-wsl" in info.details and "--width 0.0625" in info.details
    from napari_wsl_al.core.models.checkpoint import load_checkpoint

    trained, trained_config, trained_extra = load_checkpoint(out)
    low, high = trained_config.head["fg_range"]  # the foreground calibrated, as train-wsl does
    assert high > low and trained.fg_range == (low, high)
    assert trained_extra["fg_range"] == [low, high]
    assert "--reinhard" in info.details and "Colour-normalises every image" in info.summary
    assert "foreground is the" not in info.summary  # Max-Min: its own mask
    assert len(trained_config.colour_target) == 6 and trained.colour_target is not None
    assert widget.file_radio.isChecked() and widget.file_edit.text() == str(out)
    assert "Done in" in widget.progress_label.text()
    assert "validation error" in widget.progress_label.text()
    # the choice persists in the project, and the open Inference dock follows it
    assert stored_model(tmp_path / "study.wslal") == str(out)
    assert Project.open(tmp_path / "study.wslal").class_names == ("benign", "malignant")
    assert inference.model_edit.text() == str(out)
    # a new dock on the same project shows the stored model
    again = ModelWidget(viewer)
    qtbot.waitUntil(lambda: again.model_info is not None, timeout=20000)
    assert again.model_info.path == out and again.file_radio.isChecked()
    again.close()
    again.deleteLater()

    viewer.window.remove_dock_widget(inference)  # the screenshot shows the Model dock alone
    qtbot.wait(300)
    target = SCREENSHOT if os.environ.get("NAPARI_WSL_AL_SCREENSHOTS") else tmp_path / "model.png"
    viewer.screenshot(str(target), canvas_only=False)
    assert target.stat().st_size > 0

    widget.default_radio.click()  # back to the shipped model
    qtbot.waitUntil(lambda: len(changed) == 2, timeout=20000)
    assert changed[-1] == default_checkpoint_path() and widget.model_choice() == "default"
    assert stored_model(tmp_path / "study.wslal") == "default"


def test_cancel_stops_between_batches(make_napari_viewer, qtbot, patches, tmp_path, errors):
    viewer = make_napari_viewer()
    widget = open_dock(viewer, qtbot)
    out = tmp_path / "cancelled.pt"
    fill_training(widget, patches, out, epochs=200)
    batches = []

    def cancel_after_two_batches(progress):
        if "batch" in progress.metrics:
            batches.append(progress)
            if len(batches) == 2:
                widget.cancel()

    widget.train()
    widget.worker.yielded.connect(cancel_after_two_batches)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert not errors, errors
    assert len(batches) < 20  # far from 200 epochs of 3 batches
    assert not out.exists()
    assert "Cancelled" in widget.progress_label.text() and "still default" in widget.progress_label.text()
    assert widget.model_info.name == "default"
    assert widget.train_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.progress_bar.maximum() > 0
    # the dock is usable again: a short run ends normally
    fill_training(widget, patches, out, epochs=1)
    widget.train()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    qtbot.waitUntil(lambda: widget.model_info.path == out, timeout=20000)
    assert not errors, errors


def test_choose_a_checkpoint_file(make_napari_viewer, qtbot, tmp_path, errors, monkeypatch):
    warnings = []
    monkeypatch.setattr("napari_wsl_al._qt.model_widget.show_warning", warnings.append)
    viewer = make_napari_viewer()
    widget = open_dock(viewer, qtbot)
    checkpoint = tiny_checkpoint(tmp_path / "files" / "tiny.pt")
    with qtbot.waitSignal(widget.model_changed, timeout=20000) as signal:
        widget.choose_file(checkpoint)
    assert signal.args == [checkpoint]
    assert widget.name_label.text() == "<b>tiny.pt</b>"
    assert widget.arch_label.text() == "cam-avg, ResNet-18 x0.0625"
    assert widget.classes_label.text() == "benign, malignant"
    assert widget.mpp_label.text() == "0.5 µm/px"
    assert widget.summary_label.text() == (
        "Trained on 12 images of tiny_set. Best epoch 3 of 5. "
        "Validation error 25.0% (4 images)."
    )
    assert stored_model(tmp_path / "study.wslal") == str(checkpoint)

    # a project of other classes keeps its model; the choice still goes to inference
    other = Project.create(tmp_path / "other", classes=["tumour", "normal"])
    widget.set_project(other)  # as the Project dock's project_changed would
    assert widget.project_edit.text() == str(other.path)
    qtbot.waitUntil(lambda: widget.model_info.name == "default", timeout=20000)
    with qtbot.waitSignal(widget.model_changed, timeout=20000):
        widget.choose_file(checkpoint)
    assert "tumour" in warnings[-1] and "keep the project's model" in warnings[-1]
    assert stored_model(other.path) == "default"

    # a damaged file and a missing file: notifications, the model stays
    broken = tmp_path / "files" / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    widget.choose_file(broken)
    qtbot.waitUntil(lambda: len(errors) == 1, timeout=20000)
    assert str(broken) in errors[-1] and "not a readable checkpoint" in errors[-1]
    widget.choose_file(tmp_path / "absent.pt")
    qtbot.waitUntil(lambda: len(errors) == 2, timeout=20000)
    assert "not found" in errors[-1]
    assert widget.model_info.path == checkpoint
    assert widget.file_radio.isChecked() and widget.file_edit.text() == str(checkpoint)
    widget.choose_file("")
    assert "no checkpoint file" in errors[-1]


def test_bad_folders_become_notifications(make_napari_viewer, qtbot, tmp_path, errors,
                                          patches):
    viewer = make_napari_viewer()
    widget = open_dock(viewer, qtbot)

    def train_on(folder, options=TINY):
        fill_training(widget, folder, tmp_path / "out.pt", epochs=1, options=options)
        count = len(errors)
        widget.train()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
        assert len(errors) == count + 1, errors
        return errors[-1]

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "a.png").write_bytes(b"")
    message = train_on(unlabelled)
    assert str(unlabelled) in message and "no class sub-folders" in message
    assert "sub-folder named after the class" in message

    one_class = write_synthetic_patch_set(tmp_path / "one_class", n_per_class=1, shape=(32, 32))
    grade = one_class / "grade.csv"
    grade.write_text(grade.read_text().replace("malignant", "benign"))
    message = train_on(one_class)
    assert str(one_class) in message and "1 class (benign)" in message
    assert "at least two classes" in message

    folders = tmp_path / "classes"
    for name in ("a", "b"):
        (folders / name).mkdir(parents=True)
        (folders / name / "x.png").write_bytes(b"garbage")
        (folders / name / "y.png").write_bytes(b"garbage")
    message = train_on(folders)
    assert f"Training on {folders} failed" in message and "cannot read the image" in message

    message = train_on(folders, options="--no-such-option")
    assert "unrecognized arguments: --no-such-option" in message
    message = train_on(patches, options=TINY + " --fg-class tumour")
    assert str(patches) in message
    assert "--fg-class 'tumour' is not one of the data set's classes (benign, malignant)" in message
    widget.folder_edit.setText("")
    widget.train()
    assert "no patch folder" in errors[-1]
    assert not (tmp_path / "out.pt").exists() and widget.model_info.name == "default"
    assert widget.train_button.isEnabled()
