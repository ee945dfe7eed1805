"""The project folder (``study.wslal/``): classes, slides and settings in ``project.json``, and map paths.

A project is the unit that is saved, resumed and shared. This module holds what every part
of the plug-in needs from it (the class list, the slides, where maps go); the active-learning
code adds the label database and the round log.

Every write of ``project.json`` is atomic (a temporary file in the same folder, then
``os.replace``): a crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import math
import numbers
import re
import shutil
import sqlite3
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .al.labels import LABELS_FILE
from .atomic import atomic_write
from .errors import ProjectError

#: Version of the ``project.json`` layout written by this package.
PROJECT_FORMAT_VERSION = 1

#: Name of the project description file inside the project folder.
PROJECT_FILE = "project.json"

#: Suffix given to project folders created from a bare name.
PROJECT_SUFFIX = ".wslal"

#: Colours given to classes created from bare names, in order.
DEFAULT_CLASS_COLOURS = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
)

#: Classes of a new project when the shipped default model's card cannot be read.
FALLBACK_CLASSES = ("tumour", "normal")

#: Name of the region class that the project's classes do not need to list (key ``1``).
BACKGROUND_CLASS = "background"

#: Keys no class may take, and what they do while labelling.
RESERVED_KEYS = {
    "1": "labels a region background",
    "s": "skips a suggestion",
    "u": "undoes the last label",
}

#: Keys offered to new classes, in order (``1`` is the background's).
FREE_KEYS = tuple("234567890abcdefghijklmnopqrtvwxyz")

_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


@dataclass(frozen=True)
class ClassSpec:
    """One class of the study.

    Attributes
    ----------
    name : str
        Class name, as in the model's ``classes``.
    colour : str
        Display colour, ``#rrggbb``.
    key : str
        Keyboard key that labels a region with this class.
    """

    name: str
    colour: str = "#ffffff"
    key: str = ""

    @classmethod
    def from_json(cls, value: Any) -> ClassSpec:
        """A class from its JSON form (a dict, or a bare name)."""
        if isinstance(value, str):
            return cls(name=value)
        return cls(name=str(value["name"]), colour=str(value.get("colour", "#ffffff")),
                   key=str(value.get("key", "")))


def _as_class_specs(classes: Any) -> tuple[ClassSpec, ...]:
    specs = []
    for index, item in enumerate(classes):
        if isinstance(item, ClassSpec):
            specs.append(item)
        elif isinstance(item, str):
            specs.append(
                ClassSpec(
                    name=item,
                    colour=DEFAULT_CLASS_COLOURS[index % len(DEFAULT_CLASS_COLOURS)],
                    # key 1 labels a region background (active learning); classes from 2
                    key=str(index + 2) if index < 8 else "",
                )
            )
        else:
            specs.append(ClassSpec.from_json(item))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    return tuple(specs)


def slide_key(name: str) -> str:
    """A file-system-safe name for a slide's files (maps, superpixels).

    Accents are dropped (``Präparat`` becomes ``Praparat``); any other run of characters
    outside ``A-Z a-z 0-9 . _ -`` becomes ``_``. A name left empty (only non-Latin
    characters, say) becomes ``slide``; :meth:`Project.add_slide` then makes it unique.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).strip("._")
    return key or "slide"


