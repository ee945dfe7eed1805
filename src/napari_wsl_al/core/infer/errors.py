"""Typed errors of slide inference: no tissue to process, unusable map stores, a full disk."""

from __future__ import annotations

from ..errors import WslAlError


class InferenceError(WslAlError):
    """Slide inference cannot run as asked."""


class NoTissueError(InferenceError):
    """The slide (or the chosen region) holds no tile with enough tissue."""


class MapStoreError(WslAlError):
    """A map store on disk is missing, damaged or cannot be written."""


class DiskFullError(MapStoreError):
    """The disk filled up while maps were written; what was finished before is intact."""
