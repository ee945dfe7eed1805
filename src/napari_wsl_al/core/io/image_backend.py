"""Plain images (png, jpg, bmp, small tif) and folders of patches shown as one mosaic slide.

Single images are small: they are decoded once into memory (:class:`ImageReader`). A folder of
patches (:class:`PatchFolderReader`) is laid out as a grid, one cell per patch, and read lazily:
a patch is decoded only when a region touching it is read, and the last few are cached.

Modes are converted to RGB uint8 by the rules of :mod:`napari_wsl_al.core.io._convert`:
palette images via RGBA, CMYK/YCbCr via RGB, 16-bit grey by the uint16 range, 32-bit integer
grey (how some 16-bit PNGs decode) by the uint16 range when its values fit in it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from ..errors import CorruptSlideError, UnsupportedFormatError
from ._convert import to_rgb_uint8
from .base import SlideReader
from .memory_backend import ArrayReader

#: Extensions of the single images and patches this module reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_PIL_ERRORS = (
    OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
)  # fmt: skip
_TIFF_ERRORS = (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, RuntimeError)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Pixels of a PIL image as a numpy array whose dtype keeps the file's depth."""
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif image.mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if image.mode == "I" and array.size and 0 <= array.min() and array.max() <= 65535:
        array = array.astype(np.uint16)
    if image.mode.startswith("I;16"):
        array = array.astype(np.uint16)
    return array


