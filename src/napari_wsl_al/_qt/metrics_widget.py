"""The Metrics dock: per-round curves of a project (loss, Dice/mIoU, labels per class), PNG and CSV export."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.al import history
from ..core.al.labels import LabelStore
from ..core.al.rounds import region_classes
from ..core.errors import WslAlError
from ..core.project import PROJECT_FILE, Project
from .infer_widget import default_project_path
from .slots import reported


class MetricsWidget(QWidget):
    """Curves of the project's finished rounds; reads ``labels.sqlite``, never writes it.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (kept for napari's widget protocol; the dock draws in its own canvas).
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.rows: list[dict] = []
        self.project_edit = QLineEdit(str(default_project_path()))
        self.project_edit.setToolTip("The project folder (study.wslal) whose rounds are shown")
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        self.png_button = QPushButton("Export PNG...")
        self.png_button.clicked.connect(self._ask_png)
        self.csv_button = QPushButton("Export CSV...")
        self.csv_button.clicked.connect(self._ask_csv)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.figure = Figure(figsize=(7, 3), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        top = QHBoxLayout()
        top.addWidget(QLabel("Project"))
        top.addWidget(self.project_edit)
        top.addWidget(refresh)
        buttons = QHBoxLayout()
        buttons.addWidget(self.png_button)
        buttons.addWidget(self.csv_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)
        layout.addLayout(buttons)
        self.refresh()

    def report(self, error: Exception) -> None:
        """Show an error as a notification (what went wrong and what to do)."""
        if isinstance(error, WslAlError):
            show_error(str(error))
        else:
            show_error(f"Metrics: {type(error).__name__}: {error}")

    @reported
    def refresh(self, *_args) -> None:
        """Read the round history again and redraw."""
        path = Path(self.project_edit.text()).expanduser()
        if not (path / PROJECT_FILE).exists():
            self.rows = []
            self.status.setText(f"No project at {path} yet.")
        else:
            project = Project.open(path)
            with LabelStore.for_project(project.path) as store:
                self.rows = history.round_table(store, region_classes(project))
            last = self.rows[-1] if self.rows else None
            self.status.setText(
                f"{len(self.rows)} finished rounds; last: round {last['round']}, "
                f"{last['labels']} labelled regions, {last['clicks']} clicks"
                if last
                else "No finished round yet: label suggestions, then Train next round."
            )
        history.plot_rounds(self.rows, self.figure)
        self.canvas.draw_idle()

    @reported
    def export_png(self, path: str | Path) -> None:
        """Save the figure."""
        self.figure.savefig(str(path))
        show_info(f"Saved {path}")

    @reported
    def export_csv(self, path: str | Path) -> None:
        """Save the round table."""
        history.write_csv(path, self.rows)
        show_info(f"Saved {path}")

    @reported
    def _ask_png(self, *_args) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export the curves", "rounds.png", "PNG (*.png)"
        )
        if path:
            self.export_png(path)

    @reported
    def _ask_csv(self, *_args) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export the rounds", "rounds.csv", "CSV (*.csv)"
        )
        if path:
            self.export_csv(path)
