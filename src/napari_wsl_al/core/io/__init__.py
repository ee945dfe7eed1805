"""Slide access: one protocol (:class:`SlideReader`) over OpenSlide, tifffile, zarr, images and memory.

:func:`open_slide` picks the backend for a path:

- a folder: a zarr store (``*.zarr``, or holding ``zarr.json``/``.zgroup``/``.zarray``) is read
  by :class:`ZarrReader`; a folder of DICOM files by OpenSlide; a folder of images by
  :class:`PatchFolderReader`;
- a file: whole-slide formats that OpenSlide recognises by content (Aperio, Hamamatsu, Mirax,
  Leica, Ventana, Philips, DICOM ...) go to :class:`OpenSlideReader`; other TIFFs (OME-TIFF,
  generic pyramidal or plain TIFF) to :class:`TiffReader`, which knows sub-IFD pyramids and
  OME metadata (OpenSlide is the fallback); png/jpg/bmp to :class:`ImageReader`.
"""

from __future__ import annotations

import os
from pathlib import Path

import openslide

from ..errors import (
    CorruptSlideError,
    SlideError,
    SlideNotFoundError,
    SlidePermissionError,
    UnsupportedFormatError,
)
from .base import SlideReader
from .image_backend import IMAGE_EXTENSIONS, ImageReader, PatchFolderReader, list_patch_files
from .memory_backend import ArrayReader
from .openslide_backend import OPENSLIDE_EXTENSIONS, OpenSlideReader
from .tiff_backend import TiffReader
from .zarr_backend import ZarrReader, is_zarr_path

#: What :func:`open_slide` reads, for messages and file dialogs.
SUPPORTED_FORMATS = (
    "whole-slide images (.svs .ndpi .mrxs .scn .bif .vms .vmu .svslide .dcm, tiled .tif)",
    "OME-TIFF and pyramidal or plain TIFF (.ome.tif .tif .tiff)",
    "zarr v2/v3 arrays and OME-Zarr multiscale groups (.zarr folders)",
    "images (.png .jpg .jpeg .bmp)",
    "folders of image patches",
)

#: Every file extension :func:`open_slide` accepts (content decides the backend).
SLIDE_EXTENSIONS = tuple(sorted(set(OPENSLIDE_EXTENSIONS) | set(IMAGE_EXTENSIONS)))

#: Backend names accepted by ``open_slide(..., backend=)``.
BACKENDS = {
    "openslide": OpenSlideReader,
    "tifffile": TiffReader,
    "zarr": ZarrReader,
    "image": ImageReader,
    "patches": PatchFolderReader,
}

#: Whole-slide extensions that only OpenSlide reads (a file it rejects is damaged).
VENDOR_EXTENSIONS = (".svs", ".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".vmu", ".svslide")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM")


def _supported_hint() -> str:
    return "supported: " + "; ".join(SUPPORTED_FORMATS)


def _head(path: Path, size: int = 132) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except PermissionError as error:
        raise SlidePermissionError(
            "the file cannot be read by this user",
            path=path,
            hint="check its permissions (chmod u+r) or copy it somewhere readable",
        ) from error
    except OSError as error:
        raise CorruptSlideError(
            f"the file cannot be read ({error})", path=path, hint="check the disk or copy it again"
        ) from error


def _is_tiff(head: bytes) -> bool:
    return head[:4] in _TIFF_MAGIC


def _is_dicom(head: bytes) -> bool:
    return head[128:132] == b"DICM"


def _is_image(head: bytes) -> bool:
    return any(head.startswith(magic) for magic in _IMAGE_MAGIC)


def _detect_openslide(path: Path) -> str | None:
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        return None


def _check_access(path: Path) -> None:
    if not path.exists():
        raise SlideNotFoundError(
            "no such file or folder",
            path=path,
            hint="check the path; it may have been moved or the drive unmounted",
        )
    mode = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, mode):
        raise SlidePermissionError(
            "this user may not read it",
            path=path,
            hint="check its permissions (chmod u+r) or copy it somewhere readable",
        )


