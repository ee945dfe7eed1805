"""The tifffile backend: OME-TIFF, pyramidal TIFFs OpenSlide does not read, and plain TIFFs.

Tiles are read on demand through tifffile's zarr store (only the tiles or strips a window
touches are decoded); uncompressed contiguous levels are memory-mapped. A level stored as a
single compressed strip can only be decoded whole: it is decoded on first use and kept.

Pixels are converted to RGB uint8 by the rules of :mod:`napari_wsl_al.core.io._convert`
(grey repeated, alpha over white, 16-bit rescaled by the dtype's range unless
``value_range`` is given, more than four channels: the first three). Channel-first layouts
(``SYX``, ``CYX``) are moved to channels last; other axes (T, Z, ...) are read at index 0.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import tifffile
import zarr

from ..errors import CorruptSlideError, SlideError
from ._convert import read_window, to_rgb_uint8
from .base import SlideReader

#: Microns per unit of the OME ``PhysicalSize*Unit`` values we understand.
_OME_UNITS_UM = {
    "µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "nm": 1e-3, "mm": 1e3,
    "cm": 1e4, "m": 1e6, "Å": 1e-4, "pm": 1e-6,
}  # fmt: skip

#: What a damaged file raises while tiles are decoded (tifffile, zarr, imagecodecs).
_READ_ERRORS = (OSError, ValueError, RuntimeError, KeyError, IndexError)


def _ome_mpp(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """Microns per pixel from an OME-XML ``Pixels`` element, if it states them."""
    try:
        ome = tifffile.xml2dict(tif.ome_metadata)
    except (ValueError, TypeError, AttributeError):
        return None
    images = ome.get("OME", {}).get("Image", {})
    image = images[0] if isinstance(images, list) else images
    pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
    sizes = []
    for axis in ("X", "Y"):
        size = pixels.get(f"PhysicalSize{axis}")
        unit = str(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        factor = _OME_UNITS_UM.get(unit)
        try:
            sizes.append(float(size) * factor if size is not None and factor else None)
        except (TypeError, ValueError):
            sizes.append(None)
    mx, my = sizes
    if not mx and not my:
        return None
    mx, my = mx or my, my or mx
    return (mx, my) if mx > 0 and my > 0 else None


def _tag_mpp(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> tuple[float, float] | None:
    """Microns per pixel from the TIFF resolution tags (centimeter, inch, or ImageJ microns)."""
    try:
        res_x, res_y = page.resolution
        unit = int(page.resolutionunit)
    except (AttributeError, TypeError, ValueError):
        return None
    if not (res_x > 0 and res_y > 0):
        return None
    if unit == 3:  # centimeter
        microns_per_unit = 1e4
    elif unit == 2:  # inch
        microns_per_unit = 25400.0
    else:
        imagej = tif.imagej_metadata or {}
        if str(imagej.get("unit", "")).lower() not in ("micron", "um", "µm", "\\u00b5m"):
            return None
        microns_per_unit = 1.0
    mpp = (microns_per_unit / res_x, microns_per_unit / res_y)
    # A resolution of 72 or 96 dpi is a screen default, not a scan resolution.
    if unit == 2 and max(res_x, res_y) <= 300:
        return None
    return mpp


class _TiffLevel:
    """One level of a TIFF series: an axis map and a way to read windows."""

    def __init__(self, top: tifffile.TiffPageSeries, index: int, path: Path):
        series = top.levels[index]
        self.path = path
        self.axes = series.axes
        self.shape = tuple(series.shape)
        self.dtype = series.dtype
        if "Y" not in self.axes or "X" not in self.axes:
            raise SlideError(
                f"the TIFF series has axes {self.axes!r}, without Y and X",
                path=path,
                hint="only images with rows and columns can be shown",
            )
        self.channel_axis = "S" if "S" in self.axes else ("C" if "C" in self.axes else None)
        self.height = self.shape[self.axes.index("Y")]
        self.width = self.shape[self.axes.index("X")]
        page = series.keyframe
        file_size = path.stat().st_size
        for each in list(series.pages)[:64]:
            if each is None:
                continue
            offsets = np.asarray(each.dataoffsets, np.int64)
            counts = np.asarray(each.databytecounts, np.int64)
            if offsets.size == 0 or counts.size != offsets.size:
                raise CorruptSlideError(
                    "an image directory has no pixel data offsets",
                    path=path,
                    hint="the file is probably truncated; copy it again",
                )
            if int((offsets + counts).max()) > file_size:
                raise CorruptSlideError(
                    "pixel data extends beyond the end of the file",
                    path=path,
                    hint="the file is truncated; copy it again",
                )
        self.tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
        self._whole: np.ndarray | None = None
        self._whole_lock = threading.Lock()
        self._memmap = None
        self._single_chunk = False
        self._array = None
        if page.is_memmappable and len(series.pages) == 1 and page.is_contiguous:
            offset = page.dataoffsets[0]
            self._memmap = np.memmap(
                path, dtype=series.dtype.newbyteorder(page.parent.byteorder), mode="r",
                offset=offset, shape=self.shape,
            )  # fmt: skip
        else:
            self._array = zarr.open(top.aszarr(level=index), mode="r", zarr_format=2)
            chunks = self._array.chunks
            chunk_pixels = chunks[self.axes.index("Y")] * chunks[self.axes.index("X")]
            self._single_chunk = chunk_pixels >= self.height * self.width

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """A window as ``(height, width, channels)`` in the file's dtype."""
        if self._memmap is not None:
            source = self._memmap
        elif self._single_chunk:
            source = self._whole_level()
        else:
            source = self._array
        return read_window(source, self.axes, "Y", "X", self.channel_axis, x, y, width, height)

    def _whole_level(self) -> np.ndarray:
        with self._whole_lock:
            if self._whole is None:
                self._whole = np.asarray(self._array[...])
            return self._whole


