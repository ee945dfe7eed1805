"""A Qt-free labelling session: one slide of a project, its suggestions, class keys and the label store.

The Active learning dock widget is a thin view over a :class:`LabellingSession`: every key
press, click and button becomes one method call here, and everything a method stores is
committed to ``labels.sqlite`` when it returns (a label, a skipped suggestion, an undo).
Choosing classes (keys 1-9) only changes what :meth:`LabellingSession.confirm` will store.

Navigation
----------
The session walks the slide's latest batch of suggestions (every status: pending, labelled,
skipped), in the order they were stored (most useful first):

* :meth:`~LabellingSession.next` and :meth:`~LabellingSession.previous` step one suggestion
  and **stop at the ends** (they return None and the current region stays);
* :meth:`~LabellingSession.confirm` and :meth:`~LabellingSession.skip` move to the next
  *pending* suggestion from the current place on, **wrapping around** to earlier pending ones;
  when none is left, no region is current;
* clicking any superpixel (:meth:`~LabellingSession.select_region`) makes it current; the
  place in the list stays, so after labelling it the walk goes on where it was.

Class keys
----------
Region classes are ``("background", *project classes)`` (:func:`~.rounds.region_classes`).
Class ``i`` has the key ``str(i + 1)`` (background ``1``, then the project's classes) unless
the project's :class:`~napari_wsl_al.core.project.ClassSpec` entries give keys that are one
character each, unique over the region classes and none of the command keys (``s``, ``u``);
otherwise every class takes its positional key (:func:`class_keys`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np
from skimage.measure import approximate_polygon

from ..errors import ActiveLearningError, ProjectError
from ..progress import Progress
from ..project import PROJECT_FILE, Project
from .labels import LabelStore, RegionLabel, Suggestion
from .rounds import (
    BACKGROUND,
    ALSettings,
    label_region,
    region_classes,
    run_round,
    suggest,
    superpixels_path,
)
from .superpixels import SuperpixelMap

#: Labelling modes: one class per region (a key sets it), or several (keys toggle them).
MODES = ("dominant", "multi")

#: Colour of the background class when the project does not list one.
BACKGROUND_COLOUR = "#808080"

#: Keys taken by commands (skip, undo), never given to a class.
COMMAND_KEYS = ("s", "u")

#: Fraction of the view's side that a region's bounding box fills when the camera centres it.
VIEW_FRACTION = 0.25

#: Most screen pixels per level-0 slide pixel the camera zooms to: beyond it the slide only
#: gets blurrier, and a small region is shown with more of its surroundings instead.
MAX_SCREEN_PX_PER_SLIDE_PX = 2.0

#: Largest distance (working pixels) between a drawn outline and the superpixel's pixel
#: staircase: the outlines lose most of their vertices, and drawing them gets fast.
OUTLINE_TOLERANCE_PX = 0.5


def class_keys(project: Project) -> tuple[str, ...]:
    """The key of each region class (``""``: no key, for classes after the ninth).

    Parameters
    ----------
    project : Project
        The study; its class specs may carry keys.

    Returns
    -------
    tuple of str
        One lower-case key per class of :func:`~.rounds.region_classes`, in order.
    """
    classes = region_classes(project)
    positional = tuple(str(index + 1) if index < 9 else "" for index in range(len(classes)))
    given = {spec.name: spec.key.strip().lower() for spec in project.classes}
    keys = tuple(given.get(name) or positional[index] for index, name in enumerate(classes))
    used = [key for key in keys if key]
    if len(set(used)) != len(used) or any(len(key) != 1 or key in COMMAND_KEYS for key in used):
        return positional
    return keys


def class_colours(project: Project) -> tuple[str, ...]:
    """The display colour of each region class (background grey unless the project lists it)."""
    colours = {spec.name: spec.colour for spec in project.classes}
    return tuple(colours.get(name, BACKGROUND_COLOUR) for name in region_classes(project))


@dataclass(frozen=True)
class CameraTarget:
    """Where the camera looks to show a region.

    Attributes
    ----------
    center : (float, float)
        ``(y, x)`` centre of the region's bounding box, in microns (the slide layer's frame).
    zoom : float
        Screen pixels per micron at which the box fills :data:`VIEW_FRACTION` of the view,
        at most :data:`MAX_SCREEN_PX_PER_SLIDE_PX` screen pixels per level-0 pixel.
    """

    center: tuple[float, float]
    zoom: float


@dataclass(frozen=True)
class SessionCounters:
    """What labelling has cost so far.

    Attributes
    ----------
    labels : int
        Live oracle labels on the project's slides.
    clicks : int
        Clicks spent on every oracle label given (undone ones too: the time was spent).
    seconds : float
        Seconds spent on every oracle label given.
    pending : int
        Suggestions of the session's slide still waiting for an answer.
    """

    labels: int
    clicks: int
    seconds: float
    pending: int


class LabelledShape(NamedTuple):
    """A labelled region to draw filled: its polygon, colour, and the label's row id."""

    polygon_um: np.ndarray
    colour: str
    label_id: int