def _open_directory(path: Path) -> SlideReader:
    if is_zarr_path(path):
        return ZarrReader(path)
    try:
        entries = [p for p in path.iterdir() if p.is_file()]
    except PermissionError as error:
        raise SlidePermissionError(
            "the folder cannot be listed", path=path, hint="check its permissions"
        ) from error
    dicoms = sorted(p for p in entries if p.suffix.lower() == ".dcm")
    if dicoms:
        return OpenSlideReader(dicoms[0])
    if list_patch_files(path):
        return PatchFolderReader(path)
    raise UnsupportedFormatError(
        "the folder is neither a zarr store nor a folder of images",
        path=path,
        hint=_supported_hint(),
    )


def _open_file(path: Path) -> SlideReader:
    if path.stat().st_size == 0:
        raise CorruptSlideError(
            "the file is empty", path=path, hint="the copy or download did not finish; copy it again"
        )
    head = _head(path)
    suffix = path.suffix.lower()
    vendor = _detect_openslide(path)
    if vendor is not None and vendor != "generic-tiff":
        return OpenSlideReader(path)
    if suffix in VENDOR_EXTENSIONS and not _is_dicom(head):
        # Intact files with these names are always recognised by OpenSlide.
        raise CorruptSlideError(
            f"OpenSlide does not recognise this {suffix} file",
            path=path,
            hint="it is probably truncated or damaged, or renamed; copy it again from the scanner",
        )
    if _is_tiff(head):
        try:
            return TiffReader(path)
        except CorruptSlideError:
            if vendor == "generic-tiff":
                return OpenSlideReader(path)
            raise
    if _is_image(head):
        return ImageReader(path)
    if _is_dicom(head):
        return OpenSlideReader(path)
    if suffix in SLIDE_EXTENSIONS:
        raise CorruptSlideError(
            f"the file is named {suffix} but its content is not a slide or image that can be read",
            path=path,
            hint="it may be damaged, truncated or renamed; copy it again. " + _supported_hint(),
        )
    raise UnsupportedFormatError("unknown file format", path=path, hint=_supported_hint())


def open_slide(path: str | os.PathLike, backend: str | None = None) -> SlideReader:
    """Open a slide, image, zarr store or patch folder with the backend that fits it.

    Parameters
    ----------
    path : str or PathLike
        A file or folder.
    backend : {"openslide", "tifffile", "zarr", "image", "patches"}, optional
        Force a backend instead of detecting one.

    Returns
    -------
    SlideReader

    Raises
    ------
    SlideNotFoundError
        The path does not exist.
    SlidePermissionError
        The path exists but cannot be read.
    CorruptSlideError
        The file is empty, truncated or damaged.
    UnsupportedFormatError
        No backend reads this kind of file.
    """
    path = Path(os.fspath(path)).expanduser()
    _check_access(path)
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        return BACKENDS[backend](path)
    if path.is_dir():
        return _open_directory(path)
    return _open_file(path)


def can_open(path: str | os.PathLike) -> bool:
    """Cheap check (names, a few header bytes; no decoding) that :func:`open_slide` may read ``path``.

    Never raises. A True answer does not guarantee that opening succeeds (the file may be
    damaged); a False answer means :func:`open_slide` would refuse it.
    """
    try:
        path = Path(os.fspath(path)).expanduser()
        if not path.exists() or not os.access(path, os.R_OK):
            return False
        if path.is_dir():
            if is_zarr_path(path):
                return True
            return any(
                p.is_file()
                and (p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix.lower() == ".dcm")
                and not p.name.startswith(".")
                for p in path.iterdir()
            )
        if not path.is_file() or path.stat().st_size == 0:
            return False
        with open(path, "rb") as file:
            head = file.read(132)
        return _is_tiff(head) or _is_image(head) or _is_dicom(head) or (
            path.suffix.lower() in OPENSLIDE_EXTENSIONS and _detect_openslide(path) is not None
        )
    except (OSError, ValueError, TypeError):
        return False


__all__ = [
    "ArrayReader", "BACKENDS", "ImageReader", "OpenSlideReader", "PatchFolderReader",
    "SLIDE_EXTENSIONS", "SUPPORTED_FORMATS", "SlideError", "SlideReader", "TiffReader",
    "ZarrReader", "can_open", "open_slide",
]  # fmt: skip
