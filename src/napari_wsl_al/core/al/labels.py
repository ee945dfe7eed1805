"""Crash-safe store of a project's region labels, undo history, rounds and suggestions (``labels.sqlite``).

Every label is committed the moment it is given: each write is one SQLite transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``) that is finished before the call returns. The database
runs in write-ahead-log mode, so a GUI and a command line process can read and write the same
project at once; a writer waits up to ``busy_timeout_s`` for another one to finish.
``synchronous=FULL`` makes every commit fsync the log: a killed process *and* a power cut lose
at most the label in flight. ``NORMAL`` would survive a killed process too but may lose the
last commits on a power cut; labels come at the pace of key presses, so the extra fsync costs
nothing anyone notices (bulk writes such as pseudo labels are one transaction, one fsync).

One connection serves every thread of a process (``check_same_thread=False``), each call
holding a lock, so widget callbacks and worker threads can share a :class:`LabelStore`.

An existing file is first opened read-only and checked (``quick_check``, schema version): a
damaged file, a file that is no label database or one written by a newer napari-wsl-al is
refused with a :class:`~napari_wsl_al.core.errors.LabelStoreError` and never modified.

Labels are rows that are never overwritten: labelling a region again marks the earlier label
as superseded (``live = 0``) and adds a new row. Every change to oracle labels (add, relabel,
delete, import) is one *action* of the undo history; :meth:`LabelStore.undo` and
:meth:`LabelStore.redo` move along it, and a new action drops what was undone. Pseudo labels
(``source="pseudo"``) are the model's and have no undo history.
"""

from __future__ import annotations

import csv
import json
import math
import operator
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import LabelStoreError

#: Version of the database layout written by this module (``PRAGMA user_version``).
SCHEMA_VERSION = 1

#: Name of the label database inside a project folder.
LABELS_FILE = "labels.sqlite"

#: Who gave a label: a person (or a simulated one), or the model.
SOURCES = ("oracle", "pseudo")

#: States of a round.
ROUND_STATUSES = ("running", "done", "failed")

#: States of a suggested region.
SUGGESTION_STATUSES = ("pending", "labelled", "skipped")

#: Reason given to rounds found running by :meth:`LabelStore.discard_unfinished`.
ABORTED_REASON = "aborted: the process running it stopped before the round finished"

#: Columns of the CSV export, in order.
CSV_COLUMNS = ("slide", "region_id", "classes", "dominant", "source", "round", "seconds",
               "clicks", "level", "bbox", "weight", "created")

#: Colour given in GeoJSON exports to classes missing from the class list (a background class).
UNLISTED_CLASS_RGB = (128, 128, 128)

#: Separator of QuPath's derived class names (``"Tumour: Stroma"``).
QUPATH_CLASS_SEPARATOR = ": "

# os.kill(pid, 0) would end the process on Windows: there, only this process is known alive.
_ON_WINDOWS = os.name == "nt"

_SCHEMA = (
    """CREATE TABLE labels (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        slide TEXT NOT NULL,
        region_id INTEGER NOT NULL,
        classes TEXT NOT NULL,
        dominant TEXT,
        source TEXT NOT NULL CHECK (source IN ('oracle', 'pseudo')),
        round INTEGER,
        seconds REAL NOT NULL,
        clicks INTEGER,
        level INTEGER NOT NULL,
        bbox TEXT,
        polygon TEXT,
        weight REAL NOT NULL,
        created TEXT NOT NULL,
        live INTEGER NOT NULL)""",
    "CREATE UNIQUE INDEX labels_live ON labels (slide, region_id, source) WHERE live = 1",
    """CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        action INTEGER NOT NULL,
        slide TEXT NOT NULL,
        region_id INTEGER NOT NULL,
        before_id INTEGER REFERENCES labels (id),
        after_id INTEGER REFERENCES labels (id),
        undone INTEGER NOT NULL,
        created TEXT NOT NULL)""",
    "CREATE INDEX history_action ON history (action)",
    """CREATE TABLE rounds (
        number INTEGER PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
        settings TEXT NOT NULL,
        metrics TEXT NOT NULL,
        checkpoint TEXT,
        reason TEXT,
        started TEXT NOT NULL,
        finished TEXT,
        labels_used INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL)""",
    """CREATE TABLE suggestions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        slide TEXT NOT NULL,
        region_id INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        score REAL,
        strategy TEXT NOT NULL,
        round INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'labelled', 'skipped')),
        classes TEXT,
        created TEXT NOT NULL)""",
    "CREATE INDEX suggestions_region ON suggestions (slide, region_id)",
)

_LABEL_COLUMNS = ("id, slide, region_id, classes, dominant, source, round, seconds, clicks, "
                  "level, bbox, polygon, weight, created")

_INSERT_LABEL = ("INSERT INTO labels (slide, region_id, classes, dominant, source, round, "
                 "seconds, clicks, level, bbox, polygon, weight, created, live) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)")

_ROUND_COLUMNS = ("number, status, settings, metrics, checkpoint, started, finished, "
                  "labels_used, reason")

_SUGGESTION_COLUMNS = "slide, region_id, rank, score, strategy, round, status, classes"

# A suggestion is "labelled" while its region has a live oracle label; one that loses its
# label (undo, delete) is pending again; a skipped one stays skipped until labelled.
_SYNC_SUGGESTION = (
    "UPDATE suggestions SET status = CASE WHEN EXISTS (SELECT 1 FROM labels "
    "WHERE labels.slide = suggestions.slide AND labels.region_id = suggestions.region_id "
    "AND labels.source = 'oracle' AND labels.live = 1) THEN 'labelled' "
    "WHEN status = 'labelled' THEN 'pending' ELSE status END "
    "WHERE slide = ? AND region_id = ?")


