"""What the inference widget does, without Qt: model choice, job with cancel, layer specs, outlines.

:class:`InferenceSession` is owned by the dock widget, which only wires signals to it. It turns
map handles into plain ``(data, kwargs)`` layer specifications (multiscale levels, scale and
translate in microns, colormaps, short names and what each map means) and the foreground map
into outline polygons and a thin outline raster, so everything here is testable without
napari, and the heavy parts run in the widget's worker thread.
"""

from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.base import SlideReader, given_mpp
from ..models.base import WslModel
from ..progress import Progress
from ..project import Project, slide_key
from .engine import InferenceConfig, InferenceResult, infer_slide, is_patch_folder
from .loading import DEFAULT_MODEL, ModelChoice, load_inference_model
from .store import MapHandle, MapStore

#: Longest side of the map level the foreground outline is traced on.
OUTLINE_MAX_SIZE = 2048

#: Most outline polygons drawn (the longest ones).
OUTLINE_MAX_POLYGONS = 400

#: Outline raster pixels per map pixel side at its finest level: the line is two raster pixels
#: wide at the level napari shows, so it stays two to four screen pixels wide at any zoom.
OUTLINE_SUPERSAMPLE = 16

#: The outline raster pyramid is halved until its smallest level fits in this many pixels.
OUTLINE_SMALLEST_LEVEL = 512

#: Slide names longer than this lose their middle in layer names (napari's layer list shows
#: about 28 characters: "CMU-1…Region · P(malignant)" fits).
SHORT_NAME_LENGTH = 12

#: Between the slide and the map in layer names.
NAME_SEPARATOR = " · "

#: Settings key of ``project.json`` naming the class whose map is shown first.
CLASS_OF_INTEREST_SETTING = "class_of_interest"

#: Display of each kind of map: colormap, blending, opacity.
MAP_STYLE = {
    "cam": {"colormap": "turbo", "blending": "translucent", "opacity": 0.6},
    "fg": {"colormap": "green", "blending": "additive", "opacity": 0.5},
    "bg": {"colormap": "magenta", "blending": "additive", "opacity": 0.5},
    "probs": {"colormap": "cyan", "blending": "additive", "opacity": 0.5},
    "seg": {"colormap": "cyan", "blending": "additive", "opacity": 0.5},
    "uncertainty": {"colormap": "viridis", "blending": "translucent", "opacity": 0.5},
}

#: The one map shown when the layers first appear: the first of these that exists (the CAM is
#: that of the class of interest); the others are not shown (the Inference dock makes their
#: layers when the user asks for them).
FIRST_SHOWN = ("cam", "fg", "uncertainty/ovr_entropy_max", "seg", "probs")

#: Maps whose layer would repeat another when there are two classes: the predictive entropy is
#: then the one-vs-rest entropy (shown as "uncertainty") and the margin a function of it.
TWO_CLASS_DUPLICATES = ("uncertainty/entropy", "uncertainty/margin")

#: Short title of each map in layer names (``{c}``: the channel's class).
MAP_TITLES = {
    "cam": "P({c})",
    "fg": "foreground",
    "bg": "background",
    "probs": "tile P({c})",
    "seg": "seg P({c})",
    "uncertainty/entropy": "entropy",
    "uncertainty/margin": "margin",
    "uncertainty/ovr_entropy": "uncertainty {c}",
    "uncertainty/ovr_entropy_max": "uncertainty",
    "uncertainty/mc_variance": "MC-dropout variance",
}

#: What each map shows and how to read it (``{c}``: the channel's class).
MAP_DESCRIPTIONS = {
    "cam": ("how strongly each spot looks like {c} to the model (class activation map, softmax "
            "over the classes); 0 on glass"),
    "fg": ("where the model finds its evidence (its localisation mask): for its foreground "
           "class on every image when it has one (the shipped model: malignant), else for its "
           "decision; outlined above the outline threshold"),
    "bg": "1 - foreground: glass and where the model finds no evidence",
    "probs": "the model's probability of {c} for the whole tile or patch, not per pixel",
    "seg": "the segmentation head's probability of {c} at each spot",
    "uncertainty/entropy": "predictive entropy: 0 when sure, ln(number of classes) when undecided",
    "uncertainty/margin": "best minus second-best class probability: near 0 the model hesitates",
    "uncertainty/ovr_entropy": "one-vs-rest entropy of {c}: 0 when sure, 0.69 for a coin flip",
    "uncertainty/ovr_entropy_max": ("how unsure the model is (largest one-vs-rest entropy): 0 "
                                    "when sure and on glass, 0.69 for a coin flip; label bright "
                                    "spots first"),
    "uncertainty/mc_variance": "variance over MC-dropout passes: high where the prediction is unstable",
}


