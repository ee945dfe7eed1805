"""Redraw slide layers while their in-memory pyramid preview fills in a background thread."""

from __future__ import annotations

from qtpy.QtCore import QObject, QTimer, Signal

from .._reader import PyramidPreview

#: Least milliseconds between two redraws of a filling preview's layers.
REDRAW_INTERVAL_MS = 250


class PreviewRedraw(QObject):
    """Refreshes the layers showing a :class:`~napari_wsl_al._reader.PyramidPreview` as it fills.

    The preview's thread calls :meth:`notify`; the signal reaches the UI thread through Qt's
    queued connection, and the layers are refreshed at most every :data:`REDRAW_INTERVAL_MS`
    (reading from memory: a few milliseconds), once more when the fill ends.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers show the preview.
    preview : PyramidPreview
        The preview.
    """

    filled = Signal()

    def __init__(self, viewer, preview: PyramidPreview) -> None:
        super().__init__()
        self.viewer = viewer
        self.preview = preview
        self.redraws = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_INTERVAL_MS)
        self._timer.timeout.connect(self.redraw)
        self.filled.connect(self._schedule)
        self._finished = False
        viewer.layers.events.removed.connect(self._layer_removed)

    def notify(self) -> None:
        """Called from the fill thread: ask the UI thread for a redraw."""
        self.filled.emit()

    def _schedule(self) -> None:
        if not self._timer.isActive() and not self._finished:
            self._timer.start()

    def layers(self) -> list:
        """The viewer's layers that show the preview."""
        return [layer for layer in self.viewer.layers
                if layer.metadata.get("preview") is self.preview]

    def redraw(self) -> None:
        """Refresh the preview's layers (their data are read again, from memory)."""
        if self._finished:
            return
        for layer in self.layers():
            layer.refresh()
        self.redraws += 1
        if self.preview.done.is_set():
            self._finished = True
            self.viewer.layers.events.removed.disconnect(self._layer_removed)

    def _layer_removed(self, event=None) -> None:
        if not self.layers() and not self.preview.done.is_set():
            self.preview.stop()


def redraw_while_filling(preview: PyramidPreview, viewer=None) -> PreviewRedraw | None:
    """Show grey placeholders until ``preview`` fills and redraw its layers as it does.

    Parameters
    ----------
    preview : PyramidPreview
        A preview being filled.
    viewer : napari.Viewer, optional
        Default: napari's current viewer (the one opening the slide). Without a viewer,
        nothing is done and reads wait for the slide as without a preview.

    Returns
    -------
    PreviewRedraw or None
        The object redrawing the layers (kept alive by the preview's listener).
    """
    if viewer is None:
        import napari

        viewer = napari.current_viewer()
    if viewer is None or preview.done.is_set():
        return None
    redraw = PreviewRedraw(viewer, preview)
    preview.placeholders = True
    preview.add_listener(redraw.notify)
    if preview.done.is_set():  # finished between the check and the listener
        redraw.notify()
    return redraw
