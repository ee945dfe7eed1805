"""A heartbeat on napari's UI thread, shared by the GUI benchmarks: a QTimer fires every few
milliseconds and the time between its calls is recorded; a gap of g ms means the event loop
could not run for about g minus the interval."""

from __future__ import annotations

import time


class Heartbeat:
    """Runs Qt's event loop (it waits for events, as in napari) and records the gaps between
    the calls of a QTimer firing every ``interval_ms``."""

    def __init__(self, interval_ms: int = 10):
        self.interval_ms = interval_ms

    def run(self, until, action=None) -> list[tuple[float, float]]:
        """Start ``action`` from the event loop, pump events until ``until()``; every gap as
        ``(seconds since start, gap seconds)``."""
        from qtpy.QtCore import QEventLoop, QTimer
        from qtpy.QtWidgets import QApplication

        start = time.perf_counter()
        state = {"beat": start}
        gaps: list[tuple[float, float]] = []

        def beat():
            now = time.perf_counter()
            gaps.append((now - start, now - state["beat"]))
            state["beat"] = now

        if action is None and until():
            return gaps
        timer = QTimer()
        timer.setInterval(self.interval_ms)
        timer.timeout.connect(beat)
        timer.start()
        loop = QEventLoop()
        checker = QTimer()
        checker.setInterval(10)
        checker.timeout.connect(lambda: loop.quit() if until() else None)
        checker.start()
        if action is not None:
            QTimer.singleShot(30, action)
        loop.exec()
        checker.stop()
        timer.stop()
        beat()
        QApplication.instance().processEvents()
        return gaps


def for_seconds(seconds: float):
    """A condition that holds ``seconds`` after it was made."""
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= end