def prepare_project(
    project_path: str | Path,
    slide_path: str | Path | None,
    slide_name: str,
    model: str = "default",
    mpp: float | None = None,
) -> tuple[Project, str]:
    """Open a project (or create it with the model's classes) and register a slide in it.

    Parameters
    ----------
    project_path : str or Path
        The project folder (``.wslal`` is appended to a new name without a suffix).
    slide_path : str or Path or None
        The slide file (None: a slide already registered under ``slide_name``).
    slide_name : str
        Name of the slide in the project.
    model : str
        ``"default"`` or a checkpoint whose classes a new project takes.
    mpp : float, optional
        Level-0 µm per pixel the user gave the open slide (:func:`~.io.base.given_mpp`):
        recorded in the project, so that the slide is read at it.

    Returns
    -------
    project : Project
    slide : str
        The slide's name in the project.

    Raises
    ------
    ProjectError
        When the project is damaged, the slide has no file and is not registered, or ``mpp``
        contradicts the resolution of the slide's superpixels.
    CheckpointError
        When a new project's model cannot be loaded.
    """
    project_path = Path(project_path)
    if (project_path / PROJECT_FILE).is_file():
        project = Project.open(project_path)
    else:
        from ..infer.loading import load_inference_model

        classes = load_inference_model(model, "cpu").classes
        project = Project.create(project_path, classes=list(classes), exist_ok=True)
    if slide_path is None:
        if slide_name not in project.slide_names():
            raise ProjectError(
                f"no slide named {slide_name!r} in the project",
                path=project.path / PROJECT_FILE,
                hint="open the slide file in napari first",
            )
        if mpp is not None:
            project.set_slide_mpp(slide_name, mpp)
        return project, slide_name
    return project, project.add_slide(slide_path, name=slide_name, mpp=mpp)


def suggest_for_slide(
    project_path: str | Path,
    slide_path: str | Path | None,
    slide_name: str,
    strategy: str | None = None,
    n: int | None = None,
    mpp: float | None = None,
) -> Generator[Progress, None, tuple[Project, str, Any]]:
    """:func:`prepare_project` (``mpp`` as there), then :func:`~.rounds.suggest` with the
    project's settings.

    Returns
    -------
    project : Project
    slide : str
    selection : Selection
        The stored suggestions.
    """
    yield Progress(0, None, "opening the project")
    project, slide = prepare_project(project_path, slide_path, slide_name, mpp=mpp)
    settings = ALSettings.of_project(project)
    selection = yield from suggest(project, slide, settings, strategy=strategy, n=n)
    return project, slide, selection


def open_session(
    project: Project, slide: str, mode: str = "dominant"
) -> LabellingSession:
    """A :class:`LabellingSession` with its outlines and label polygons computed
    (:meth:`LabellingSession.warm`), for a worker thread to hand to the UI ready to draw."""
    session = LabellingSession(project, slide, mode=mode)
    session.warm()
    return session


def suggest_and_open(
    project_path: str | Path,
    slide_path: str | Path | None,
    slide_name: str,
    strategy: str | None = None,
    n: int | None = None,
    mode: str = "dominant",
    mpp: float | None = None,
) -> Generator[Progress, None, tuple[Project, str, Any, LabellingSession]]:
    """:func:`suggest_for_slide` (``mpp`` as there), then :func:`open_session` on the slide.

    Returns
    -------
    project, slide, selection
        As :func:`suggest_for_slide`.
    session : LabellingSession
        On the new suggestions, warmed.
    """
    project, slide, selection = yield from suggest_for_slide(
        project_path, slide_path, slide_name, strategy, n, mpp
    )
    yield Progress(0, None, "outlining the suggestions")
    return project, slide, selection, open_session(project, slide, mode)


