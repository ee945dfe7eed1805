"""The zarr backend: zarr v2/v3 arrays and OME-Zarr (NGFF) multiscale images.

- An OME-Zarr group: the ``multiscales`` metadata (NGFF 0.4 in the group attributes, 0.5 under
  ``attrs["ome"]``) lists the levels; ``axes`` name the dimensions; the first dataset's
  ``scale`` transformation (times any multiscale-wide one) gives microns per pixel when the
  spatial axes' unit is a length unit (micrometer, nanometer, millimeter ...).
- A single array: one level, the base class adds a lazy pyramid. Its axes are guessed from its
  shape: ``yx``; ``yxc`` when the last of three dimensions has at most 4 entries, else ``cyx``;
  ``tcyx`` for four dimensions (``yxc`` style when the last has at most 4 entries, ``tyxc``);
  ``tczyx`` for five.
- A group without ``multiscales``: :class:`~napari_wsl_al.core.errors.UnsupportedFormatError`
  naming the arrays it holds.

Non-spatial axes (t, z) are read at index 0; channels are converted to RGB uint8 by the rules
of :mod:`napari_wsl_al.core.io._convert`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors

from ..errors import CorruptSlideError, UnsupportedFormatError
from ._convert import read_window, to_rgb_uint8
from .base import SlideReader

#: Microns per unit of the NGFF (UDUNITS-2) length units.
_NGFF_UNITS_UM = {
    "micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3,
    "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6, "angstrom": 1e-4, "picometer": 1e-6,
}  # fmt: skip

_OPEN_ERRORS = (zarr.errors.BaseZarrError, OSError, ValueError, KeyError, TypeError)
_READ_ERRORS = (zarr.errors.BaseZarrError, OSError, ValueError, RuntimeError, KeyError)


def guess_axes(shape: tuple[int, ...]) -> str:
    """Axis names for an array without metadata, from its shape (see the module docstring)."""
    ndim = len(shape)
    if ndim == 2:
        return "yx"
    if ndim == 3:
        return "yxc" if shape[2] <= 4 else "cyx"
    if ndim == 4:
        return "tyxc" if shape[3] <= 4 else "tcyx"
    if ndim == 5:
        return "tczyx"
    raise ValueError(f"cannot guess the axes of a {ndim}-dimensional array")


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "ome" in attrs and isinstance(attrs["ome"], dict) and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"]
    return attrs.get("multiscales")


def _scale(transforms: list[dict[str, Any]] | None, ndim: int) -> np.ndarray:
    scale = np.ones(ndim)
    for transform in transforms or []:
        if transform.get("type") == "scale" and "scale" in transform:
            scale = scale * np.asarray(transform["scale"], float)
    return scale


class ZarrReader(SlideReader):
    """A zarr array or OME-Zarr multiscale image.

    Parameters
    ----------
    path : str or Path
        The ``.zarr`` folder (a group with ``multiscales`` or a single array).
    value_range : (float, float), optional
        Intensities mapped to 0..255 for non-uint8 data (default: the dtype's range).

    Raises
    ------
    UnsupportedFormatError
        A group without ``multiscales`` metadata, or a folder that is not zarr.
    CorruptSlideError
        Metadata that cannot be parsed.
    """

    def __init__(self, path: str | Path, value_range: tuple[float, float] | None = None):
        super().__init__()
        self.path = Path(path)
        self.name = self.path.name[:-5] if self.path.name.endswith(".zarr") else self.path.name
        self._value_range = value_range
        try:
            node = zarr.open(str(self.path), mode="r")
        except zarr.errors.NodeNotFoundError as error:
            raise UnsupportedFormatError(
                "no zarr array or group found here",
                path=self.path,
                hint="a zarr folder holds .zarray/.zgroup (v2) or zarr.json (v3)",
            ) from error
        except (json.JSONDecodeError, *_OPEN_ERRORS) as error:
            raise CorruptSlideError(
                f"the zarr metadata cannot be read ({error})",
                path=self.path,
                hint="the store may be incomplete or damaged",
            ) from error
        zarr_format = getattr(getattr(node, "metadata", None), "zarr_format", "?")
        if isinstance(node, zarr.Array):
            self._arrays_native = [node]
            axes = guess_axes(node.shape) if node.ndim in (2, 3, 4, 5) else None
            if axes is None:
                raise UnsupportedFormatError(
                    f"a {node.ndim}-dimensional array is not an image",
                    path=self.path,
                    hint="images have 2 to 5 dimensions (t, c, z, y, x)",
                )
            self.format = f"zarr:v{zarr_format}"
            scales = [np.ones(node.ndim)]
            units: dict[str, str | None] = {}
        else:
            multiscales = _multiscales(dict(node.attrs))
            if not multiscales:
                names = sorted(node.array_keys()) + [g + "/" for g in sorted(node.group_keys())]
                raise UnsupportedFormatError(
                    "this zarr group has no OME-Zarr 'multiscales' metadata",
                    path=self.path,
                    hint=f"open one of its arrays instead: {', '.join(names[:10]) or 'none'}",
                )
            multiscale = multiscales[0]
            try:
                datasets = multiscale["datasets"]
                self._arrays_native = [node[d["path"]] for d in datasets]
            except (KeyError, TypeError, *_OPEN_ERRORS) as error:
                raise CorruptSlideError(
                    f"the multiscales datasets cannot be opened ({error})",
                    path=self.path,
                    hint="the OME-Zarr store may be incomplete",
                ) from error
            ndim = self._arrays_native[0].ndim
            raw_axes = multiscale.get("axes")
            if raw_axes:
                names = [a["name"] if isinstance(a, dict) else str(a) for a in raw_axes]
                axes = "".join(n.lower()[:1] for n in names)
                units = {
                    n.lower()[:1]: (a.get("unit") if isinstance(a, dict) else None)
                    for n, a in zip(names, raw_axes)
                }
            else:
                axes = "tczyx"[-ndim:] if ndim <= 5 else guess_axes(self._arrays_native[0].shape)
                units = {}
            outer = _scale(multiscale.get("coordinateTransformations"), ndim)
            scales = [_scale(d.get("coordinateTransformations"), ndim) * outer for d in datasets]
            version = multiscale.get("version") or dict(node.attrs).get("ome", {}).get("version")
            self.format = f"ome-zarr:{version or '?'}"
        if len(axes) != self._arrays_native[0].ndim or "y" not in axes or "x" not in axes:
            raise UnsupportedFormatError(
                f"axes {axes!r} do not fit an array of shape {self._arrays_native[0].shape}",
                path=self.path,
                hint="an image needs y and x axes",
            )
        self._axes = axes
        self._channel = "c" if "c" in axes else None
        n_channels = self._arrays_native[0].shape[axes.index("c")] if self._channel else 1
        # More than four channels: the first three are shown as RGB (see _convert).
        self._channel_slice = slice(0, 3) if n_channels > 4 else slice(None)
        iy, ix = axes.index("y"), axes.index("x")
        dims = [(a.shape[ix], a.shape[iy]) for a in self._arrays_native]
        # Keep the levels that shrink, in order.
        keep = [0]
        for i in range(1, len(dims)):
            if dims[i][0] < dims[keep[-1]][0] and dims[i][1] < dims[keep[-1]][1]:
                keep.append(i)
        self._arrays_native = [self._arrays_native[i] for i in keep]
        self.native_dimensions = [dims[i] for i in keep]
        w0, h0 = self.native_dimensions[0]
        self.native_downsamples = [(w0 / w + h0 / h) / 2.0 for w, h in self.native_dimensions]
        self.native_tile_sizes = [
            (int(a.chunks[iy]), int(a.chunks[ix])) for a in self._arrays_native
        ]
        x_um = _NGFF_UNITS_UM.get(str(units.get("x")).lower()) if units.get("x") else None
        y_um = _NGFF_UNITS_UM.get(str(units.get("y")).lower()) if units.get("y") else None
        if x_um and y_um:
            s0 = scales[keep[0]]
            mpp = (float(s0[ix]) * x_um, float(s0[iy]) * y_um)
            if mpp[0] > 0 and mpp[1] > 0:
                self.mpp = mpp
        first = self._arrays_native[0]
        self.properties = {
            "zarr.axes": axes,
            "zarr.dtype": str(first.dtype),
            "zarr.shape": str(tuple(first.shape)),
            "zarr.chunks": str(tuple(first.chunks)),
        }
        self._finish_init()

    def _read_native(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        try:
            window = read_window(
                self._arrays_native[level], self._axes, "y", "x", self._channel,
                x, y, width, height, self._channel_slice,
            )  # fmt: skip
        except _READ_ERRORS as error:
            raise CorruptSlideError(
                f"reading level {level} at {(x, y)} failed ({error})",
                path=self.path,
                hint="the zarr store may be incomplete or damaged",
            ) from error
        return to_rgb_uint8(window, self._value_range)


def is_zarr_path(path: Path) -> bool:
    """Whether ``path`` looks like a zarr store: ``*.zarr`` or a folder with zarr metadata."""
    if not path.is_dir():
        return False
    if path.suffix.lower() == ".zarr":
        return True
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


__all__ = ["ZarrReader", "guess_axes", "is_zarr_path"]
