"""napari reader contribution: slides, zarr pyramids, images and patch folders as multiscale layers.

napari-free: it returns LayerData tuples, which napari (or a test) turns into layers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .core.io import can_open, open_slide
from .core.io.base import SlideReader

logger = logging.getLogger(__name__)

#: Levels whose shorter side is below this many pixels are not given to napari.
MIN_LEVEL_SIZE = 16

LayerData = tuple[Any, dict[str, Any], str]


def _single_path(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Path | None:
    if isinstance(path, (str, os.PathLike)):
        return Path(os.fspath(path))
    if isinstance(path, (list, tuple)) and len(path) == 1:
        if isinstance(path[0], (str, os.PathLike)):
            return Path(os.fspath(path[0]))
    return None


def layer_data(reader: SlideReader) -> list[LayerData]:
    """The multiscale RGB image layer of a slide, as napari LayerData.

    Parameters
    ----------
    reader : SlideReader
        An open slide; it is kept alive in the layer's ``metadata["reader"]`` so widgets can
        re-read the slide at explicit resolutions.

    Returns
    -------
    list of LayerData
        One ``(levels, kwargs, "image")`` tuple; ``scale`` is in microns when the slide's
        resolution is known (``units`` is then ``"um"``), else in pixels.
    """
    # Numpy-like lazy levels: every napari slice is one backend read (no dask overhead).
    levels = [
        reader.level_view(level)
        for level in range(reader.level_count)
        if level == 0 or min(reader.level_dimensions[level]) >= MIN_LEVEL_SIZE
    ]
    kwargs: dict[str, Any] = {
        "name": reader.name,
        "rgb": True,
        "multiscale": True,
        "scale": reader.napari_scale(),
        # uint8 RGB: fixed limits, so napari does not compute them from the pixels.
        "contrast_limits": (0, 255),
        "metadata": {"slide": reader.metadata(), "reader": reader},
    }
    if reader.mpp is not None:
        kwargs["units"] = "um"
    return [(levels, kwargs, "image")]


def read_slide(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """Open ``path`` (or a list of one path) and return its layer data.

    Raises the typed errors of :func:`napari_wsl_al.core.io.open_slide`; napari shows them.
    """
    single = _single_path(path)
    if single is None:
        raise ValueError(f"expected one path, got {path!r}")
    return layer_data(open_slide(single))


def napari_get_reader(
    path: str | os.PathLike | Sequence[str | os.PathLike],
) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader function for ``path``, or None when this plugin cannot read it.

    Never raises: the slide is opened here (opening is lazy and cheap), and any failure,
    whatever its type, makes this return None so that napari can try other readers. The
    failure is logged at INFO level.

    Parameters
    ----------
    path : str, PathLike, or list of one of them
        What the user opened. Lists of several paths are left to other readers.

    Returns
    -------
    callable or None
        A function taking the same path and returning a list of LayerData.
    """
    try:
        single = _single_path(path)
        if single is None or not can_open(single):
            return None
        reader = open_slide(single)
    except Exception as error:  # noqa: BLE001 - napari's contract: never raise from here
        logger.info("napari-wsl-al cannot read %s: %s", path, error)
        return None

    opened = [reader]  # handed out once; later calls open the slide again

    def read(requested: Any) -> list[LayerData]:
        if opened and _single_path(requested) == single:
            return layer_data(opened.pop())
        return read_slide(requested)

    return read