def _same_path(a: str | None, b: str | None) -> bool:
    """Whether two recorded slide paths name the same file or folder."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    try:
        return Path(a).samefile(b)
    except OSError:
        return False


def default_project_classes() -> tuple[ClassSpec, ...]:
    """Classes of a new project: those of the shipped default model, else
    :data:`FALLBACK_CLASSES`, with the default colours and the keys 2, 3, ...

    The names are read from the default model's card (``napari_wsl_al/models/default.json``),
    without loading the model.
    """
    card = Path(__file__).resolve().parents[1] / "models" / "default.json"
    try:
        names = json.loads(card.read_text(encoding="utf-8"))["model"]["classes"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        names = FALLBACK_CLASSES
    valid = isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
    return _as_class_specs(names if valid and len(set(names)) == len(names) else FALLBACK_CLASSES)


def _positional_key(index: int) -> str:
    """The key a class takes when it gives none: ``index + 2`` (1 is the background's)."""
    return str(index + 2) if index < 8 else ""


def _effective_keys(specs: Sequence[ClassSpec]) -> list[str]:
    """The key each class is labelled with: its own, else its positional one.

    The labelling session uses the same rule; a class named ``background`` in the first place
    is the background and takes key ``1``.
    """
    offset = 1 if specs and specs[0].name == BACKGROUND_CLASS else 0
    keys = []
    for index, spec in enumerate(specs):
        if offset and index == 0:
            keys.append(spec.key or "1")
        else:
            keys.append(spec.key or _positional_key(index - offset))
    return keys


def check_class_specs(specs: Sequence[ClassSpec]) -> tuple[ClassSpec, ...]:
    """Validate a class list and return it normalised (names stripped, colours and keys in
    lower case).

    Rules: at least one class; names non-empty, without ``;``, unique (ignoring case), and
    ``background`` only in the first place; colours ``#rrggbb``; a key is empty (the class
    then takes its positional key, ``2`` for the first class) or one digit or ASCII letter;
    ``1`` is the background's, ``s`` and ``u`` are the skip and undo keys
    (:data:`RESERVED_KEYS`); no two classes share a key.

    Parameters
    ----------
    specs : sequence of ClassSpec
        The classes, in order.

    Returns
    -------
    tuple of ClassSpec
        The normalised classes.

    Raises
    ------
    ValueError
        Naming the first class that breaks a rule and what to do.
    """
    specs = list(specs)
    if not specs:
        raise ValueError("a project needs at least one class: add one")
    normalised = []
    seen: dict[str, str] = {}
    for index, spec in enumerate(specs):
        if not isinstance(spec, ClassSpec):
            raise TypeError(f"class {index + 1} is a {type(spec).__name__}, not a ClassSpec")
        name = str(spec.name).strip()
        if not name:
            raise ValueError(f"class {index + 1} has no name: give it one")
        if ";" in name:
            raise ValueError(f"class name {name!r} contains ';': choose a name without it")
        if name.lower() in seen:
            raise ValueError(
                f"two classes are named {seen[name.lower()]!r} and {name!r}: give each class "
                "its own name"
            )
        seen[name.lower()] = name
        if name == BACKGROUND_CLASS and index > 0:
            raise ValueError(
                f"{BACKGROUND_CLASS!r} is the region class of key 1, not a class of the study: "
                "choose another name"
            )
        colour = str(spec.colour).strip()
        if not _COLOUR.fullmatch(colour):
            raise ValueError(
                f"class {name!r} has the colour {colour!r}: give a colour as #rrggbb"
            )
        key = str(spec.key).strip().lower()
        is_background = name == BACKGROUND_CLASS
        if key and not (len(key) == 1 and key.isascii() and key.isalnum()):
            raise ValueError(
                f"class {name!r} has the key {spec.key!r}: a key is one digit or letter"
            )
        if key in RESERVED_KEYS and not (is_background and key == "1"):
            raise ValueError(
                f"key {key!r} {RESERVED_KEYS[key]}: give class {name!r} another key"
            )
        normalised.append(ClassSpec(name=name, colour=colour.lower(), key=key))
    owners: dict[str, str] = {}
    for spec, key in zip(normalised, _effective_keys(normalised)):
        if not key:
            continue
        if key in owners:
            given = "its key" if spec.key else "its positional key: it gives none"
            raise ValueError(
                f"classes {owners[key]!r} and {spec.name!r} share the key {key!r} ({given}): "
                "give each class its own key"
            )
        owners[key] = spec.name
    return tuple(normalised)


def free_class_key(specs: Sequence[ClassSpec]) -> str:
    """The first key of :data:`FREE_KEYS` that no class of ``specs`` is labelled with
    (``""`` when every one is taken)."""
    used = set(_effective_keys(list(specs)))
    return next((key for key in FREE_KEYS if key not in used), "")


@dataclass(frozen=True)
class RemovedSlide:
    """What :meth:`Project.remove_slide` did.

    Attributes
    ----------
    entry : dict
        The slide's entry as it was in ``project.json``.
    deleted : tuple of Path
        What was deleted (map store, patches CSV, superpixels; the store's lock file goes
        with the store and is not listed); empty unless asked for.
    labels_kept : int
        Live labels of the slide left in ``labels.sqlite``.
    """

    entry: dict[str, Any]
    deleted: tuple[Path, ...]
    labels_kept: int


def is_mpp(value: Any) -> bool:
    """Whether ``value`` is a usable µm per pixel: a positive finite number (not a bool)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file, fsync, ``os.replace``)."""

    def write(stream) -> None:
        json.dump(data, stream, indent=2, sort_keys=False)
        stream.write("\n")

    atomic_write(path, write)


@dataclass
class Project:
    """A study folder: classes, slides, settings, and the paths of what is computed for them.

    Create one with :meth:`create`, open one with :meth:`open`; change :attr:`slides`,
    :attr:`classes` or :attr:`settings` through :meth:`add_slide` / :meth:`remove_slide`,
    :meth:`set_classes` / :meth:`update_settings`, which save at once.

    Attributes
    ----------
    path : Path
        The project folder (``study.wslal``).
    classes : tuple of ClassSpec
        The study's classes.
    slides : list of dict
        One entry per slide: ``{"name": str, "path": str or None}``, and ``"mpp"`` (level-0
        µm per pixel) for a slide whose resolution was given by the user rather than read from
        its file (a folder of patches, a plain image): the slide reopens at it.
    settings : dict
        Free-form settings (inference, acquisition, training), JSON-serialisable.
    format_version : int
        Layout version of ``project.json``.
    created_with : str
        Package version that created the project.
    """

    path: Path
    classes: tuple[ClassSpec, ...]
    slides: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    format_version: int = PROJECT_FORMAT_VERSION
    created_with: str = __version__

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def create(
        cls,
        path: str | Path,
        classes: Any = ("tumour", "normal"),
        slides: Any = (),
        settings: dict[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> Project:
        """Create a project folder and its ``project.json``.

        Parameters
        ----------
        path : str or Path
            The folder to create (``.wslal`` is appended to a name without a suffix).
        classes : sequence of str, ClassSpec or dict
            The study's classes; bare names get a colour and the keys 2..9 (key 1 is
            the background of region labels).
        slides : sequence of str or Path
            Slides to register at once.
        settings : dict, optional
            Initial settings.
        exist_ok : bool
            Open the project instead of failing when ``path`` already holds one.

        Raises
        ------
        ProjectError
            When the folder exists and is not empty (and ``exist_ok`` is false or it is not a
            project).
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_name(path.name + PROJECT_SUFFIX)
        if path.is_file():
            raise ProjectError("this is a file, not a project folder", path=path,
                               hint="give a new folder name (study.wslal) or an existing project")
        if (path / PROJECT_FILE).exists():
            if exist_ok:
                return cls.open(path)
            raise ProjectError("a project already exists here", path=path,
                               hint="open it with Project.open()")
        if path.exists() and any(path.iterdir()):
            raise ProjectError("the folder exists and is not empty", path=path,
                               hint="choose a new folder name")
        specs = _as_class_specs(classes)
        if not specs:
            raise ValueError("a project needs at least one class")
        path.mkdir(parents=True, exist_ok=True)
        project = cls(path=path, classes=specs, settings=dict(settings or {}))
        for slide in slides:
            project.slides.append(project._slide_entry(slide))
        project.save()
        return project

    @classmethod
    def open(cls, path: str | Path) -> Project:
        """Open an existing project folder.

        Raises
        ------
        ProjectError
            When the folder or its ``project.json`` is missing or damaged, or when it was
            written by a newer version of napari-wsl-al (the error names the file).
        """
        path = Path(path)
        file = path / PROJECT_FILE
        if path.is_file():
            raise ProjectError("this is a file, not a project folder", path=path,
                               hint="give the project's folder (study.wslal)")
        if not file.is_file():
            raise ProjectError("not a napari-wsl-al project (no project.json)", path=path,
                               hint="create one with `napari-wsl-al infer SLIDE --project FOLDER`, "
                               "or Project.create() in Python")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ProjectError(f"cannot read the project file: {error}", path=file) from error
        if not isinstance(data, dict):
            raise ProjectError("the project file does not hold a JSON object", path=file)
        version = data.get("format_version")
        if not isinstance(version, int):
            raise ProjectError("the project file has no format_version", path=file)
        if version > PROJECT_FORMAT_VERSION:
            raise ProjectError(
                f"written by a newer napari-wsl-al (format {version}, this version reads "
                f"up to {PROJECT_FORMAT_VERSION})",
                path=file,
                hint="upgrade napari-wsl-al to open it",
            )
        try:
            classes = tuple(ClassSpec.from_json(item) for item in data["classes"])
        except (KeyError, TypeError) as error:
            raise ProjectError(f"the class list is damaged: {error}", path=file) from error
        slides = data.get("slides", [])
        if not isinstance(slides, list):
            raise ProjectError(
                f"'slides' must be a list of slide entries, not {type(slides).__name__}",
                path=file, hint="fix the file by hand, or restore it from a backup")
        for index, entry in enumerate(slides):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ProjectError(
                    f"slide entry {index + 1} is damaged: {json.dumps(entry)[:80]} has no name",
                    path=file,
                    hint='each slide needs {"name": ..., "path": ...}; fix or remove the entry')
            if entry.get("path") is not None and not isinstance(entry["path"], str):
                raise ProjectError(
                    f"slide {entry['name']!r} has a path that is not text: {entry['path']!r}",
                    path=file, hint="fix or remove the entry")
            if "mpp" in entry and not is_mpp(entry["mpp"]):
                raise ProjectError(
                    f"slide {entry['name']!r} has a resolution that is not a positive number "
                    f"of µm per pixel: {entry['mpp']!r}",
                    path=file, hint='fix it (e.g. "mpp": 0.5) or remove the "mpp" entry')
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise ProjectError(
                f"'settings' must be a JSON object, not {type(settings).__name__}",
                path=file, hint='replace it with {} to go back to the defaults')
        return cls(
            path=path,
            classes=classes,
            slides=[dict(entry) for entry in slides],
            settings=dict(settings),
            format_version=version,
            created_with=str(data.get("created_with", "unknown")),
        )

    def save(self) -> None:
        """Write ``project.json`` atomically.

        Raises
        ------
        ProjectError
            When it cannot be written (read-only folder, full disk); the file on disk is then
            the previous one, unchanged.
        """
        try:
            write_json_atomic(self.path / PROJECT_FILE, self.to_json())
        except OSError as error:
            raise ProjectError(
                f"cannot save the project file: {error.strerror or error}",
                path=self.path / PROJECT_FILE,
                hint="check that the project folder is writable and the disk has space",
            ) from error

    def to_json(self) -> dict[str, Any]:
        """The JSON content of ``project.json``."""
        return {
            "format_version": PROJECT_FORMAT_VERSION,
            "created_with": self.created_with,
            "saved_with": __version__,
            "classes": [asdict(spec) for spec in self.classes],
            "slides": self.slides,
            "settings": self.settings,
        }

    # ------------------------------------------------------------------ content
    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes, in order."""
        return tuple(spec.name for spec in self.classes)

    def check_model_classes(self, model_classes, model_name: str = "the model") -> None:
        """Refuse a model whose classes are not the study's (same names, same order).

        Raises
        ------
        ProjectError
            Naming ``project.json``, both class lists and what to do.
        """
        model_classes = tuple(model_classes)
        if model_classes != self.class_names:
            raise ProjectError(
                f"{model_name} predicts the classes {list(model_classes)}, but this project's "
                f"classes are {list(self.class_names)}",
                path=self.path / PROJECT_FILE,
                hint="choose a model trained for the project's classes, or another project folder",
            )

    def slide_names(self) -> list[str]:
        """Names of the registered slides, in order."""
        return [entry["name"] for entry in self.slides]

    def _slide_entry(self, slide: str | Path | dict[str, Any], name: str | None = None) -> dict:
        if isinstance(slide, dict):
            return dict(slide)
        slide_path = Path(slide)
        if name is None:
            name = slide_path.stem if slide_path.suffix else slide_path.name
        return {"name": slide_key(name), "path": str(slide_path.resolve())}

    def add_slide(
        self, slide: str | Path | None, name: str | None = None, mpp: float | None = None
    ) -> str:
        """Register a slide (once) and save; returns its name in the project.

        Names are unique in a project, compared without regard to case (they name files):
        a slide whose name is taken by another file gets its folder's name in front
        (``caseB_slide``), or else a number (``slide-2``). The same file added again keeps
        the name it was given first, whatever ``name`` says. Callers use the returned name.

        Parameters
        ----------
        slide : str or Path or None
            The slide file; None for an in-memory slide (then ``name`` is required, and an
            in-memory slide of the same name is the same slide).
        name : str, optional
            Name wanted in the project; the file name without its extension by default.
        mpp : float, optional
            Level-0 µm per pixel given by the user (see :meth:`set_slide_mpp`), recorded for
            a new slide or an already registered one.

        Raises
        ------
        ProjectError
            When ``mpp`` differs from the resolution of the slide's stored superpixels.
        """
        if mpp is not None and not is_mpp(mpp):
            raise ValueError(f"microns per pixel must be a positive number, got {mpp!r}")
        if slide is None:
            if not name:
                raise ValueError("an in-memory slide needs a name")
            entry = {"name": slide_key(name), "path": None}
            known = next((e["name"] for e in self.slides
                          if e["name"] == entry["name"] and e.get("path") is None), None)
        else:
            entry = self._slide_entry(slide, name)
            known = self.slide_for_path(entry["path"])
        if known is not None:
            if mpp is not None:
                self.set_slide_mpp(known, mpp)
            return known
        entry["name"] = self._unique_name(entry["name"], entry["path"])
        if mpp is not None:
            entry["mpp"] = float(mpp)
        self.slides.append(entry)
        self.save()
        return entry["name"]

    def slide_for_path(self, path: str | Path) -> str | None:
        """The name of the slide registered for the file or folder ``path`` (None: none is)."""
        for entry in self.slides:
            if _same_path(entry.get("path"), str(path)):
                return entry["name"]
        return None

    def slide_mpp(self, name: str) -> float | None:
        """The level-0 µm per pixel recorded for a slide (None: its file's own, if any)."""
        return self._entry(name).get("mpp")

    def set_slide_mpp(self, name: str, mpp: float | None) -> None:
        """Record (or, with None, forget) the resolution of a slide whose file does not give
        it, and save; the slide then reopens at it (:meth:`open_slide`). The value it already
        has changes nothing.

        Raises
        ------
        ProjectError
            When the slide is not in the project, or its superpixels were computed at another
            level-0 resolution (labels and suggestions are tied to them; remove the slide's
            computed files first, or give back the resolution they were made at).
        """
        if mpp is not None and not is_mpp(mpp):
            raise ValueError(f"microns per pixel must be a positive number, got {mpp!r}")
        entry = self._entry(name)
        if entry.get("mpp") == (None if mpp is None else float(mpp)):
            return
        superpixels = self.superpixels_path(name)
        if superpixels.exists():
            from .al.superpixels import SuperpixelMap

            made_at = SuperpixelMap.open(superpixels).level0_mpp
            wanted = 1.0 if mpp is None else float(mpp)
            if not math.isclose(made_at, wanted, rel_tol=1e-6):
                raise ProjectError(
                    f"slide {name!r}: its superpixels were made at {made_at:g} µm per pixel of "
                    f"the slide, not {wanted:g}",
                    path=superpixels,
                    hint=f"give the slide {made_at:g} µm/px again, or remove its computed files "
                    "(Project dock) to start it over at the new resolution",
                )
        if mpp is None:
            entry.pop("mpp", None)
        else:
            entry["mpp"] = float(mpp)
        self.save()

    def open_slide(self, name: str):
        """The reader of a registered slide, at its recorded resolution when it has one.

        Raises
        ------
        ProjectError
            When the slide is not in the project or has no file.
        """
        from .io import open_slide

        entry = self._entry(name)
        if not entry.get("path"):
            raise ProjectError(f"slide {name!r} has no file", path=self.path / PROJECT_FILE)
        reader = open_slide(entry["path"])
        if entry.get("mpp") is not None:
            reader.set_mpp(entry["mpp"])
        return reader

    def _entry(self, name: str) -> dict[str, Any]:
        for entry in self.slides:
            if entry.get("name") == name:
                return entry
        raise ProjectError(
            f"no slide named {name!r} in the project",
            path=self.path / PROJECT_FILE,
            hint=f"known slides: {', '.join(self.slide_names()) or 'none'}",
        )

    def _unique_name(self, name: str, path: str | None) -> str:
        """``name``, or a variant of it that no registered slide uses (case-insensitively)."""
        taken = {entry["name"].casefold() for entry in self.slides}
        if name.casefold() not in taken:
            return name
        candidates = []
        if path is not None:
            parent = slide_key(Path(path).parent.name)
            if parent != "slide":
                candidates.append(f"{parent}_{name}")
        candidates = itertools.chain(candidates, (f"{name}-{n}" for n in itertools.count(2)))
        return next(c for c in candidates if c.casefold() not in taken)

    def remove_slide(
        self, name: str, delete_files: bool = False, lock_timeout: float | None = None
    ) -> RemovedSlide:
        """Unregister a slide and save at once.

        The slide's labels (and suggestions) stay in ``labels.sqlite``: adding the slide again
        under the same name brings them back.

        Parameters
        ----------
        name : str
            The slide's name in the project.
        delete_files : bool
            Also delete what was computed for the slide: its map store (:meth:`maps_path`)
            with the store's lock file (``maps/<slide>.zarr.lock``), the maps of each
            active-learning round's model (:meth:`round_maps_paths`), its per-patch classes
            (``maps/<slide>.patches.csv``, written for a folder of patches) and its superpixels
            (:meth:`superpixels_path`). The slide file itself is never touched. A run writing
            the slide's maps holds the store's lock: the removal waits for it to end.
        lock_timeout : float, optional
            Seconds to wait for a run writing the slide's maps (the map store's
            ``LOCK_TIMEOUT_S`` when None); only used with ``delete_files``.

        Returns
        -------
        RemovedSlide
            The entry removed, the files and folders deleted and the number of labels kept.

        Raises
        ------
        ProjectError
            When no slide has that name; when another run kept writing the slide's maps for
            the whole wait (nothing is then changed); or when a file cannot be deleted (the
            slide is then already unregistered).
        """
        for index, entry in enumerate(self.slides):
            if entry["name"] == name:
                break
        else:
            raise ProjectError(
                f"no slide named {name!r} in the project",
                path=self.path / PROJECT_FILE,
                hint=f"known slides: {', '.join(self.slide_names()) or 'none'}",
            )
        labels_kept = self._count_labels(
            "SELECT COUNT(*) FROM labels WHERE live = 1 AND slide = ?", (name,)
        )
        lock = self._hold_maps_lock(name, lock_timeout) if delete_files else None
        try:
            del self.slides[index]
            self.save()
            deleted = self._delete_computed_files(name) if delete_files else []
        finally:
            if lock is not None:
                lock.release()
        return RemovedSlide(entry=entry, deleted=tuple(deleted), labels_kept=labels_kept)

    def _hold_maps_lock(self, name: str, timeout: float | None):
        """The lock of the slide's map store, held (None when no run can hold it)."""
        if not self.maps_dir.is_dir():
            return None  # a run makes the folder before it takes the lock
        import filelock

        from .infer.store import LOCK_TIMEOUT_S, lock_path

        store = self.maps_path(name)
        timeout = LOCK_TIMEOUT_S if timeout is None else float(timeout)
        lock = filelock.FileLock(str(lock_path(store)), thread_local=False)
        try:
            lock.acquire(timeout=max(0.0, timeout))
        except filelock.Timeout:
            raise ProjectError(
                f"another run is writing the maps of slide {name!r} (waited {timeout:g} s for "
                f"it to finish); the slide is not removed",
                path=store,
                hint="let that run finish or stop it, then remove the slide again",
            ) from None
        except OSError as error:
            raise ProjectError(
                f"cannot take the lock of the maps of slide {name!r} "
                f"({error.strerror or error}); the slide is not removed",
                path=lock_path(store),
                hint="check that the maps folder can be written",
            ) from error
        return lock

    def round_maps_paths(self, slide_name: str) -> list[Path]:
        """``maps/<slide>.round_NNNN.zarr``: the maps of each active-learning round's model on
        a slide, in round order (none that is another registered slide's own store)."""
        if not self.maps_dir.is_dir():
            return []
        others = {self.maps_path(entry["name"]) for entry in self.slides
                  if entry["name"] != slide_name}
        pattern = f"{glob.escape(slide_key(slide_name))}.round_[0-9][0-9][0-9][0-9].zarr"
        return sorted(path for path in self.maps_dir.glob(pattern) if path not in others)

    def _delete_computed_files(self, name: str) -> list[Path]:
        """Delete a slide's map store, its rounds' map stores, patches CSV, superpixels and
        the stores' lock files.

        Returns what was deleted, but the lock files (part of the stores). The caller holds
        the slide's store's lock.
        """
        from .infer.patches import patch_table_path
        from .infer.store import lock_path

        store = self.maps_path(name)
        rounds = self.round_maps_paths(name)
        deleted = []
        for target in (store, *rounds, patch_table_path(store), self.superpixels_path(name)):
            if not (target.exists() or target.is_symlink()):
                continue
            try:
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            except OSError as error:
                raise ProjectError(
                    f"the slide is removed from the project, but its files cannot be "
                    f"deleted ({error.strerror or error})",
                    path=target,
                    hint="delete it by hand, or check its permissions",
                ) from error
            deleted.append(target)
        # Unlinked while held: a run waiting for it then locks a new file. Where an open
        # file cannot be unlinked (Windows), filelock removes it on release.
        for path in (store, *rounds):
            with contextlib.suppress(OSError):
                lock_path(path).unlink()
        return deleted

    def set_classes(self, specs: Sequence[ClassSpec]) -> None:
        """Replace the class list (names, colours, keys) and save at once.

        ``specs`` is checked by :func:`check_class_specs`. Labels name their classes, so a
        class that labels in ``labels.sqlite`` use (live ones, or earlier ones that undo can
        bring back) keeps its name: renaming or removing it is refused. Models are tied to the
        class names and their order: after a change of either, checkpoints trained for the
        earlier list are refused by :meth:`check_model_classes`.

        Parameters
        ----------
        specs : sequence of ClassSpec
            The new classes, in order.

        Raises
        ------
        ValueError
            When a rule of :func:`check_class_specs` is broken, or a class that labels use is
            renamed or removed; nothing is saved.
        ProjectError
            When ``labels.sqlite`` cannot be read.
        """
        specs = check_class_specs(specs)
        gone = [name for name in self.class_names if name not in {s.name for s in specs}]
        if gone:
            used = self.class_label_counts()
            for name in gone:
                live, total = used.get(name, (0, 0))
                if total:
                    kept = f" and {total - live} earlier ones kept for undo" if total > live else ""
                    raise ValueError(
                        f"class {name!r} is used by labels in {LABELS_FILE} ({live} live{kept}): "
                        "it cannot be renamed or removed (change its colour or key, or add a "
                        "new class)"
                    )
        self.classes = specs
        self.save()

    def class_label_counts(self) -> dict[str, tuple[int, int]]:
        """For each class named by a label in ``labels.sqlite``: ``(live labels, all labels)``.

        All labels count the superseded and undone ones too (undo and redo can bring them
        back). Empty when the project has no label database yet.

        Raises
        ------
        ProjectError
            When ``labels.sqlite`` cannot be read.
        """
        rows = self._read_labels(
            "SELECT item.value, SUM(labels.live), COUNT(*) FROM labels, "
            "json_each(labels.classes) AS item GROUP BY item.value"
        )
        return {str(name): (int(live), int(total)) for name, live, total in rows}

    def _count_labels(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        rows = self._read_labels(sql, parameters)
        return int(rows[0][0]) if rows else 0

    def _read_labels(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        """Rows of a query on ``labels.sqlite``, opened read-only (none when it is absent)."""
        file = self.path / LABELS_FILE
        if not file.is_file() or file.stat().st_size == 0:
            return []
        try:
            connection = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
            try:
                return connection.execute(sql, tuple(parameters)).fetchall()
            finally:
                connection.close()
        except sqlite3.Error as error:
            raise ProjectError(
                f"cannot read the label database ({error})",
                path=file,
                hint="check that it is a napari-wsl-al label database; restore a backup if it "
                "is damaged",
            ) from error

    def update_settings(self, **settings: Any) -> None:
        """Merge ``settings`` into :attr:`settings` and save."""
        self.settings.update(settings)
        self.save()

    # ------------------------------------------------------------------ paths
    @property
    def maps_dir(self) -> Path:
        """Folder of the inference maps."""
        return self.path / "maps"

    def maps_path(self, slide_name: str) -> Path:
        """``maps/<slide>.zarr``: the OME-Zarr group of a slide's maps."""
        return self.maps_dir / f"{slide_key(slide_name)}.zarr"

    def superpixels_path(self, slide_name: str) -> Path:
        """``superpixels/<slide>.zarr``: a slide's superpixel ids (written by active learning)."""
        return self.path / "superpixels" / f"{slide_key(slide_name)}.zarr"
