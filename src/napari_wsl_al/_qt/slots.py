"""Qt slot helpers shared by the docks."""

from __future__ import annotations

import functools


def reported(method):
    """Run a slot, turning any exception into the widget's ``report(error)``: PyQt6 aborts
    napari on an exception raised in a slot."""

    @functools.wraps(method)
    def slot(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 (every error must become a notification)
            self.report(error)
            return None

    return slot


__all__ = ["reported"]