@dataclass(frozen=True)
class RegionLabel:
    """One label of one region (superpixel) of one slide.

    Attributes
    ----------
    id : int
        Row id; grows with every label given.
    slide : str
        Slide name in the project.
    region_id : int
        Superpixel id.
    classes : tuple of str
        Classes present in the region (one in dominant mode, several for a multi-hot answer).
    dominant : str or None
        The class covering most of the region, when the answer says so.
    source : {"oracle", "pseudo"}
        A person's answer, or the model's pseudo label.
    round : int or None
        Round during which the label was given.
    seconds : float
        Time spent giving the label.
    clicks : int or None
        Clicks spent giving the label.
    level : int
        Slide level the region was shown at.
    bbox : tuple of int or None
        ``(x0, y0, x1, y1)`` in level-0 pixels.
    polygon : tuple of (float, float) or None
        Outline in level-0 pixels ``(x, y)``, not closed (the first vertex is not repeated).
    weight : float
        Weight of the label in the training loss.
    created : str
        When the label was given, ISO 8601 in UTC.
    holes : tuple of tuple of (float, float)
        Outlines of the holes in ``polygon`` (other regions it encloses), in the same form;
        empty for a region without holes.
    """

    id: int
    slide: str
    region_id: int
    classes: tuple[str, ...]
    dominant: str | None
    source: str
    round: int | None
    seconds: float
    clicks: int | None
    level: int
    bbox: tuple[int, int, int, int] | None
    polygon: tuple[tuple[float, float], ...] | None
    weight: float
    created: str
    holes: tuple[tuple[tuple[float, float], ...], ...] = ()


@dataclass(frozen=True)
class RoundRecord:
    """One active-learning round in the round log.

    Attributes
    ----------
    number : int
        Round number.
    status : {"running", "done", "failed"}
        State of the round.
    settings : dict
        Settings the round ran with.
    metrics : dict
        Metrics of the finished round (empty before).
    checkpoint : str or None
        Checkpoint written by the round.
    started, finished : str or None
        ISO 8601 UTC times (``finished`` is None while running).
    labels_used : int
        Live oracle labels when the round started.
    reason : str or None
        Why a failed round failed.
    """

    number: int
    status: str
    settings: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint: str | None
    started: str
    finished: str | None
    labels_used: int
    reason: str | None


@dataclass(frozen=True)
class Suggestion:
    """A region suggested for labelling.

    Attributes
    ----------
    slide : str
        Slide name.
    region_id : int
        Superpixel id.
    rank : int
        Place in its batch, 1 for the most useful region.
    score : float
        Acquisition score (NaN when none was given).
    strategy : str
        Acquisition function that chose it.
    round : int
        Round whose model scored it.
    status : {"pending", "labelled", "skipped"}
        Whether the region is still waiting for a label.
    classes : tuple of str or None
        Classes the region was picked for (class-balanced selection), when given.
    """

    slide: str
    region_id: int
    rank: int
    score: float
    strategy: str
    round: int
    status: str
    classes: tuple[str, ...] | None


def _now() -> str:
    """The current time, ISO 8601 in UTC, to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_default(value: Any) -> Any:
    """JSON form of the numpy scalars and arrays, and paths, found in settings and metrics."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default)


def _class_names(classes: Iterable[Any]) -> list[str]:
    """Names of a class list given as ClassSpec objects or names."""
    return [getattr(item, "name", item) for item in classes]


def _rgb(colour: str) -> list[int]:
    """``"#rrggbb"`` as ``[r, g, b]``."""
    digits = colour.lstrip("#")
    if len(digits) != 6:
        raise ValueError(f"colour {colour!r} is not #rrggbb")
    return [int(digits[i : i + 2], 16) for i in (0, 2, 4)]


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (on Windows only this process is known)."""
    if pid == os.getpid():
        return True
    if _ON_WINDOWS:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _label_values(
    slide: str,
    region_id: int,
    classes: Sequence[str],
    *,
    dominant: str | None = None,
    source: str = "oracle",
    round: int | None = None,
    seconds: float = 0.0,
    clicks: int | None = None,
    level: int = 0,
    bbox: Sequence[int] | None = None,
    polygon: Any = None,
    weight: float = 1.0,
) -> tuple:
    """Check a label and return its column values (``slide`` ... ``weight``) for the database.

    Raises
    ------
    ValueError
        Naming the argument that is wrong.
    """
    if not isinstance(slide, str) or not slide:
        raise ValueError(f"slide must be a non-empty name, got {slide!r}")
    region_id = operator.index(region_id)
    if region_id < 0:
        raise ValueError(f"region_id must be >= 0, got {region_id}")
    if isinstance(classes, str):
        classes = (classes,)
    classes = tuple(classes)
    if not classes:
        raise ValueError("a label needs at least one class")
    for name in classes:
        if not isinstance(name, str) or not name or ";" in name:
            raise ValueError(f"class names must be non-empty strings without ';', got {name!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes repeat a name: {list(classes)}")
    if dominant is not None and dominant not in classes:
        raise ValueError(f"dominant class {dominant!r} is not among the classes {list(classes)}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    round = None if round is None else operator.index(round)
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be finite and >= 0, got {seconds}")
    clicks = None if clicks is None else operator.index(clicks)
    if clicks is not None and clicks < 0:
        raise ValueError(f"clicks must be >= 0, got {clicks}")
    level = operator.index(level)
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be finite and >= 0, got {weight}")
    polygon_json = None
    if polygon is not None:
        rings = [_ring(ring) for ring in _polygon_rings(polygon)]
        points = rings[0]
        polygon_json = _dumps([ring.tolist() for ring in rings] if len(rings) > 1
                              else points.tolist())
        if bbox is None:
            low = np.floor(points.min(axis=0)).astype(np.int64)
            high = np.ceil(points.max(axis=0)).astype(np.int64)
            bbox = (low[0], low[1], high[0], high[1])
    bbox_json = None
    if bbox is not None:
        box = [operator.index(v) for v in bbox]
        if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"bbox must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {box}")
        bbox_json = _dumps(box)
    return (slide, region_id, _dumps(list(classes)), dominant, source, round, seconds, clicks,
            level, bbox_json, polygon_json, weight)


def _polygon_rings(polygon: Any) -> list:
    """The rings of a polygon given as one ``(N, 2)`` ring or as GeoJSON Polygon coordinates
    (a list of rings: the outline, then its holes)."""
    if isinstance(polygon, np.ndarray):
        return [polygon] if polygon.ndim == 2 else list(polygon)
    polygon = list(polygon)
    if polygon and np.ndim(polygon[0]) == 2:
        return polygon
    return [polygon]


def _ring(points: Any) -> np.ndarray:
    """One ring as ``(N, 2)`` float64 ``(x, y)`` points, the closing vertex dropped."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise ValueError(f"polygon must be finite (N, 2) (x, y) points, got shape {points.shape}")
    points = _open_ring(points)
    if len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 vertices, got {len(points)}")
    return points


