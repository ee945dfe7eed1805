"""The OpenSlide backend: Aperio svs, Hamamatsu ndpi, Mirax mrxs, Leica scn, Ventana bif, DICOM ..."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from ..errors import CorruptSlideError, UnsupportedFormatError
from ._convert import composite_over_white, to_rgb_uint8
from .base import SlideReader

#: File name extensions OpenSlide usually reads (it also detects formats by content).
OPENSLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".dcm",
)  # fmt: skip


def _float_property(properties, key: str) -> float | None:
    try:
        value = float(properties[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if value > 0 and np.isfinite(value) else None


class OpenSlideReader(SlideReader):
    """A whole-slide image read with OpenSlide.

    Parameters
    ----------
    path : str or Path
        The slide file (for DICOM, any file of the series; for mrxs, the ``.mrxs`` file).

    Raises
    ------
    UnsupportedFormatError
        OpenSlide does not recognise the file.
    CorruptSlideError
        OpenSlide recognises the format but cannot read the file.

    Notes
    -----
    OpenSlide returns premultiplied-then-unpremultiplied RGBA; pixels outside the scanned area
    are transparent. They are composited over white, so the reader returns RGB where empty
    areas read as glass (255).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = self.path.stem
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as error:
            raise UnsupportedFormatError(
                "OpenSlide does not recognise this file",
                path=self.path,
                hint="check the file type; plain TIFF and images are read by other backends",
            ) from error
        except openslide.OpenSlideError as error:
            raise CorruptSlideError(
                f"OpenSlide cannot read this slide ({error})",
                path=self.path,
                hint="the file may be truncated or damaged; copy it again from the scanner",
            ) from error
        slide = self._slide
        props = slide.properties
        self.properties = {str(k): str(v) for k, v in props.items()}
        vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "unknown"
        self.format = f"openslide:{vendor}"
        mpp_x = _float_property(props, openslide.PROPERTY_NAME_MPP_X)
        mpp_y = _float_property(props, openslide.PROPERTY_NAME_MPP_Y)
        if mpp_x is not None or mpp_y is not None:
            self.mpp = (mpp_x or mpp_y, mpp_y or mpp_x)
        self.objective_power = _float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.native_dimensions = [tuple(map(int, d)) for d in slide.level_dimensions]
        self.native_downsamples = [float(d) for d in slide.level_downsamples]
        tiles: list[tuple[int, int] | None] = []
        for level in range(slide.level_count):
            tw = props.get(f"openslide.level[{level}].tile-width")
            th = props.get(f"openslide.level[{level}].tile-height")
            tiles.append((int(th), int(tw)) if tw and th else None)
        # base.tile_size reads these as (height, width).
        self.native_tile_sizes = tiles
        self._finish_init()

    def _read_native(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        d = self.native_downsamples[level]
        location = (int(round(x * d)), int(round(y * d)))
        try:
            image = self._slide.read_region(location, level, (width, height))
        except openslide.OpenSlideError as error:
            raise CorruptSlideError(
                f"reading level {level} at {(x, y)} failed ({error})",
                path=self.path,
                hint="the file may be truncated or damaged; reopen it or copy it again",
            ) from error
        if image.getextrema()[3][0] == 255:
            # Fully opaque (the common case): Pillow drops alpha in C, faster than numpy.
            return np.array(image.convert("RGB"))  # a writable copy, like other backends
        rgba = np.asarray(image)
        return composite_over_white(rgba[..., :3], rgba[..., 3])

    def associated_image_names(self) -> list[str]:
        """Names of the associated images (``label``, ``macro``, ``thumbnail`` ...)."""
        return sorted(self._slide.associated_images.keys())

    def read_associated(self, name: str) -> np.ndarray:
        """An associated image as ``(height, width, 3)`` uint8, transparent as white."""
        try:
            image = self._slide.associated_images[name]
        except KeyError:
            raise KeyError(
                f"{self.name} has no associated image {name!r}; "
                f"it has {self.associated_image_names()}"
            ) from None
        return to_rgb_uint8(np.asarray(image.convert("RGBA")))

    def _close(self) -> None:
        self._slide.close()