def round_and_open(
    project: Project, settings: ALSettings, slide: str | None, mode: str = "dominant"
) -> Generator[Progress, None, tuple[dict, LabellingSession | None]]:
    """:func:`~.rounds.run_round`, then :func:`open_session` on ``slide`` (None: no session).

    Returns
    -------
    result : dict
        What :func:`~.rounds.run_round` returned.
    session : LabellingSession or None
        On the round's new suggestions, warmed.
    """
    result = yield from run_round(project, settings)
    if slide is None or slide not in project.slide_names():
        return result, None
    yield Progress(0, None, "outlining the new suggestions")
    return result, open_session(project, slide, mode)


class LabellingSession:
    """The state of labelling one slide of a project.

    Parameters
    ----------
    project : Project
        The study.
    slide : str
        A slide registered in the project.
    superpixels : SuperpixelMap, optional
        The slide's regions; opened from the project when they exist (else None until
        :meth:`refresh` finds them, after a first Suggest).
    store : LabelStore, optional
        The label database; opened (and closed by :meth:`close`) when not given.
    clock : callable
        Seconds, monotonic (``time.monotonic``; a fake one in tests).
    mode : {"dominant", "multi"}
        Labelling mode.

    Raises
    ------
    ProjectError
        When the slide is not in the project.
    """

    def __init__(
        self,
        project: Project,
        slide: str,
        *,
        superpixels: SuperpixelMap | None = None,
        store: LabelStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        mode: str = "dominant",
    ) -> None:
        if slide not in project.slide_names():
            raise ProjectError(
                f"no slide named {slide!r} in the project",
                path=project.path / PROJECT_FILE,
                hint=f"known slides: {', '.join(project.slide_names()) or 'none'}",
            )
        self.project = project
        self.slide = slide
        self.classes = region_classes(project)
        self.keys = class_keys(project)
        self.colours = class_colours(project)
        self.superpixels = superpixels
        self._owns_store = store is None
        self.store = LabelStore.for_project(project.path) if store is None else store
        self._clock = clock
        self._chosen: frozenset[int] = frozenset()
        self.set_mode(mode)
        self.suggestions: list[Suggestion] = []
        self.position: int | None = None
        self.current_region: int | None = None
        self._outlines: dict[int, np.ndarray] = {}
        self._label_polygons: dict[int, np.ndarray] = {}
        self.refresh()
        self.first_pending()

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def open(cls, project_path: str | Path, slide: str, **kwargs: Any) -> LabellingSession:
        """A session over ``slide`` of the project at ``project_path``."""
        return cls(Project.open(project_path), slide, **kwargs)

    def close(self) -> None:
        """Close the label store when the session opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def refresh(self) -> None:
        """Read the suggestions again (after Suggest or a round) and open new superpixels.

        The current region stays current; the place in the list follows it.
        """
        path = superpixels_path(self.project, self.slide)
        if self.superpixels is None and path.exists():
            self.superpixels = SuperpixelMap.open(path)
        stored = self.store.suggestions(self.slide)
        latest = max((s.round for s in stored), default=0)
        self.suggestions = [s for s in stored if s.round == latest]
        ids = [s.region_id for s in self.suggestions]
        if self.current_region in ids:
            self.position = ids.index(self.current_region)
        elif self.position is not None and self.position >= len(ids):
            self.position = len(ids) - 1 if ids else None

    # ------------------------------------------------------------------ state
    @property
    def chosen(self) -> tuple[str, ...]:
        """Classes chosen for the current region, in class order."""
        return tuple(self.classes[index] for index in sorted(self._chosen))

    @property
    def pending(self) -> list[Suggestion]:
        """Suggestions of the latest batch still waiting for an answer."""
        return [s for s in self.suggestions if s.status == "pending"]

    def elapsed(self) -> float:
        """Seconds spent on the current region so far."""
        return self._clock() - self._started

    def set_mode(self, mode: str) -> None:
        """Switch between ``"dominant"`` and ``"multi"``; several chosen classes are cleared
        when switching to dominant."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        if mode == "dominant" and len(self._chosen) > 1:
            self._chosen = frozenset()

    def _set_current(self, region_id: int | None, position: int | None) -> int | None:
        """Make a region current: its live label's classes are chosen; the timer restarts."""
        self.current_region = region_id
        self.position = position
        label = None if region_id is None else self.store.get(self.slide, region_id)
        index = {name: i for i, name in enumerate(self.classes)}
        self._chosen = frozenset(
            index[name] for name in (label.classes if label else ()) if name in index
        )
        self._started = self._clock()
        return region_id

    # ------------------------------------------------------------------ navigation
    def go_to(self, index: int) -> int:
        """Make the ``index``-th suggestion current (a click in the list); returns its region."""
        if not 0 <= index < len(self.suggestions):
            raise IndexError(f"there are {len(self.suggestions)} suggestions, not {index + 1}")
        return self._set_current(self.suggestions[index].region_id, index)

    def first_pending(self) -> int | None:
        """Go to the first pending suggestion; returns its region, or None when none is left."""
        self.position = None
        return self._advance()

    def next(self) -> int | None:
        """Go to the next suggestion (stops at the last: returns None and stays)."""
        if not self.suggestions:
            return None
        index = 0 if self.position is None else self.position + 1
        if index >= len(self.suggestions):
            return None
        return self.go_to(index)

    def previous(self) -> int | None:
        """Go to the previous suggestion (stops at the first: returns None and stays); with no
        place in the list (every suggestion answered) it goes to the last one."""
        if not self.suggestions:
            return None
        index = len(self.suggestions) - 1 if self.position is None else self.position - 1
        if index < 0:
            return None
        return self.go_to(index)

    def _advance(self) -> int | None:
        """Go to the first pending suggestion from the current place on, wrapping around."""
        start = 0 if self.position is None else self.position
        count = len(self.suggestions)
        for offset in range(count):
            index = (start + offset) % count
            if self.suggestions[index].status == "pending":
                return self.go_to(index)
        return self._set_current(None, None)

    def select_region(self, region_id: int) -> int:
        """Make any superpixel current (a click on the slide); returns its id.

        Raises
        ------
        ActiveLearningError
            When the slide has no superpixels yet or has no such region.
        """
        if self.superpixels is None:
            raise ActiveLearningError(
                f"slide {self.slide!r} has no superpixels yet", hint="press Suggest first"
            )
        region_id = int(region_id)
        if not 0 < region_id <= self.superpixels.n_regions:
            raise ActiveLearningError(
                f"slide {self.slide!r} has no superpixel {region_id}",
                hint=f"ids run from 1 to {self.superpixels.n_regions}",
            )
        ids = [s.region_id for s in self.suggestions]
        position = ids.index(region_id) if region_id in ids else self.position
        return self._set_current(region_id, position)

    def select_at(self, y_um: float, x_um: float) -> int:
        """Select the superpixel under a point of the slide (microns); returns its id, or 0
        (and nothing changes) when no region is there."""
        if self.superpixels is None:
            return 0
        region_id = self.superpixels.region_at(y_um, x_um)
        if region_id:
            self.select_region(region_id)
        return region_id

    # ------------------------------------------------------------------ answers
    def class_for_key(self, key: str) -> int | None:
        """The class index of a key (case-insensitive), or None."""
        key = key.lower()
        return self.keys.index(key) if key and key in self.keys else None

    def press_class(self, index: int) -> tuple[str, ...]:
        """A class key: sets the class (dominant mode) or toggles it (multi mode).

        Returns
        -------
        tuple of str
            The chosen classes now.
        """
        if not 0 <= index < len(self.classes):
            raise IndexError(f"there are {len(self.classes)} classes, not {index + 1}")
        if self.mode == "dominant":
            self._chosen = frozenset({index})
        else:
            self._chosen = self._chosen ^ {index}
        return self.chosen

    def round_number(self) -> int:
        """The round whose model is current (0 before the first round): labels given now
        belong to it."""
        return self.store.last_done_round() or 0

    def confirm(self) -> RegionLabel:
        """Store the chosen classes as the current region's label and go to the next pending
        suggestion (Enter).

        Clicks are the number of classes; seconds run from when the region became current.

        Raises
        ------
        ActiveLearningError
            When no region is current or no class is chosen.
        """
        if self.current_region is None:
            raise ActiveLearningError(
                "no region to label", hint="press Suggest, Next, or click a superpixel"
            )
        if not self._chosen:
            keys = ", ".join(f"{k} {c}" for k, c in zip(self.keys, self.classes) if k)
            raise ActiveLearningError("no class chosen", hint=f"press a class key first ({keys})")
        label = label_region(
            self.store,
            self.superpixels,
            self.slide,
            self.current_region,
            self.chosen,
            seconds=self.elapsed(),
            round_number=self.round_number(),
        )
        self.refresh()
        self._advance()
        return label

    def skip(self) -> bool:
        """Mark the current suggestion skipped and go to the next pending one (S).

        Returns
        -------
        bool
            False when the current region is not a suggestion (nothing is stored, the walk
            goes on).
        """
        marked = False
        if self.current_region is not None:
            marked = self.store.mark_suggestion(self.slide, self.current_region, "skipped")
        self.refresh()
        self._advance()
        return marked

    def undo(self) -> RegionLabel | None:
        """Undo the project's last label action (U, Ctrl+Z); its region becomes current again.

        Returns
        -------
        RegionLabel or None
            What :meth:`LabelStore.undo` returned (None: nothing to undo).
        """
        label = self.store.undo()
        self.refresh()
        if label is not None and label.slide == self.slide:
            self.select_region(label.region_id)
        return label

    # ------------------------------------------------------------------ drawing
    def warm(self) -> None:
        """Compute the outlines of the pending suggestions and the label polygons now (in
        a worker thread), so that drawing them later costs no reading or tracing."""
        self.pending_outlines()
        self.labelled_polygons()

    def _simplified(self, polygon_um: np.ndarray) -> np.ndarray:
        """A closed polygon with the vertices within :data:`OUTLINE_TOLERANCE_PX` dropped."""
        return approximate_polygon(polygon_um, OUTLINE_TOLERANCE_PX * self.superpixels.scale[0])

    def outline_um(self, region_id: int) -> np.ndarray:
        """Closed ``(N, 2)`` ``(y, x)`` polygon of a region in microns, simplified (cached)."""
        if region_id not in self._outlines:
            outline = self.superpixels.outline_um([region_id])[region_id]
            self._outlines[region_id] = self._simplified(outline)
        return self._outlines[region_id]

    def current_outline_um(self) -> np.ndarray | None:
        """Polygon of the current region, or None."""
        return None if self.current_region is None else self.outline_um(self.current_region)

    def pending_outlines(self) -> list[tuple[int, np.ndarray]]:
        """``(region id, polygon)`` of every pending suggestion."""
        if self.superpixels is None:
            return []
        return [(s.region_id, self.outline_um(s.region_id)) for s in self.pending]

    def camera_target(self, view_px: tuple[float, float]) -> CameraTarget | None:
        """Centre and zoom at which the current region is judged (None: no region).

        Parameters
        ----------
        view_px : (float, float)
            ``(height, width)`` of the view in screen pixels.
        """
        if self.current_region is None:
            return None
        sp = self.superpixels
        row0, col0, row1, col1 = (float(v) for v in sp.bboxes[self.current_region])
        step, unit = sp.downsample * sp.level0_mpp, sp.level0_mpp
        center = (((row0 + row1) * step - unit) / 2, ((col0 + col1) * step - unit) / 2)
        height, width = (row1 - row0) * step, (col1 - col0) * step
        zoom = VIEW_FRACTION * min(view_px[0] / height, view_px[1] / width)
        return CameraTarget(center=center, zoom=min(zoom, MAX_SCREEN_PX_PER_SLIDE_PX / unit))

    def label_colour(self, label: RegionLabel) -> str:
        """A label's fill colour: its dominant class, else its first class other than the
        background, else the background's."""
        colours = dict(zip(self.classes, self.colours))
        named = [name for name in label.classes if name != BACKGROUND]
        name = label.dominant or (named[0] if named else BACKGROUND)
        return colours.get(name, BACKGROUND_COLOUR)

    def labelled_polygons(self) -> list[LabelledShape]:
        """The slide's live oracle labels as filled, closed polygons in microns, simplified as
        :meth:`outline_um` (stored outlines, or the superpixels' for labels stored without one;
        none before the superpixels exist)."""
        if self.superpixels is None:
            return []
        unit = self.superpixels.level0_mpp
        shapes = []
        for label in self.store.current(self.slide, source="oracle"):
            polygon = self._label_polygons.get(label.id)
            if polygon is None and label.polygon is not None:
                ring = (np.asarray(label.polygon, dtype=np.float64)[:, ::-1] - 0.5) * unit
                polygon = self._simplified(np.concatenate([ring, ring[:1]]))
            elif polygon is None:
                polygon = self.outline_um(label.region_id)
            self._label_polygons[label.id] = polygon
            shapes.append(LabelledShape(polygon, self.label_colour(label), label.id))
        return shapes

    def counters(self) -> SessionCounters:
        """Labels, clicks and seconds of the project; pending suggestions of the slide."""
        return SessionCounters(
            labels=sum(len(self.store.labelled_ids(name)) for name in self.project.slide_names()),
            clicks=self.store.total_clicks(),
            seconds=self.store.total_seconds(),
            pending=len(self.pending),
        )