def map_title(name: str, channel: str | None = None) -> str:
    """Short title of a map (or of one channel of it) for layer names: ``"P(malignant)"``."""
    title = MAP_TITLES.get(name, name.split("/")[-1] + (" {c}" if channel else ""))
    return title.format(c=channel) if channel is not None else title.replace(" {c}", "")


def map_description(name: str, channel: str | None = None) -> str:
    """What a map (or one channel of it) shows and how to read it."""
    text = MAP_DESCRIPTIONS.get(name, name.split("/")[-1])
    return text.format(c=channel if channel is not None else "each class")


def short_slide_name(name: str, limit: int = SHORT_NAME_LENGTH) -> str:
    """``name`` if it has at most ``limit`` characters, else its start and end around ``…``.

    The end is kept a little longer than the start: slide names often end with what tells
    them apart (a number, a stain, a region).
    """
    if len(name) <= limit:
        return name
    tail = (limit - 1) // 2 + (limit - 1) % 2
    head = limit - 1 - tail
    return f"{name[:head]}…{name[-tail:]}"


def map_layer_name(slide_name: str, name: str, channel: str | None = None) -> str:
    """Layer name of a map: ``"<short slide> · <map title>"``."""
    return f"{short_slide_name(slide_name)}{NAME_SEPARATOR}{map_title(name, channel)}"


def outline_layer_name(slide_name: str) -> str:
    """Layer name of a slide's foreground outline."""
    return f"{short_slide_name(slide_name)}{NAME_SEPARATOR}outline"


@dataclass(frozen=True)
class MapLayerSpec:
    """One napari image layer of a map (one channel of a multi-channel map).

    Attributes
    ----------
    name : str
        Layer name: ``"<slide> · <title>"`` (short names) or ``"<slide> <map> [<channel>]"``.
    data : list of MapLevel
        Pyramid levels (2-D), largest first, read straight from the store's arrays
        (:class:`MapLevel`).
    kwargs : dict
        ``scale``, ``translate``, ``colormap``, ``blending``, ``opacity``, ``contrast_limits``,
        ``visible``, ``multiscale``, ``metadata`` (``wslal_map``, ``channel``,
        ``description``), and ``units`` in microns: keyword arguments of ``add_image``.
    title : str
        The map's short title (``"P(malignant)"``, ``"uncertainty"``).
    description : str
        What the map shows and how to read it.
    """

    name: str
    data: list
    kwargs: dict[str, Any]
    title: str = ""
    description: str = ""