class TiffReader(SlideReader):
    """A TIFF (OME-TIFF, pyramidal or plain) read with tifffile.

    Parameters
    ----------
    path : str or Path
        The TIFF file.
    series : int
        Which image series of the file to show (OME-TIFFs may hold several).
    value_range : (float, float), optional
        Intensities mapped to 0..255 for non-uint8 images (default: the dtype's range).

    Raises
    ------
    CorruptSlideError
        The file is not a readable TIFF.
    SlideError
        The series has no Y/X axes or does not exist.
    """

    def __init__(
        self,
        path: str | Path,
        series: int = 0,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        name = self.path.stem
        if name.lower().endswith(".ome"):
            name = name[:-4]
        self.name = name or self.path.stem
        self._value_range = value_range
        try:
            self._tif = tifffile.TiffFile(self.path)
            all_series = self._tif.series
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as error:
            raise CorruptSlideError(
                f"tifffile cannot read this TIFF ({error})",
                path=self.path,
                hint="the file may be truncated or not a TIFF; copy it again",
            ) from error
        if not all_series:
            self._tif.close()
            raise CorruptSlideError(
                "the TIFF holds no readable image (its directory is missing or cut off)",
                path=self.path,
                hint="the file is probably truncated; copy it again",
            )
        if not 0 <= series < len(all_series):
            self._tif.close()
            raise SlideError(
                f"the file has {len(all_series)} image series, not {series + 1}",
                path=self.path,
                hint="choose a series between 0 and the number of series - 1",
            )
        top = all_series[series]
        try:
            self._levels = [_TiffLevel(top, i, self.path) for i in range(len(top.levels))]
        except (OSError, ValueError, KeyError, IndexError, RuntimeError) as error:
            self._tif.close()
            raise CorruptSlideError(
                f"the TIFF's image data cannot be read ({error})",
                path=self.path,
                hint="the file may be truncated or damaged",
            ) from error
        # Keep only levels that really shrink (some files repeat the base size).
        kept = [self._levels[0]]
        for level in self._levels[1:]:
            if level.width < kept[-1].width and level.height < kept[-1].height:
                kept.append(level)
        self._levels = kept
        self.format = "tifffile:ome" if self._tif.is_ome else "tifffile:tiff"
        self.mpp = (_ome_mpp(self._tif) if self._tif.is_ome else None) or _tag_mpp(
            self._tif, top.keyframe
        )
        page = top.keyframe
        self.properties = {
            "tiff.axes": top.axes,
            "tiff.dtype": str(top.dtype),
            "tiff.compression": str(page.compression.name),
            "tiff.photometric": str(page.photometric.name),
        }
        if page.description:
            self.properties["tiff.ImageDescription"] = page.description[:4096]
        self.native_dimensions = [(lv.width, lv.height) for lv in self._levels]
        w0, h0 = self.native_dimensions[0]
        self.native_downsamples = [
            (w0 / lv.width + h0 / lv.height) / 2.0 for lv in self._levels
        ]
        self.native_tile_sizes = [lv.tile for lv in self._levels]
        self._finish_init()

    def _read_native(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        try:
            window = self._levels[level].read(x, y, width, height)
        except _READ_ERRORS as error:
            raise CorruptSlideError(
                f"reading level {level} at {(x, y)} failed ({error})",
                path=self.path,
                hint="the file may be truncated or damaged",
            ) from error
        return to_rgb_uint8(window, self._value_range)

    def _close(self) -> None:
        self._tif.close()