def _open_ring(ring: Any) -> np.ndarray:
    """A GeoJSON ring as ``(N, 2)`` float64 ``(x, y)``, extra coordinates and the closing
    vertex dropped."""
    polygon = np.asarray(ring, dtype=np.float64)[:, :2]
    if len(polygon) > 1 and np.array_equal(polygon[0], polygon[-1]):
        polygon = polygon[:-1]
    return polygon


def _is_rectangle(polygon: Any, box: Sequence[int]) -> bool:
    """Whether ``polygon`` is just the rectangle of ``box`` (it then tells nothing more)."""
    if not isinstance(polygon, np.ndarray):  # an outline with holes
        return False
    x0, y0, x1, y1 = box
    corners = {(x0, y0), (x1, y0), (x1, y1), (x0, y1)}
    return len(polygon) == 4 and {tuple(point) for point in polygon.tolist()} == corners


def _label_from_row(row: Sequence[Any]) -> RegionLabel:
    bbox = None if row[10] is None else tuple(json.loads(row[10]))
    polygon, holes = None, ()
    if row[11] is not None:
        rings = [tuple(tuple(p) for p in ring) for ring in _polygon_rings(json.loads(row[11]))]
        polygon, holes = rings[0], tuple(rings[1:])
    return RegionLabel(id=row[0], slide=row[1], region_id=row[2], classes=tuple(json.loads(row[3])),
                       dominant=row[4], source=row[5], round=row[6], seconds=row[7], clicks=row[8],
                       level=row[9], bbox=bbox, polygon=polygon, weight=row[12], created=row[13],
                       holes=holes)


def _check_existing(path: Path) -> None:
    """Open an existing database read-only and refuse it when damaged, foreign or too new.

    Nothing is written to the file (no journal mode change, no schema), whatever it holds.
    """
    try:
        reader = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            check = reader.execute("PRAGMA quick_check").fetchone()[0]
            version = reader.execute("PRAGMA user_version").fetchone()[0]
            n_tables = reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        finally:
            reader.close()
    except sqlite3.OperationalError as error:
        raise LabelStoreError(f"cannot open the label database ({error})", path=path,
                              hint="check that it is a readable file, not a folder") from error
    except sqlite3.DatabaseError as error:
        raise LabelStoreError(f"the label database is damaged or not a database ({error})",
                              path=path, hint="restore it from a backup, or move it away to "
                              "start with no labels") from error
    if check != "ok":
        raise LabelStoreError(f"the label database is damaged ({check})", path=path,
                              hint="restore it from a backup, or move it away to start with no labels")
    if version > SCHEMA_VERSION:
        raise LabelStoreError(
            f"written by a newer napari-wsl-al (schema {version}, this version reads up to "
            f"{SCHEMA_VERSION})", path=path, hint="upgrade napari-wsl-al to open it")
    if version == 0 and n_tables > 0:
        raise LabelStoreError("this SQLite file is not a napari-wsl-al label database", path=path,
                              hint="move it away; labels.sqlite is made by napari-wsl-al")