class MapLevel:
    """One pyramid level of a map, or of one channel of it, as napari slices it: a numpy-like
    2-D array read straight from the store's zarr array.

    napari reads the window it shows, at the level it shows, by plain indexing on the UI thread
    (and the coarsest level whole, for the thumbnail, which it keeps until the layer's data is
    set again). A dask array pays for a task graph and a round trip through its scheduler on
    every read, and needs new graph names to see what was written since (napari's dask cache
    keeps what it read); a zarr array reads the chunks under the window and nothing else, and
    what it reads is what is on disk now.

    Parameters
    ----------
    array : zarr.Array or array-like
        ``(Y, X)``, or ``(C, Y, X)`` with ``channel``.
    channel : int, optional
        The channel shown (axis 0 of ``array``).
    """

    def __init__(self, array, channel: int | None = None) -> None:
        self.array = array
        self.channel = None if channel is None else int(channel)
        shape = tuple(int(n) for n in array.shape)
        self.shape = shape[1:] if self.channel is not None else shape
        if len(self.shape) != 2:
            raise ValueError(f"a map level is 2-D (or 3-D with a channel), not {shape}")
        self.dtype = np.dtype(array.dtype)
        self.ndim = 2
        self.size = self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def in_memory(self) -> bool:
        """Whether the level reads a copy in memory (:func:`levels_in_memory`), not a store."""
        return isinstance(self.array, np.ndarray)

    def __repr__(self) -> str:
        channel = "" if self.channel is None else f" channel {self.channel}"
        return f"<MapLevel {self.shape} {self.dtype}{channel} of {self.source()[0]}>"

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if self.channel is not None:
            key = (self.channel, *key)
        return np.asarray(self.array[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[...]
        return whole if dtype is None else whole.astype(dtype)

    def source(self) -> tuple:
        """What the level reads: its array's place in the store (the array itself when it has
        none), shape, dtype, chunks and channel. Levels with the same source read the same
        values."""
        place = getattr(self.array, "store_path", None)
        where = str(place) if place is not None else id(self.array)
        return (where, tuple(self.array.shape), self.dtype.str,
                tuple(getattr(self.array, "chunks", None) or ()), self.channel)


def levels_in_memory(levels, max_pixels: int) -> list:
    """The levels with at most ``max_pixels`` pixels read into memory (each a
    :class:`MapLevel` over a copy), the larger ones left as they are.

    Called off the UI thread: napari then shows those levels without reading the store on the
    UI thread, where a read waits behind the writes of a running job. A copy does not see
    later writes: it is a snapshot, and it never counts as the same level as another
    (:func:`same_levels`), so a layer given new snapshots shows them.
    """
    return [MapLevel(np.asarray(level)) if isinstance(level, MapLevel)
            and level.size <= max_pixels else level for level in levels]


def same_levels(old, new) -> bool:
    """Whether two lists of map levels read the same arrays, level by level."""
    old, new = list(old), list(new)
    return len(old) == len(new) and all(
        isinstance(a, MapLevel) and isinstance(b, MapLevel) and not a.in_memory
        and a.source() == b.source() for a, b in zip(old, new))


def contrast_limits(handle: MapHandle, class_count: int) -> tuple[float, float]:
    """Fixed display range of a map (no pass over the data)."""
    name = handle.name
    if name.endswith("entropy") and "ovr" not in name:
        return (0.0, max(math.log(max(class_count, 2)), 1e-3))
    if "ovr_entropy" in name:
        return (0.0, math.log(2.0))
    if name.endswith("mc_variance"):
        return (0.0, 0.25)
    return (0.0, 1.0)


def class_count(handles: dict[str, MapHandle]) -> int | None:
    """How many classes the probabilities (hence the uncertainty maps) have, when known."""
    for name in ("probs", "seg", "uncertainty/ovr_entropy", "cam"):
        handle = handles.get(name)
        if handle is not None and handle.channels:
            return len(handle.channels)
    return None


def default_skip(handles: dict[str, MapHandle]) -> tuple[str, ...]:
    """Maps not worth a layer of their own: the per-class one-vs-rest entropy (its maximum is
    shown) and, with two classes, the maps that repeat the uncertainty layer."""
    skip = ["uncertainty/ovr_entropy"]
    if class_count(handles) == 2 and "uncertainty/ovr_entropy_max" in handles:
        skip += list(TWO_CLASS_DUPLICATES)
    return tuple(skip)


def first_shown(handles: dict[str, MapHandle], class_of_interest: str | None = None,
                skip: tuple[str, ...] = ()) -> tuple[str, int | None] | None:
    """The map (and channel index) shown when the layers first appear.

    The CAM of the class of interest (``class_of_interest`` when the CAM has it, else the last
    class: the positive or most severe one by convention, e.g. ``malignant``), else the first
    of :data:`FIRST_SHOWN` there is.
    """
    for name in FIRST_SHOWN:
        handle = handles.get(name)
        if handle is None or name in skip:
            continue
        if handle.channels is None:
            return name, None
        channels = list(handle.channels)
        index = channels.index(class_of_interest) if class_of_interest in channels else len(channels) - 1
        return name, index
    return None


def map_layer_specs(handles: dict[str, MapHandle], slide_name: str,
                    skip: tuple[str, ...] | None = None, *, class_of_interest: str | None = None,
                    short_names: bool = False) -> list[MapLayerSpec]:
    """Layer specifications of every map: one per channel, scale/translate in microns.

    Only one layer is visible at first (:func:`first_shown`): the CAM of the class of interest
    when there is a CAM. Each spec says what its map means (``description``, also in the
    layer's ``metadata``). Its levels are :class:`MapLevel` views of the store's zarr arrays
    (of the dask levels for handles that have no arrays), so napari's slicing on the UI thread
    reads the window it shows and computes no dask graph.

    Parameters
    ----------
    handles : dict of str to MapHandle
        From :meth:`MapStore.handles`.
    slide_name : str
        Prefix of the layer names.
    skip : tuple of str, optional
        Maps not turned into layers; by default :func:`default_skip`.
    class_of_interest : str, optional
        The class whose CAM is shown first (default: the last class).
    short_names : bool
        ``"<slide> · P(malignant)"`` with long slide names shortened in the middle
        (:func:`map_layer_name`); otherwise ``"<slide> cam malignant"``.
    """
    skip = default_skip(handles) if skip is None else tuple(skip)
    shown = first_shown(handles, class_of_interest, skip)
    classes = class_count(handles) or 2
    specs = []
    for name, handle in handles.items():
        if name in skip:
            continue
        style = dict(MAP_STYLE.get(handle.kind, MAP_STYLE["uncertainty"]))
        channels = handle.channels or (None,)
        for index, channel in enumerate(channels):
            data = [MapLevel(level, None if channel is None else index)
                    for level in (handle.arrays or handle.levels)]
            visible = shown == (name, None if channel is None else index)
            if short_names:
                layer_name = map_layer_name(slide_name, name, channel)
            else:
                short = name.split("/")[-1]
                layer_name = f"{slide_name} {short if channel is None else f'{short} {channel}'}"
            description = map_description(name, channel)
            specs.append(MapLayerSpec(
                name=layer_name,
                data=data,
                kwargs={
                    "multiscale": True,
                    "scale": handle.scale,
                    "translate": handle.translate,
                    "contrast_limits": contrast_limits(handle, classes),
                    "visible": visible,
                    "metadata": {"wslal_map": name, "channel": channel,
                                 "description": description, "slide_name": slide_name},
                    **({"units": "um"} if handle.unit == "micrometer" else {}),
                    **style,
                },
                title=map_title(name, channel),
                description=description,
            ))
    return specs


def foreground_outline(handle: MapHandle, threshold: float) -> list[np.ndarray]:
    """Contours of ``fg > threshold`` as polygons in world coordinates (microns).

    Traced on the largest pyramid level whose longer side is at most
    :data:`OUTLINE_MAX_SIZE`, so the cost does not grow with the slide.
    """
    from skimage import measure

    level = 0
    while level + 1 < len(handle.levels) and max(handle.levels[level].shape) > OUTLINE_MAX_SIZE:
        level += 1
    values = np.asarray(handle.levels[level].compute(), dtype=np.float32)
    if values.size == 0 or not (values > threshold).any():
        return []
    factor = (handle.levels[0].shape[0] / values.shape[0], handle.levels[0].shape[1] / values.shape[1])
    padded = np.pad(values, 1, constant_values=0.0)
    contours = measure.find_contours(padded, threshold)
    contours.sort(key=len, reverse=True)
    polygons = []
    for contour in contours[:OUTLINE_MAX_POLYGONS]:
        if len(contour) < 3:
            continue
        rows = contour[:, 0] - 1
        cols = contour[:, 1] - 1
        # Pixel index at this level -> level-0 map pixel centre -> world.
        y = handle.translate[0] + handle.scale[0] * ((rows + 0.5) * factor[0] - 0.5)
        x = handle.translate[1] + handle.scale[1] * ((cols + 0.5) * factor[1] - 0.5)
        polygons.append(np.stack([y, x], axis=1))
    return polygons


class OutlineLevel:
    """One level of a thin outline raster, drawn on demand: a numpy-like ``uint8`` array that is
    1 on the outline (two pixels wide) and 0 elsewhere.

    Slicing draws only the polygon edges that cross the requested window (points every half
    pixel along each edge), so napari, which reads only the window it shows, pays for what is
    on screen, and no level is ever held in memory.

    Parameters
    ----------
    segments : ndarray
        ``(M, 2, 2)`` edges ``[[y0, x0], [y1, x1]]`` in pixels of the finest level.
    shape : (int, int)
        Shape of this level.
    downsample : int
        Finest-level pixels per pixel of this level.
    """

    def __init__(self, segments: np.ndarray, shape: tuple[int, int], downsample: int) -> None:
        self.segments = segments
        self.shape = (int(shape[0]), int(shape[1]))
        self.downsample = int(downsample)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 2
        self.size = self.shape[0] * self.shape[1]
        self._low = segments.min(axis=1) if len(segments) else np.zeros((0, 2))
        self._high = segments.max(axis=1) if len(segments) else np.zeros((0, 2))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<OutlineLevel shape {self.shape} downsample {self.downsample}>"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.window(0, 0, self.shape[0], self.shape[1])
        return whole if dtype is None else whole.astype(dtype)

    def window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """The raster of rows ``[y0, y1)`` and columns ``[x0, x1)``."""
        out = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.uint8)
        if out.size == 0 or len(self.segments) == 0:
            return out
        d = float(self.downsample)
        low, high = self._low / d, self._high / d
        near = ((high[:, 0] >= y0 - 1) & (low[:, 0] <= y1) & (high[:, 1] >= x0 - 1)
                & (low[:, 1] <= x1))
        if not near.any():
            return out
        edges = self.segments[near] / d
        start, step = edges[:, 0], edges[:, 1] - edges[:, 0]
        counts = np.ceil(2.0 * np.abs(step).max(axis=1)).astype(np.int64) + 1
        owner = np.repeat(np.arange(len(edges)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        t = (np.arange(int(counts.sum())) - first) / np.repeat(np.maximum(counts - 1, 1), counts)
        # Each point inks the 2 x 2 pixels around it: a line two pixels wide, centred on the
        # contour, that no sampling of the level on screen can break.
        points = np.floor(start[owner] + step[owner] * t[:, None]).astype(np.int64)
        for dy in (0, 1):
            for dx in (0, 1):
                rows, cols = points[:, 0] + dy - y0, points[:, 1] + dx - x0
                inside = (rows >= 0) & (rows < out.shape[0]) & (cols >= 0) & (cols < out.shape[1])
                out[rows[inside], cols[inside]] = 1
        return out

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (2 - len(key))
        rows, cols = key[:2]
        if isinstance(rows, slice) and isinstance(cols, slice):
            (y0, y1, ys), (x0, x1, xs) = rows.indices(self.shape[0]), cols.indices(self.shape[1])
            if ys == 1 and xs == 1:
                return self.window(y0, x0, max(y0, y1), max(x0, x1))
        ry = np.arange(self.shape[0])[rows]
        rx = np.arange(self.shape[1])[cols]
        flat_y, flat_x = np.atleast_1d(ry), np.atleast_1d(rx)
        if flat_y.size == 0 or flat_x.size == 0:
            return np.zeros((flat_y.size, flat_x.size), np.uint8)[
                (0 if np.ndim(ry) == 0 else slice(None)), (0 if np.ndim(rx) == 0 else slice(None))]
        ylo, xlo = int(flat_y.min()), int(flat_x.min())
        window = self.window(ylo, xlo, int(flat_y.max()) + 1, int(flat_x.max()) + 1)
        picked = window[np.ix_(flat_y - ylo, flat_x - xlo)]
        if np.ndim(ry) == 0:
            picked = picked[0]
        if np.ndim(rx) == 0:
            picked = picked[..., 0]
        return picked


@dataclass(frozen=True)
class OutlineData:
    """A foreground outline ready for a napari image layer (made in a worker thread).

    Attributes
    ----------
    levels : list of OutlineLevel
        The raster pyramid, finest first: the line is two pixels wide at every level.
    scale, translate : (float, float)
        Placement of the finest level in world units (microns when ``unit`` says so).
    unit : str or None
        ``"micrometer"`` or None.
    threshold : float
        The foreground threshold outlined.
    polygons : int
        How many contours are drawn.
    """

    levels: list
    scale: tuple[float, float]
    translate: tuple[float, float]
    unit: str | None
    threshold: float
    polygons: int


def outline_data(handle: MapHandle, threshold: float,
                 supersample: int = OUTLINE_SUPERSAMPLE) -> OutlineData:
    """The contours of ``fg > threshold`` (:func:`foreground_outline`) as a thin outline raster.

    The finest raster level has ``supersample`` pixels per map pixel side; each coarser level
    halves it, down to :data:`OUTLINE_SMALLEST_LEVEL` pixels. The line is two pixels wide at
    every level, and napari shows the level whose pixels are one to two screen pixels, so the
    line stays thin at every zoom and the tissue shows through.
    """
    polygons = foreground_outline(handle, threshold)
    f = int(supersample)
    scale = (handle.scale[0] / f, handle.scale[1] / f)
    translate = tuple(t + s * (0.5 / f - 0.5) for t, s in zip(handle.translate, handle.scale))
    edges = []
    for polygon in polygons:
        # World -> finest-level pixel centres.
        pixels = np.stack([(polygon[:, axis] - translate[axis]) / scale[axis] for axis in (0, 1)],
                          axis=1)
        closed = np.vstack([pixels, pixels[:1]])
        edges.append(np.stack([closed[:-1], closed[1:]], axis=1))
    segments = np.concatenate(edges) if edges else np.zeros((0, 2, 2))
    height, width = handle.levels[0].shape[-2:]
    shape = (height * f, width * f)
    levels, downsample = [], 1
    while True:
        levels.append(OutlineLevel(segments, shape, downsample))
        if max(shape) <= OUTLINE_SMALLEST_LEVEL or min(shape) <= 1:
            break
        shape = ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
        downsample *= 2
    return OutlineData(levels, scale, translate, handle.unit, float(threshold), len(polygons))


def region_from_corners(corner_pixels: np.ndarray, downsample: tuple[float, float],
                        dimensions: tuple[int, int]) -> tuple[int, int, int, int]:
    """The level-0 box ``(x, y, w, h)`` of a layer's visible corners at one of its levels.

    Parameters
    ----------
    corner_pixels : array
        ``[[y0, x0, ...], [y1, x1, ...]]`` as napari's ``Layer.corner_pixels`` (at the
        displayed level).
    downsample : (float, float)
        ``(y, x)`` level-0 pixels per pixel of that level.
    dimensions : (int, int)
        Level-0 ``(width, height)`` of the slide, to clip to.
    """
    corners = np.asarray(corner_pixels, dtype=float)[:, :2]
    y0, x0 = corners[0] * np.asarray(downsample)
    y1, x1 = (corners[1] + 1) * np.asarray(downsample)
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(dimensions[0], math.ceil(x1)), min(dimensions[1], math.ceil(y1))
    return (x0, y0, max(1, x1 - x0), max(1, y1 - y0))


def region_from_points(points_level0: np.ndarray,
                       dimensions: tuple[int, int]) -> tuple[int, int, int, int]:
    """The level-0 bounding box ``(x, y, w, h)`` of ``(N, 2)`` ``(y, x)`` points (a rectangle)."""
    points = np.asarray(points_level0, dtype=float)[:, -2:]
    y0, x0 = points.min(axis=0)
    y1, x1 = points.max(axis=0)
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(dimensions[0], math.ceil(x1)), min(dimensions[1], math.ceil(y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the rectangle lies outside the slide")
    return (x0, y0, x1 - x0, y1 - y0)


#: What the Slide widget's user does about an image without a resolution.
SET_RESOLUTION_IN_WIDGET = ("Set the image's µm / pixel in the Slide widget and run again: the "
                            "project keeps it.")


def resolution_warning(reader: SlideReader, model: WslModel, config: InferenceConfig,
                       fix: str = SET_RESOLUTION_IN_WIDGET) -> str | None:
    """Why the model's resolution cannot be applied to the image, or None when it can (or
    another resolution was asked for); ``fix`` says what to do about it (the CLI gives its
    options)."""
    if config.mpp is not None or config.level is not None:
        return None
    if getattr(model, "mpp", None) is None or reader.mpp is not None:
        return None
    return (f"{reader.name} has no resolution (µm per pixel), so the model's resolution "
            f"({float(model.mpp):g} µm/px) cannot be applied: the model runs on the image's own "
            f"pixels, and its maps are off if their scale differs. {fix}")


def describe_progress(progress: Progress, unit: str = "tiles") -> Progress:
    """The engine's progress record with a message that says what happened: how many
    ``unit`` are done, and how many of them were reused from an earlier run."""
    computed = progress.metrics.get("computed")
    if not progress.total or computed is None:
        return progress
    done, total = progress.step, progress.total
    reused = done - int(computed)
    if computed == 0 and done == total:
        message = f"reused finished maps: {done} of {total} {unit}"
    elif reused > 0:
        message = f"{done} of {total} {unit} ({reused} reused from an earlier run)"
    else:
        message = f"{done} of {total} {unit}"
    return Progress(progress.step, progress.total, message, dict(progress.metrics))


def result_summary(result: InferenceResult, unit: str = "tiles") -> str:
    """One line on a finished run: what was computed, what was reused, where the maps are."""
    total, computed = result.tiles_total, result.tiles_computed
    where = f"maps in {result.path}"
    if computed == 0:
        return f"reused finished maps: {total} of {total} {unit}, nothing to compute; {where}"
    done = f"{computed} of {total} {unit} computed in {result.seconds:.1f} s on {result.device}"
    if computed < total:
        done += f" ({total - computed} reused from an earlier run)"
    return f"{done}; {where}"


class InferenceSession:
    """State behind the inference widget: model cache, output folder, the running job.

    Parameters
    ----------
    project : Project or path, optional
        Maps go to ``project/maps/<slide>.zarr``; without a project, into a temporary folder
        owned by the session.
    """

    def __init__(self, project: Project | str | Path | None = None) -> None:
        self.project = project if isinstance(project, Project) or project is None else Project.open(project)
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._models: dict[tuple[str, str], WslModel] = {}
        self._cancel = threading.Event()
        self.running = False
        self.store: MapStore | None = None
        self.slide_name: str = ""
        #: What the job counts: ``"tiles"`` of a slide, ``"patches"`` of a folder.
        self.unit = "tiles"

    # ------------------------------------------------------------------ set-up
    def set_project(self, project: Project | str | Path | None) -> None:
        """Write maps into this project from now on (None: a temporary folder)."""
        self.project = project if isinstance(project, Project) or project is None else Project.open(project)

    def model(self, choice: ModelChoice = DEFAULT_MODEL, device: str = "auto") -> WslModel:
        """The model for ``choice`` (loaded once per choice and device)."""
        key = (repr(choice) if callable(choice) else str(choice), str(device))
        if key not in self._models:
            self._models[key] = load_inference_model(choice, device)
        return self._models[key]

    def store_for(self, reader: SlideReader) -> MapStore:
        """The map store of a slide (in the project, or the session's temporary folder)."""
        name = slide_key(reader.name)
        if self.project is not None:
            name = self.project.add_slide(reader.path, name=name, mpp=given_mpp(reader))
            return MapStore(self.project.maps_path(name))
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="wslal-maps-")
        return MapStore(Path(self._scratch.name) / f"{name}.zarr")

    def class_of_interest(self) -> str | None:
        """The class whose map is shown first: the project's ``class_of_interest`` setting
        when it names one of its classes, else None (the last class)."""
        if self.project is None:
            return None
        chosen = self.project.settings.get(CLASS_OF_INTEREST_SETTING)
        return chosen if chosen in self.project.class_names else None

    # ------------------------------------------------------------------ the job
    def run(self, reader: SlideReader, model: WslModel, config: InferenceConfig,
            region: tuple[int, int, int, int] | None = None, tissue=None):
        """The inference job as a generator (for ``create_worker``); stops after :meth:`cancel`.

        Cancelling ends the job in its own thread between two batches, so the reader and
        writer threads are stopped and the store is left ready to resume. The generator then
        returns None instead of an :class:`InferenceResult`. Progress messages say how many
        tiles (patches) are done and how many were reused (:func:`describe_progress`).
        """
        self._cancel.clear()
        return (yield from self._run(reader, model, config, region, tissue))

    def _run(self, reader, model, config, region, tissue):
        self.running = True
        self.unit = "patches" if is_patch_folder(reader) else "tiles"
        self.store = self.store_for(reader)
        self.slide_name = reader.name
        job = infer_slide(reader, model, config, self.store, region=region, tissue=tissue)
        try:
            while not self._cancel.is_set():
                try:
                    progress: Progress = next(job)
                except StopIteration as stop:
                    result: InferenceResult = stop.value
                    return result
                yield describe_progress(progress, self.unit)
            return None
        finally:
            job.close()
            self.running = False

    def run_with_model(self, reader: SlideReader, choice: ModelChoice, config: InferenceConfig,
                       region: tuple[int, int, int, int] | None = None,
                       project: str | Path | None = None):
        """Like :meth:`run`, loading the model first (in the worker thread, not the UI's).

        With ``project``, maps go into that project folder, created with the model's classes
        when it does not exist yet (and opened, with its own classes, when it does).

        Before the tiles, it yields a record for each stage, with the message of what is
        happening now (``"loading the model…"``, ``"detecting tissue…"``), and one whose
        ``metrics["warning"]`` says when the model's resolution cannot be applied
        (:func:`resolution_warning`). Cancelling during a stage returns None after it.
        """
        self._cancel.clear()
        self.unit = "patches" if is_patch_folder(reader) else "tiles"
        yield Progress(0, None, "loading the model…")
        model = self.model(choice, config.device)
        if project is not None and (
            self.project is None or Path(self.project.path) != Path(project)
        ):
            self.set_project(Project.create(project, classes=model.classes, exist_ok=True))
        if self.project is not None:
            self.project.check_model_classes(model.classes)
        warning = resolution_warning(reader, model, config)
        if warning is not None:
            yield Progress(0, None, warning, {"warning": warning})
        tissue = None
        gated = config.tissue_gate and {"cam", "fg", "bg"} & set(config.expanded_maps())
        if not is_patch_folder(reader) and (config.tissue_threshold > 0 or gated):
            if self._cancel.is_set():
                return None
            from ..data.tissue import tissue_mask

            yield Progress(0, None, "detecting tissue…")
            tissue = tissue_mask(reader)
        if self._cancel.is_set():
            return None
        yield Progress(0, None, f"running the model on the first {self.unit}…")
        return (yield from self._run(reader, model, config, region, tissue))

    def cancel(self) -> None:
        """Ask the running job to stop after the current batch."""
        self._cancel.set()

    def handles(self) -> dict[str, MapHandle]:
        """Fresh handles on the current store's maps (re-read what was written since)."""
        if self.store is None or not self.store.exists():
            return {}
        return self.store.handles()

    def layer_specs(self) -> list[MapLayerSpec]:
        """Layer specifications of the current maps (empty before the store exists): short
        names, the class of interest's CAM shown, ``metadata["wslal_store"]`` the store."""
        specs = map_layer_specs(self.handles(), self.slide_name,
                                class_of_interest=self.class_of_interest(), short_names=True)
        for spec in specs:
            spec.kwargs["metadata"]["wslal_store"] = str(self.store.path)
        return specs

    def outline(self, threshold: float) -> list[np.ndarray]:
        """Foreground outline polygons (world coordinates) of the current maps."""
        handles = self.handles()
        if "fg" not in handles:
            return []
        return foreground_outline(handles["fg"], threshold)

    def outline_data(self, threshold: float) -> OutlineData | None:
        """The thin foreground outline raster of the current maps (None without a foreground)."""
        handles = self.handles()
        if "fg" not in handles:
            return None
        return outline_data(handles["fg"], threshold)

    def close(self) -> None:
        """Stop a running job and remove the temporary folder, if any."""
        self.cancel()
        if self._scratch is not None and not self.running:
            self._scratch.cleanup()
            self._scratch = None
