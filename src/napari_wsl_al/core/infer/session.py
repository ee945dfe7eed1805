"""What the inference widget does, without Qt: model choice, job with cancel, layer specs, outlines.

:class:`InferenceSession` is owned by the dock widget, which only wires signals to it. It turns
map handles into plain ``(data, kwargs)`` layer specifications (multiscale levels, scale and
translate in microns, colormaps) and the foreground map into outline polygons, so everything
here is testable without napari.
"""

from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.base import SlideReader
from ..models.base import WslModel
from ..progress import Progress
from ..project import Project, slide_key
from .engine import InferenceConfig, InferenceResult, infer_slide
from .loading import DEFAULT_MODEL, ModelChoice, load_inference_model
from .store import MapHandle, MapStore

#: Longest side of the map level the foreground outline is traced on.
OUTLINE_MAX_SIZE = 2048

#: Most outline polygons drawn (the longest ones).
OUTLINE_MAX_POLYGONS = 400

#: Display of each kind of map: colormap, blending, opacity, shown at first.
MAP_STYLE = {
    "cam": {"colormap": "inferno", "blending": "translucent", "opacity": 0.5},
    "fg": {"colormap": "green", "blending": "additive", "opacity": 0.5},
    "bg": {"colormap": "magenta", "blending": "additive", "opacity": 0.5},
    "probs": {"colormap": "cyan", "blending": "additive", "opacity": 0.5},
    "seg": {"colormap": "cyan", "blending": "additive", "opacity": 0.5},
    "uncertainty": {"colormap": "viridis", "blending": "translucent", "opacity": 0.5},
}

#: Maps shown when they first appear (the others are added hidden).
VISIBLE_AT_FIRST = ("fg", "uncertainty/ovr_entropy_max")


@dataclass(frozen=True)
class MapLayerSpec:
    """One napari image layer of a map (one channel of a multi-channel map).

    Attributes
    ----------
    name : str
        Layer name: ``"<slide> <map>"`` or ``"<slide> <map> <channel>"``.
    data : list of dask arrays
        Pyramid levels (2-D), largest first.
    kwargs : dict
        ``scale``, ``translate``, ``colormap``, ``blending``, ``opacity``, ``contrast_limits``,
        ``visible``, ``multiscale``, ``metadata``.
    """

    name: str
    data: list
    kwargs: dict[str, Any]


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


def map_layer_specs(handles: dict[str, MapHandle], slide_name: str,
                    skip: tuple[str, ...] = ("uncertainty/ovr_entropy",)) -> list[MapLayerSpec]:
    """Layer specifications of every map: one per channel, scale/translate in microns.

    Parameters
    ----------
    handles : dict of str to MapHandle
        From :meth:`MapStore.handles`.
    slide_name : str
        Prefix of the layer names.
    skip : tuple of str
        Maps not turned into layers (per-class one-vs-rest entropy: its maximum is shown).
    """
    specs = []
    for name, handle in handles.items():
        if name in skip:
            continue
        style = dict(MAP_STYLE.get(handle.kind, MAP_STYLE["uncertainty"]))
        channels = handle.channels or (None,)
        class_count = len(handles["probs"].channels) if "probs" in handles else 2
        for index, channel in enumerate(channels):
            data = [level if channel is None else level[index] for level in handle.levels]
            visible = name in VISIBLE_AT_FIRST or (name == "cam" and index == 0)
            short = name.split("/")[-1]
            label = short if channel is None else f"{short} {channel}"
            specs.append(MapLayerSpec(
                name=f"{slide_name} {label}",
                data=data,
                kwargs={
                    "multiscale": True,
                    "scale": handle.scale,
                    "translate": handle.translate,
                    "contrast_limits": contrast_limits(handle, class_count),
                    "visible": visible,
                    "metadata": {"wslal_map": name, "channel": channel},
                    **({"units": "um"} if handle.unit == "micrometer" else {}),
                    **style,
                },
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
    x0, y0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
    x1, y1 = min(dimensions[0], int(math.ceil(x1))), min(dimensions[1], int(math.ceil(y1)))
    return (x0, y0, max(1, x1 - x0), max(1, y1 - y0))


def region_from_points(points_level0: np.ndarray,
                       dimensions: tuple[int, int]) -> tuple[int, int, int, int]:
    """The level-0 bounding box ``(x, y, w, h)`` of ``(N, 2)`` ``(y, x)`` points (a rectangle)."""
    points = np.asarray(points_level0, dtype=float)[:, -2:]
    y0, x0 = points.min(axis=0)
    y1, x1 = points.max(axis=0)
    x0, y0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
    x1, y1 = min(dimensions[0], int(math.ceil(x1))), min(dimensions[1], int(math.ceil(y1)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the rectangle lies outside the slide")
    return (x0, y0, x1 - x0, y1 - y0)


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
            name = self.project.add_slide(reader.path, name=name)
            return MapStore(self.project.maps_path(name))
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="wslal-maps-")
        return MapStore(Path(self._scratch.name) / f"{name}.zarr")

    # ------------------------------------------------------------------ the job
    def run(self, reader: SlideReader, model: WslModel, config: InferenceConfig,
            region: tuple[int, int, int, int] | None = None):
        """The inference job as a generator (for ``create_worker``); stops after :meth:`cancel`.

        Cancelling ends the job in its own thread between two batches, so the reader and
        writer threads are stopped and the store is left ready to resume. The generator then
        returns None instead of an :class:`InferenceResult`.
        """
        self._cancel.clear()
        self.running = True
        self.store = self.store_for(reader)
        self.slide_name = reader.name
        job = infer_slide(reader, model, config, self.store, region=region)
        try:
            while not self._cancel.is_set():
                try:
                    progress: Progress = next(job)
                except StopIteration as stop:
                    result: InferenceResult = stop.value
                    return result
                yield progress
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
        """
        model = self.model(choice, config.device)
        if project is not None and (
            self.project is None or Path(self.project.path) != Path(project)
        ):
            self.set_project(Project.create(project, classes=model.classes, exist_ok=True))
        if self.project is not None:
            self.project.check_model_classes(model.classes)
        return (yield from self.run(reader, model, config, region))

    def cancel(self) -> None:
        """Ask the running job to stop after the current batch."""
        self._cancel.set()

    def handles(self) -> dict[str, MapHandle]:
        """Fresh handles on the current store's maps (re-read what was written since)."""
        if self.store is None or not self.store.exists():
            return {}
        return self.store.handles()

    def layer_specs(self) -> list[MapLayerSpec]:
        """Layer specifications of the current maps (empty before the store exists)."""
        return map_layer_specs(self.handles(), self.slide_name)

    def outline(self, threshold: float) -> list[np.ndarray]:
        """Foreground outline polygons (world coordinates) of the current maps."""
        handles = self.handles()
        if "fg" not in handles:
            return []
        return foreground_outline(handles["fg"], threshold)

    def close(self) -> None:
        """Stop a running job and remove the temporary folder, if any."""
        self.cancel()
        if self._scratch is not None and not self.running:
            self._scratch.cleanup()
            self._scratch = None