class LabelStore:
    """Region labels, their undo history, the round log and the suggestions of one project.

    Parameters
    ----------
    path : str or Path
        The database file (created when missing; its folder must exist).
    busy_timeout_s : float
        How long a write waits for another process's write to finish.

    Raises
    ------
    LabelStoreError
        When the folder is missing, or the file is damaged, not a label database, or written
        by a newer version (the file is then left untouched).

    Examples
    --------
    >>> with LabelStore.for_project("study.wslal") as store:  # doctest: +SKIP
    ...     store.add_label("slide_1", 17, ["tumour"], seconds=2.5, clicks=1)
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        if not self.path.parent.is_dir():
            raise LabelStoreError("the folder of the label database does not exist",
                                  path=self.path.parent, hint="create the project folder first")
        if self.path.exists() and (not self.path.is_file() or self.path.stat().st_size > 0):
            _check_existing(self.path)
        self._connection = self._connect()
        with self._transaction() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def for_project(cls, project_path: str | Path, busy_timeout_s: float = 30.0) -> LabelStore:
        """The label store of a project folder: ``<project>/labels.sqlite``."""
        return cls(Path(project_path) / LABELS_FILE, busy_timeout_s=busy_timeout_s)

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as error:
            raise self._error(error) from error
        return connection

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Close the database (again: nothing happens)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _error(self, error: sqlite3.Error) -> LabelStoreError:
        """A LabelStoreError naming the file for an SQLite error."""
        text = str(error)
        if "locked" in text:
            return LabelStoreError(
                f"the label database stayed locked for {self.busy_timeout_s:g} s", path=self.path,
                hint="another program is writing it; try again, or close that program")
        if isinstance(error, sqlite3.IntegrityError):
            return LabelStoreError(f"the change contradicts the stored labels ({text})",
                                   path=self.path, hint="give each region at most one label per call")
        return LabelStoreError(f"the label database cannot be used ({text})", path=self.path,
                               hint="check the free disk space; restore a backup if it is damaged")

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise LabelStoreError("the label store is closed", path=self.path,
                                  hint="open a new LabelStore")
        return self._connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on leaving, rolled back on an exception."""
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise self._error(error) from error
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(error, sqlite3.Error):
                    raise self._error(error) from error
                raise

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            db = self._db()
            try:
                return db.execute(sql, parameters).fetchall()
            except sqlite3.Error as error:
                raise self._error(error) from error

    @staticmethod
    def _label_by_id(db: sqlite3.Connection, label_id: int) -> RegionLabel:
        row = db.execute(f"SELECT {_LABEL_COLUMNS} FROM labels WHERE id = ?", (label_id,)).fetchone()
        return _label_from_row(row)

    @staticmethod
    def _put(db: sqlite3.Connection, values: tuple, created: str) -> tuple[int | None, int]:
        """Supersede the live label of the region (same source), insert ``values``.

        Returns ``(id of the superseded label or None, id of the new label)``.
        """
        row = db.execute("SELECT id FROM labels WHERE live = 1 AND slide = ? AND region_id = ? "
                         "AND source = ?", (values[0], values[1], values[4])).fetchone()
        before = None if row is None else row[0]
        if before is not None:
            db.execute("UPDATE labels SET live = 0 WHERE id = ?", (before,))
        return before, db.execute(_INSERT_LABEL, (*values, created)).lastrowid

    @staticmethod
    def _record_action(db: sqlite3.Connection, changes: Sequence[tuple]) -> None:
        """Record oracle changes ``(slide, region_id, before_id, after_id)`` as one undo action.

        What was undone cannot be redone after a new action; suggestions follow the labels.
        """
        db.execute("DELETE FROM history WHERE undone = 1")
        action = db.execute("SELECT COALESCE(MAX(action), 0) + 1 FROM history").fetchone()[0]
        created = _now()
        db.executemany(
            "INSERT INTO history (action, slide, region_id, before_id, after_id, undone, created) "
            "VALUES (?, ?, ?, ?, ?, 0, ?)",
            [(action, *change, created) for change in changes])
        db.executemany(_SYNC_SUGGESTION, [(change[0], change[1]) for change in changes])

    # ------------------------------------------------------------------ labels
    def add_label(
        self,
        slide: str,
        region_id: int,
        classes: Sequence[str],
        *,
        dominant: str | None = None,
        source: str = "oracle",
        round: int | None = None,
        seconds: float = 0.0,
        clicks: int | None = None,
        level: int = 0,
        bbox: Sequence[int] | None = None,
        polygon: Any = None,
        weight: float = 1.0,
    ) -> RegionLabel:
        """Label a region, superseding its earlier label of the same source; committed on return.

        Parameters
        ----------
        slide : str
            Slide name in the project.
        region_id : int
            Superpixel id.
        classes : sequence of str
            The classes in the region: one (dominant mode) or several (multi-hot answer).
        dominant : str, optional
            The class covering most of the region; must be one of ``classes``.
        source : {"oracle", "pseudo"}
            A person's answer (undoable; marks a suggestion of the region labelled) or a pseudo
            label.
        round : int, optional
            Round during which the label was given.
        seconds : float
            Time spent giving it.
        clicks : int, optional
            Clicks spent giving it.
        level : int
            Slide level the region was shown at.
        bbox : (x0, y0, x1, y1), optional
            Level-0 pixel box; taken from ``polygon`` when not given.
        polygon : (N, 2) array-like or list of them, optional
            Level-0 ``(x, y)`` outline (a closing vertex equal to the first is dropped); or, as
            GeoJSON Polygon coordinates, the outline followed by the outlines of its holes.
        weight : float
            Weight in the training loss.

        Returns
        -------
        RegionLabel
            The stored label.

        Raises
        ------
        ValueError
            For an argument out of range (no class, dominant not among the classes ...).
        LabelStoreError
            When the database stays locked or cannot be written.
        """
        values = _label_values(slide, region_id, classes, dominant=dominant, source=source,
                               round=round, seconds=seconds, clicks=clicks, level=level,
                               bbox=bbox, polygon=polygon, weight=weight)
        with self._transaction() as db:
            before, after = self._put(db, values, _now())
            if source == "oracle":
                self._record_action(db, [(values[0], values[1], before, after)])
            return self._label_by_id(db, after)

    def delete(self, slide: str, region_id: int) -> RegionLabel | None:
        """Remove the oracle label of a region (undoable); returns it, or None when there was none."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM labels WHERE live = 1 AND source = 'oracle' AND "
                             "slide = ? AND region_id = ?", (slide, int(region_id))).fetchone()
            if row is None:
                return None
            db.execute("UPDATE labels SET live = 0 WHERE id = ?", (row[0],))
            self._record_action(db, [(slide, int(region_id), row[0], None)])
            return self._label_by_id(db, row[0])

    def _move(self, undo: bool) -> RegionLabel | None:
        """Undo the last action not undone, or redo the first undone one."""
        if undo:
            find, old, new = "SELECT MAX(action) FROM history WHERE undone = 0", "after_id", "before_id"
        else:
            find, old, new = "SELECT MIN(action) FROM history WHERE undone = 1", "before_id", "after_id"
        with self._transaction() as db:
            action = db.execute(find).fetchone()[0]
            if action is None:
                return None
            # Labels an action replaced within itself (A -> B -> C) are both "old" and "new":
            # only the ends of each chain change state.
            db.execute(f"UPDATE labels SET live = 0 WHERE id IN "
                       f"(SELECT {old} FROM history WHERE action = ?)", (action,))
            db.execute(f"UPDATE labels SET live = 1 WHERE id IN (SELECT {new} FROM history "
                       f"WHERE action = ?) AND id NOT IN (SELECT {old} FROM history "
                       f"WHERE action = ? AND {old} IS NOT NULL)", (action, action))
            db.execute("UPDATE history SET undone = ? WHERE action = ?", (int(undo), action))
            regions = db.execute("SELECT DISTINCT slide, region_id FROM history WHERE action = ?",
                                 (action,)).fetchall()
            db.executemany(_SYNC_SUGGESTION, regions)
            last = db.execute("SELECT COALESCE(after_id, before_id) FROM history WHERE action = ? "
                              "ORDER BY id DESC LIMIT 1", (action,)).fetchone()[0]
            return self._label_by_id(db, last)

    def undo(self) -> RegionLabel | None:
        """Undo the last oracle action (add, relabel, delete or import) of this project.

        The history is the project's, shared by every process writing it: the last action
        is undone whoever made it.

        Returns
        -------
        RegionLabel or None
            The label the action was about (the label added, or the label deleted, which is
            live again); for an import, the last label imported. None when there is nothing to
            undo. Read :meth:`get` for the region's label now.
        """
        return self._move(undo=True)

    def redo(self) -> RegionLabel | None:
        """Redo the action undone last; returns what :meth:`undo` returned for it, or None."""
        return self._move(undo=False)

    def current(self, slide: str | None = None, source: str | None = None) -> list[RegionLabel]:
        """The live label of every (slide, region, source), in the order they were given."""
        where, parameters = ["live = 1"], []
        if slide is not None:
            where.append("slide = ?")
            parameters.append(slide)
        if source is not None:
            where.append("source = ?")
            parameters.append(source)
        rows = self._query(f"SELECT {_LABEL_COLUMNS} FROM labels WHERE {' AND '.join(where)} "
                           "ORDER BY id", parameters)
        return [_label_from_row(row) for row in rows]

    def get(self, slide: str, region_id: int, source: str = "oracle") -> RegionLabel | None:
        """The live label of a region, or None."""
        rows = self._query(f"SELECT {_LABEL_COLUMNS} FROM labels WHERE live = 1 AND slide = ? "
                           "AND region_id = ? AND source = ?", (slide, int(region_id), source))
        return _label_from_row(rows[0]) if rows else None

    def labelled_ids(self, slide: str, source: str = "oracle") -> np.ndarray:
        """Sorted ids (int64) of the regions of ``slide`` with a live label of ``source``."""
        rows = self._query("SELECT region_id FROM labels WHERE live = 1 AND slide = ? AND "
                           "source = ? ORDER BY region_id", (slide, source))
        return np.array([row[0] for row in rows], dtype=np.int64)

    def counts(self, source: str = "oracle", classes: Iterable[Any] | None = None) -> dict[str, int]:
        """Number of live labelled regions containing each class.

        Parameters
        ----------
        source : {"oracle", "pseudo"}
            Which labels to count.
        classes : sequence of str or ClassSpec, optional
            Classes to list first, with 0 when no region has them; without it only the classes
            found are listed, by name.
        """
        rows = self._query("SELECT item.value, COUNT(*) FROM labels, json_each(labels.classes) "
                           "AS item WHERE labels.live = 1 AND labels.source = ? "
                           "GROUP BY item.value ORDER BY item.value", (source,))
        counts = {name: 0 for name in _class_names(classes or ())}
        counts.update(dict(rows))
        return counts

    def total_seconds(self, live_only: bool = False) -> float:
        """Seconds spent on oracle labels: every label given (superseded, deleted and undone
        ones too: the time was spent), or only the live ones."""
        live = " AND live = 1" if live_only else ""
        return float(self._query(f"SELECT COALESCE(SUM(seconds), 0) FROM labels "
                                 f"WHERE source = 'oracle'{live}")[0][0])

    def total_clicks(self, live_only: bool = False) -> int:
        """Clicks spent on oracle labels (counted as :meth:`total_seconds`; unknown clicks are 0)."""
        live = " AND live = 1" if live_only else ""
        return int(self._query(f"SELECT COALESCE(SUM(clicks), 0) FROM labels "
                               f"WHERE source = 'oracle'{live}")[0][0])

    def replace_pseudo_labels(self, round: int, rows: Iterable[Mapping[str, Any]]) -> int:
        """Make ``rows`` the live pseudo labels, in one transaction (all of them or none).

        Pseudo labels stored earlier for the same round are removed (a round run again);
        those of earlier rounds are kept, superseded, as a record.

        Parameters
        ----------
        round : int
            The round that made the pseudo labels.
        rows : iterable of mapping
            Keyword arguments of :meth:`add_label` (``slide``, ``region_id``, ``classes`` and
            optionally ``dominant``, ``weight``, ``level``, ``bbox``, ``polygon`` ...), at most
            one per region.

        Returns
        -------
        int
            Pseudo labels stored.

        Raises
        ------
        LabelStoreError
            When a region appears twice (nothing is changed).
        """
        round = operator.index(round)
        values = [_label_values(**{**row, "source": "pseudo", "round": round}) for row in rows]
        created = _now()
        with self._transaction() as db:
            db.execute("DELETE FROM labels WHERE source = 'pseudo' AND round = ?", (round,))
            db.execute("UPDATE labels SET live = 0 WHERE source = 'pseudo' AND live = 1")
            db.executemany(_INSERT_LABEL, [(*value, created) for value in values])
        return len(values)

    # ------------------------------------------------------------------ rounds
    @staticmethod
    def _round_status(db: sqlite3.Connection, number: int) -> str | None:
        row = db.execute("SELECT status FROM rounds WHERE number = ?", (number,)).fetchone()
        return None if row is None else row[0]

    def _require_running(self, db: sqlite3.Connection, number: int) -> None:
        status = self._round_status(db, number)
        if status != "running":
            raise LabelStoreError(f"round {number} is {status or 'not started'}, not running",
                                  path=self.path, hint="start it with start_round() first")

    def start_round(self, number: int, settings: Mapping[str, Any]) -> RoundRecord:
        """Log round ``number`` as running (a failed round of that number is replaced).

        Raises
        ------
        LabelStoreError
            When the round is already done, or still running (then finish or fail it, or call
            :meth:`discard_unfinished` if the process running it stopped).
        """
        number = operator.index(number)
        if number < 0:
            raise ValueError(f"round numbers are >= 0, got {number}")
        settings_json = _dumps(dict(settings))
        with self._transaction() as db:
            status = self._round_status(db, number)
            if status == "done":
                raise LabelStoreError(f"round {number} is already done", path=self.path,
                                      hint="start the next round")
            if status == "running":
                raise LabelStoreError(
                    f"round {number} is already running", path=self.path,
                    hint="wait for it, or call discard_unfinished() if its process stopped")
            labels_used = db.execute("SELECT COUNT(*) FROM labels WHERE live = 1 AND "
                                     "source = 'oracle'").fetchone()[0]
            db.execute("INSERT OR REPLACE INTO rounds (number, status, settings, metrics, "
                       "checkpoint, reason, started, finished, labels_used, pid, host) VALUES "
                       "(?, 'running', ?, '{}', NULL, NULL, ?, NULL, ?, ?, ?)",
                       (number, settings_json, _now(), labels_used, os.getpid(),
                        socket.gethostname()))
        return self._round(number)

    def finish_round(self, number: int, metrics: Mapping[str, Any],
                     checkpoint: str | Path | None) -> RoundRecord:
        """Log a running round as done, with its metrics and checkpoint.

        Raises
        ------
        LabelStoreError
            When the round is not running.
        """
        metrics_json = _dumps(dict(metrics))
        with self._transaction() as db:
            self._require_running(db, number)
            db.execute("UPDATE rounds SET status = 'done', metrics = ?, checkpoint = ?, "
                       "finished = ? WHERE number = ?",
                       (metrics_json, None if checkpoint is None else str(checkpoint), _now(),
                        number))
        return self._round(number)

    def fail_round(self, number: int, reason: str) -> RoundRecord:
        """Log a running round as failed, saying why.

        Raises
        ------
        LabelStoreError
            When the round is not running.
        """
        with self._transaction() as db:
            self._require_running(db, number)
            db.execute("UPDATE rounds SET status = 'failed', reason = ?, finished = ? "
                       "WHERE number = ?", (str(reason), _now(), number))
        return self._round(number)

    def discard_unfinished(self, force: bool = False) -> list[int]:
        """Mark as failed (:data:`ABORTED_REASON`) the rounds left running by a stopped process.

        A round is left alone while the process that started it still runs on this machine
        (a round running in another program, or in another thread of this one).

        Parameters
        ----------
        force : bool
            Discard every running round, whoever runs it.

        Returns
        -------
        list of int
            Numbers of the rounds discarded.
        """
        host = socket.gethostname()
        with self._transaction() as db:
            rows = db.execute("SELECT number, pid, host FROM rounds WHERE status = 'running' "
                              "ORDER BY number").fetchall()
            stale = [number for number, pid, started_on in rows
                     if force or (started_on == host and not _process_alive(pid))]
            db.executemany("UPDATE rounds SET status = 'failed', reason = ?, finished = ? "
                           "WHERE number = ?", [(ABORTED_REASON, _now(), n) for n in stale])
        return stale

    def _round(self, number: int) -> RoundRecord:
        return next(r for r in self.rounds() if r.number == number)

    def rounds(self) -> list[RoundRecord]:
        """Every logged round, by number."""
        rows = self._query(f"SELECT {_ROUND_COLUMNS} FROM rounds ORDER BY number")
        return [RoundRecord(number=row[0], status=row[1], settings=json.loads(row[2]),
                            metrics=json.loads(row[3]), checkpoint=row[4], started=row[5],
                            finished=row[6], labels_used=row[7], reason=row[8]) for row in rows]

    def last_done_round(self) -> int | None:
        """Number of the last finished round; None when no round is done (the next is
        ``(last_done_round() or 0) + 1``: rounds are numbered from 1)."""
        return self._query("SELECT MAX(number) FROM rounds WHERE status = 'done'")[0][0]

    # ------------------------------------------------------------------ suggestions
    def save_suggestions(
        self,
        slide: str,
        round: int,
        strategy: str,
        region_ids: Sequence[int] | np.ndarray,
        scores: Sequence[float] | np.ndarray,
        classes: Sequence[str | Sequence[str] | None] | None = None,
    ) -> int:
        """Replace the pending suggestions of ``slide`` with a new batch, ranked in the order given.

        Labelled and skipped suggestions of earlier batches are kept, except for regions
        suggested again. A suggested region that already has an oracle label is stored as
        labelled.

        Parameters
        ----------
        slide : str
            Slide name.
        round : int
            Round whose model scored the regions.
        strategy : str
            Acquisition function.
        region_ids : sequence of int
            Regions, most useful first (rank 1).
        scores : sequence of float
            Their acquisition scores.
        classes : sequence, optional
            Per region, the class (or classes) it was picked for, or None.

        Returns
        -------
        int
            Suggestions stored.
        """
        ids = np.asarray(region_ids, dtype=np.int64).ravel()
        score_values = np.asarray(scores, dtype=np.float64).ravel()
        if ids.shape != score_values.shape:
            raise ValueError(f"{ids.size} region ids but {score_values.size} scores")
        if np.unique(ids).size != ids.size:
            raise ValueError("a region is suggested twice")
        if classes is None:
            classes = [None] * ids.size
        if len(classes) != ids.size:
            raise ValueError(f"{ids.size} region ids but {len(classes)} class entries")
        class_json = [None if c is None else _dumps([c] if isinstance(c, str) else list(c))
                      for c in classes]
        created = _now()
        region_keys = [(slide, region) for region in ids.tolist()]
        with self._transaction() as db:
            db.execute("DELETE FROM suggestions WHERE slide = ? AND status = 'pending'", (slide,))
            db.executemany("DELETE FROM suggestions WHERE slide = ? AND region_id = ?", region_keys)
            db.executemany(
                "INSERT INTO suggestions (slide, region_id, rank, score, strategy, round, status, "
                "classes, created) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                [(slide, region, rank, score, strategy, operator.index(round), entry, created)
                 for rank, (region, score, entry)
                 in enumerate(zip(ids.tolist(), score_values.tolist(), class_json), start=1)])
            db.executemany(_SYNC_SUGGESTION, region_keys)
        return int(ids.size)

    def suggestions(self, slide: str | None = None, status: str | None = None) -> list[Suggestion]:
        """Stored suggestions, by slide, then batch and rank."""
        where, parameters = ["1 = 1"], []
        if slide is not None:
            where.append("slide = ?")
            parameters.append(slide)
        if status is not None:
            where.append("status = ?")
            parameters.append(status)
        rows = self._query(f"SELECT {_SUGGESTION_COLUMNS} FROM suggestions WHERE "
                           f"{' AND '.join(where)} ORDER BY slide, id", parameters)
        return [Suggestion(slide=row[0], region_id=row[1], rank=row[2],
                           score=math.nan if row[3] is None else row[3], strategy=row[4],
                           round=row[5], status=row[6],
                           classes=None if row[7] is None else tuple(json.loads(row[7])))
                for row in rows]

    def mark_suggestion(self, slide: str, region_id: int, status: str) -> bool:
        """Set the status of a suggested region; False when the region is not suggested."""
        if status not in SUGGESTION_STATUSES:
            raise ValueError(f"status must be one of {SUGGESTION_STATUSES}, got {status!r}")
        with self._transaction() as db:
            changed = db.execute("UPDATE suggestions SET status = ? WHERE slide = ? AND "
                                 "region_id = ?", (status, slide, int(region_id))).rowcount
        return changed > 0

    # ------------------------------------------------------------------ export / import
    def _import(self, rows: Sequence[dict[str, Any]]) -> int:
        """Store checked labels in one transaction; the oracle ones are one undo action."""
        with self._transaction() as db:
            changes = []
            for row in rows:
                values = row["values"]
                before, after = self._put(db, values, row["created"])
                if values[4] == "oracle":
                    changes.append((values[0], values[1], before, after))
            if changes:
                self._record_action(db, changes)
        return len(rows)

    @staticmethod
    def _check_classes(names: Iterable[str], known: set[str] | None, path: Path, where: str) -> None:
        if known is None:
            return
        unknown = sorted(set(names) - known)
        if unknown:
            raise LabelStoreError(f"{where} uses the class {unknown[0]!r}, which the project lacks "
                                  f"(known: {sorted(known)})", path=path,
                                  hint="add the class to the project, or rename it in the file")

    @staticmethod
    def _check_export_folder(path: Path) -> None:
        if not path.parent.is_dir():
            raise LabelStoreError("the folder to export to does not exist", path=path.parent,
                                  hint="create it first")

    def export_geojson(self, path: str | Path, classes: Sequence[Any],
                       slide: str | None = None) -> int:
        """Write the live oracle labels as a QuPath-compatible GeoJSON FeatureCollection.

        One Feature per label: a Polygon in level-0 pixels ``(x, y)`` with a closed ring (the
        label's polygon, else its bbox rectangle; labels with neither are left out), and the
        properties ``objectType`` ("annotation"), ``classification`` (``name``: the dominant
        class, else the classes joined as QuPath derived classes ``"A: B"``; ``color``: its
        ``[r, g, b]``, grey for classes not in ``classes``), ``slide``, ``region_id``,
        ``classes``, ``dominant``, ``source``, ``round``, ``seconds``, ``clicks``, ``level``.

        Parameters
        ----------
        path : str or Path
            The file, written atomically.
        classes : sequence of ClassSpec
            The project's classes (for the colours).
        slide : str, optional
            Export only this slide.

        Returns
        -------
        int
            Features written.
        """
        path = Path(path)
        self._check_export_folder(path)
        colours = {spec.name: _rgb(spec.colour) for spec in classes}
        features = []
        for label in self.current(slide=slide, source="oracle"):
            if label.polygon is not None:
                rings = [[list(point) for point in ring] for ring in (label.polygon, *label.holes)]
            elif label.bbox is not None:
                x0, y0, x1, y1 = label.bbox
                rings = [[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]]
            else:
                continue
            for ring in rings:
                ring.append(ring[0])
            name = label.dominant or QUPATH_CLASS_SEPARATOR.join(label.classes)
            colour = colours.get(label.dominant or label.classes[0], list(UNLISTED_CLASS_RGB))
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": colour},
                    "slide": label.slide, "region_id": label.region_id,
                    "classes": list(label.classes), "dominant": label.dominant,
                    "source": label.source, "round": label.round, "seconds": label.seconds,
                    "clicks": label.clicks, "level": label.level,
                },
            })

        def write(stream) -> None:
            json.dump({"type": "FeatureCollection", "features": features}, stream)

        atomic_write(path, write)
        return len(features)

    def import_geojson(
        self,
        path: str | Path,
        resolve: Callable[[str | None, np.ndarray], Sequence[tuple[int, Sequence[int]]]],
        classes: Iterable[Any] | None = None,
        slide: str | None = None,
    ) -> int:
        """Label the regions under the polygons of a GeoJSON file (QuPath's, or ours), in one
        transaction and one undo action.

        Accepts a FeatureCollection, a bare list of Features (QuPath's default) or one
        Feature, with Polygon or MultiPolygon geometries; the regions under a polygon's holes
        (its inner rings) are left out of it. A feature's classes are
        its ``classes`` property, else its classification's ``names``, else its
        classification ``name`` split on ``": "``. The time (``seconds``) of a feature is shared
        equally by its regions; ``clicks`` are kept by the first. A region under a single-region
        feature keeps the feature's outline as its polygon, unless the outline is just the
        region's bbox rectangle.

        Parameters
        ----------
        path : str or Path
            The GeoJSON file.
        resolve : callable
            ``resolve(slide, polygon)`` with ``polygon`` an ``(N, 2)`` level-0 ``(x, y)`` array
            returns the ``(region_id, (x0, y0, x1, y1))`` of the regions it labels.
        classes : sequence of str or ClassSpec, optional
            The class names allowed; any name is accepted without it.
        slide : str, optional
            Slide of features that have no ``slide`` property.

        Returns
        -------
        int
            Labels stored.

        Raises
        ------
        LabelStoreError
            Naming the file (and the feature) when it cannot be read, has a geometry that is no
            polygon, a feature without class or slide, or a class not in ``classes``.
        """
        path = Path(path)
        known = None if classes is None else set(_class_names(classes))
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise LabelStoreError(f"cannot read the GeoJSON file ({error})", path=path,
                                  hint="export it again from QuPath or napari-wsl-al") from error
        if isinstance(document, list):
            features = document
        elif isinstance(document, dict) and document.get("type") == "FeatureCollection":
            features = document.get("features", [])
        elif isinstance(document, dict) and document.get("type") == "Feature":
            features = [document]
        else:
            raise LabelStoreError("not a GeoJSON Feature, FeatureCollection or list of Features",
                                  path=path, hint="export it again from QuPath or napari-wsl-al")
        created = _now()
        rows: list[dict[str, Any]] = []
        for index, feature in enumerate(features):
            where = f"feature {index}"
            geometry = feature.get("geometry") or {}
            if geometry.get("type") == "Polygon":
                polygons = [geometry["coordinates"]]
            elif geometry.get("type") == "MultiPolygon":
                polygons = list(geometry["coordinates"])
            else:
                raise LabelStoreError(f"{where} has a {geometry.get('type')} geometry; only Polygon "
                                      "and MultiPolygon features become labels", path=path,
                                      hint="remove the other features from the file")
            properties = feature.get("properties") or {}
            classification = properties.get("classification") or {}
            names = properties.get("classes") or classification.get("names")
            if not names and classification.get("name"):
                names = classification["name"].split(QUPATH_CLASS_SEPARATOR)
            if not names:
                raise LabelStoreError(f"{where} has no classification", path=path,
                                      hint="classify every annotation before exporting it")
            self._check_classes(names, known, path, where)
            feature_slide = properties.get("slide") or slide
            regions = []
            for rings in polygons:
                outline, *holes = [_open_ring(ring) for ring in rings]
                in_holes = {int(r) for hole in holes for r, _ in resolve(feature_slide, hole)}
                shape = [outline, *holes] if holes else outline
                regions.extend((int(r), tuple(int(v) for v in box), shape)
                               for r, box in resolve(feature_slide, outline)
                               if int(r) not in in_holes)
            if regions and not feature_slide:
                raise LabelStoreError(f"{where} names no slide", path=path,
                                      hint="give the slide name (--slide)")
            seconds = float(properties.get("seconds") or 0.0) / max(len(regions), 1)
            for position, (region_id, box, polygon) in enumerate(regions):
                try:
                    values = _label_values(
                        feature_slide, region_id, names, dominant=properties.get("dominant"),
                        source=properties.get("source") or "oracle", round=properties.get("round"),
                        seconds=seconds,
                        clicks=properties.get("clicks") if position == 0 else None,
                        level=properties.get("level") or 0, bbox=box,
                        polygon=polygon if len(regions) == 1
                        and not _is_rectangle(polygon, box) else None)
                except (TypeError, ValueError) as error:
                    raise LabelStoreError(f"{where}: {error}", path=path,
                                          hint="correct the feature's properties") from error
                rows.append({"values": values, "created": created})
        return self._import(rows)

    def export_csv(self, path: str | Path, slide: str | None = None,
                   source: str | None = None) -> int:
        """Write the live labels as CSV (:data:`CSV_COLUMNS`; classes joined by ``;``, bbox as
        ``x0 y0 x1 y1``; polygons are not written: use GeoJSON for outlines).

        Returns
        -------
        int
            Rows written.
        """
        path = Path(path)
        self._check_export_folder(path)
        labels = self.current(slide=slide, source=source)

        def write(stream) -> None:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for label in labels:
                writer.writerow([
                    label.slide, label.region_id, ";".join(label.classes), label.dominant or "",
                    label.source, "" if label.round is None else label.round, label.seconds,
                    "" if label.clicks is None else label.clicks, label.level,
                    "" if label.bbox is None else " ".join(map(str, label.bbox)), label.weight,
                    label.created])

        atomic_write(path, write)
        return len(labels)

    def import_csv(self, path: str | Path, classes: Iterable[Any] | None = None) -> int:
        """Store the labels of a CSV file written by :meth:`export_csv`, in one transaction and
        one undo action (their ``created`` times are kept).

        Only ``slide``, ``region_id`` and ``classes`` columns are required.

        Raises
        ------
        LabelStoreError
            Naming the file (and the line) when it cannot be read, lacks a column, holds a
            value that is wrong, or a class not in ``classes``.
        """
        path = Path(path)
        known = None if classes is None else set(_class_names(classes))
        try:
            with path.open(newline="", encoding="utf-8-sig") as stream:
                reader = csv.DictReader(stream)
                records = list(reader)
                columns = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise LabelStoreError(f"cannot read the CSV file ({error})", path=path,
                                  hint="export it again with napari-wsl-al labels export") from error
        missing = [c for c in ("slide", "region_id", "classes") if c not in columns]
        if missing:
            raise LabelStoreError(f"the CSV file has no column {missing[0]!r}", path=path,
                                  hint=f"the columns are {', '.join(CSV_COLUMNS)}")
        created = _now()
        rows = []
        for line, record in enumerate(records, start=2):
            where = f"line {line}"
            names = record["classes"].split(";")
            self._check_classes(names, known, path, where)
            try:
                bbox = record.get("bbox") or None
                values = _label_values(
                    record["slide"], int(record["region_id"]), names,
                    dominant=record.get("dominant") or None,
                    source=record.get("source") or "oracle",
                    round=int(record["round"]) if record.get("round") else None,
                    seconds=float(record.get("seconds") or 0.0),
                    clicks=int(record["clicks"]) if record.get("clicks") else None,
                    level=int(record.get("level") or 0),
                    bbox=None if bbox is None else [int(v) for v in bbox.split()],
                    weight=float(record.get("weight") or 1.0))
            except (TypeError, ValueError) as error:
                raise LabelStoreError(f"{where}: {error}", path=path,
                                      hint="correct the value in the file") from error
            rows.append({"values": values, "created": record.get("created") or created})
        return self._import(rows)
