"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _default_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Write a file so that readers see the old content or the new one, never a part.

    Parameters
    ----------
    path : str or Path
        The file to (re)place; its folder must exist.
    write : callable
        Called with the open temporary file; writes the content.
    binary : bool
        Open the temporary file in binary mode.

    Raises
    ------
    OSError
        From the writes (a full disk, say); ``path`` is then untouched and the temporary
        file removed.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files: give the file the mode a plain open() would.
        os.chmod(temporary, _default_file_mode())
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