def read_image_file(path: Path, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Decode a whole image file to ``(H, W, 3)`` uint8 RGB.

    Raises
    ------
    CorruptSlideError
        The file is truncated or not the image its extension says.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                array = series.asarray()
                axes = series.axes
            for axis in reversed(range(len(axes))):
                if axes[axis] not in "YXSC":
                    array = np.take(array, 0, axis=axis)
            axes = "".join(a for a in axes if a in "YXSC")
            if len(axes) == 3 and axes[0] in "SC":
                array = np.moveaxis(array, 0, -1)
        else:
            with Image.open(path) as image:
                image.load()
                array = _pil_to_array(image)
    except (*_PIL_ERRORS, *_TIFF_ERRORS) as error:
        raise CorruptSlideError(
            f"the image cannot be decoded ({error})",
            path=path,
            hint="the file may be truncated, or not the format its extension says",
        ) from error
    try:
        return to_rgb_uint8(array, value_range)
    except ValueError as error:
        raise UnsupportedFormatError(
            f"an image of shape {array.shape} is not 2-D grey or colour",
            path=path,
            hint="open volumes or time series with another napari reader",
        ) from error


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header only."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return int(page.imagewidth), int(page.imagelength)
    with Image.open(path) as image:
        return image.size


class ImageReader(ArrayReader):
    """A single small image (png, jpg, bmp, tif), decoded once into memory.

    Parameters
    ----------
    path : str or Path
        The image file.
    mpp : float, optional
        Microns per pixel, when known (plain images rarely say).
    value_range : (float, float), optional
        Intensities mapped to 0..255 for non-uint8 images (default: the dtype's range).
    """

    def __init__(
        self,
        path: str | Path,
        mpp: float | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        path = Path(path)
        pixels = read_image_file(path, value_range)
        super().__init__(pixels, mpp=mpp, name=path.stem, tile=512)
        self.path = path
        self.format = f"image:{path.suffix.lower().lstrip('.')}"


def list_patch_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


class PatchFolderReader(SlideReader):
    """A folder of patches shown as one mosaic: a grid of equal cells, row-major by name.

    Cells are the size of the largest patch; each patch sits in the top-left corner of its cell,
    the rest is white. There are ``ceil(sqrt(n))`` columns.

    Parameters
    ----------
    path : str or Path
        The folder.
    mpp : float, optional
        Microns per pixel of the patches, when known.
    cache_size : int
        How many decoded patches to keep.

    Attributes
    ----------
    patch_names : list of str
        File names of the patches, in mosaic order.
    patch_boxes : list of (int, int, int, int)
        ``(x, y, width, height)`` of each patch in the mosaic, level-0 pixels.
    skipped : list of str
        Files whose header could not be read (left out of the mosaic).
    """

    def __init__(self, path: str | Path, mpp: float | None = None, cache_size: int = 16):
        super().__init__()
        self.path = Path(path)
        self.name = self.path.name
        self.format = "patch-folder"
        files = list_patch_files(self.path)
        self._files: list[Path] = []
        sizes: list[tuple[int, int]] = []
        self.skipped: list[str] = []
        for file in files:
            try:
                sizes.append(image_size(file))
            except (*_PIL_ERRORS, *_TIFF_ERRORS):
                self.skipped.append(file.name)
                continue
            self._files.append(file)
        if not self._files:
            raise UnsupportedFormatError(
                "the folder holds no readable image",
                path=self.path,
                hint=f"a patch folder holds {', '.join(IMAGE_EXTENSIONS)} files",
            )
        n = len(self._files)
        self.columns = math.ceil(math.sqrt(n))
        self.rows = math.ceil(n / self.columns)
        self.cell_size = (max(w for w, _ in sizes), max(h for _, h in sizes))
        cw, ch = self.cell_size
        self.patch_names = [f.name for f in self._files]
        self.patch_boxes = [
            ((i % self.columns) * cw, (i // self.columns) * ch, w, h)
            for i, (w, h) in enumerate(sizes)
        ]
        if mpp is not None:
            self.set_mpp(mpp)
        self.properties = {
            "patches.count": str(n),
            "patches.columns": str(self.columns),
            "patches.cell_size": f"{cw}x{ch}",
            "patches.skipped": ", ".join(self.skipped),
        }
        self.native_dimensions = [(self.columns * cw, self.rows * ch)]
        self.native_downsamples = [1.0]
        self.native_tile_sizes = [(ch, cw)]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._cache_lock = threading.Lock()
        self._finish_init()

    def patch_at(self, x: float, y: float) -> int | None:
        """Index of the patch under level-0 point ``(x, y)``, or None (padding, outside)."""
        cw, ch = self.cell_size
        if x < 0 or y < 0:
            return None
        col, row = int(x // cw), int(y // ch)
        index = row * self.columns + col
        if col >= self.columns or index >= len(self.patch_boxes):
            return None
        bx, by, bw, bh = self.patch_boxes[index]
        return index if x < bx + bw and y < by + bh else None

    def read_patch(self, index: int) -> np.ndarray:
        """Patch ``index`` as ``(h, w, 3)`` uint8 RGB (cached)."""
        with self._cache_lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        pixels = read_image_file(self._files[index])
        expected = self.patch_boxes[index][2:]
        if (pixels.shape[1], pixels.shape[0]) != expected:
            raise CorruptSlideError(
                f"the patch is {pixels.shape[1]}x{pixels.shape[0]}, its header said "
                f"{expected[0]}x{expected[1]}",
                path=self._files[index],
                hint="the file changed since the folder was opened; reopen the folder",
            )
        with self._cache_lock:
            self._cache[index] = pixels
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return pixels

    def _read_native(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, np.uint8)
        cw, ch = self.cell_size
        for row in range(y // ch, min(self.rows, (y + height - 1) // ch + 1)):
            for col in range(x // cw, min(self.columns, (x + width - 1) // cw + 1)):
                index = row * self.columns + col
                if index >= len(self.patch_boxes):
                    continue
                bx, by, bw, bh = self.patch_boxes[index]
                x0, y0 = max(x, bx), max(y, by)
                x1, y1 = min(x + width, bx + bw), min(y + height, by + bh)
                if x1 <= x0 or y1 <= y0:
                    continue
                patch = self.read_patch(index)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = patch[y0 - by : y1 - by, x0 - bx : x1 - bx]
        return out


__all__ = [
    "IMAGE_EXTENSIONS", "ImageReader", "PatchFolderReader", "image_size",
    "list_patch_files", "read_image_file",
]  # fmt: skip
