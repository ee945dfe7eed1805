"""napari sample data: the real CMU-1-Small-Region slide, a synthetic slide and synthetic patches.

napari-free: each function returns a list of LayerData tuples, opened through this plugin's own
reader. The synthetic samples are written once into a user cache folder and reused; writing
them takes seconds, so inside napari's GUI they show a progress bar in napari's activity dock
(:func:`progress_bar`), whose updates also let napari repaint meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import DatasetError, SlideError, SlideNotFoundError
from .core.progress import Progress

LayerData = tuple[Any, dict[str, Any], str]

#: The real slide shipped in the repository's ``sample_data/`` folder.
CMU1_FILE_NAME = "CMU-1-Small-Region.svs"
CMU1_URL = "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs"

#: Environment variable naming a folder that holds the sample files (checked first).
SAMPLE_DATA_ENV = "NAPARI_WSL_AL_SAMPLE_DATA"
#: Environment variable naming the folder where synthetic samples are cached.
CACHE_ENV = "NAPARI_WSL_AL_CACHE_DIR"

#: The synthetic sample slide: size (pixels per side), resolution and seed.
SYNTHETIC_SLIDE_SIZE = 8192
SYNTHETIC_SLIDE_MPP = 0.5
SYNTHETIC_SEED = 0
#: The synthetic patch set: patches per class and patch side.
SYNTHETIC_PATCHES_PER_CLASS = 10
SYNTHETIC_PATCH_SIZE = 256
#: Bumped whenever the generator's output changes, so stale cached samples are not reused.
SYNTHETIC_VERSION = 1


def repository_sample_folder() -> Path:
    """``sample_data/`` of the source checkout this package was imported from."""
    return Path(__file__).resolve().parents[2] / "sample_data"


def sample_data_folders() -> list[Path]:
    """Folders searched for sample files: ``$NAPARI_WSL_AL_SAMPLE_DATA`` then the repository's."""
    folders = []
    if os.environ.get(SAMPLE_DATA_ENV):
        folders.append(Path(os.environ[SAMPLE_DATA_ENV]).expanduser())
    folders.append(repository_sample_folder())
    return folders


def cache_folder() -> Path:
    """Where synthetic samples are written: ``$NAPARI_WSL_AL_CACHE_DIR`` or the user cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "napari-wsl-al"
    return Path(user_cache_dir("napari-wsl-al", appauthor=False))


def find_cmu1() -> Path:
    """The path of CMU-1-Small-Region.svs.

    Raises
    ------
    SlideNotFoundError
        When no searched folder holds it, saying where to download it and where to put it.
    """
    folders = sample_data_folders()
    for folder in folders:
        candidate = folder / CMU1_FILE_NAME
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(folder) for folder in folders)
    raise SlideNotFoundError(
        f"the sample slide {CMU1_FILE_NAME} is not installed (searched {searched})",
        path=folders[-1] / CMU1_FILE_NAME,
        hint=(
            f"download it from {CMU1_URL} and put it in a folder named by the environment "
            f"variable {SAMPLE_DATA_ENV}, or in sample_data/ of a source checkout"
        ),
    )


def _open(path: Path) -> list[LayerData]:
    """LayerData of ``path`` through this plugin's reader."""
    from ._reader import napari_get_reader

    reader = napari_get_reader(str(path))
    if reader is None:
        raise SlideError(
            "napari-wsl-al's reader cannot open this sample",
            path=path,
            hint="delete it to have it written again, or check the log for the reason",
        )
    return reader(str(path))


def cmu1_small_region() -> list[LayerData]:
    """The real Aperio H&E slide CMU-1-Small-Region (2220 x 2967 px, 0.499 um/px)."""
    return _open(find_cmu1())


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[Progress], None]]:
    """A progress callback for writing a sample: inside napari's GUI, a bar in napari's
    activity dock (made at the first record, so nothing shows when nothing is written);
    elsewhere it does nothing.

    Yields
    ------
    callable
        Takes :class:`~napari_wsl_al.core.progress.Progress` records.
    """
    bar = None

    def report(record: Progress) -> None:
        nonlocal bar
        if "napari._qt" not in sys.modules:
            return
        if bar is None:
            from napari.utils import progress

            bar = progress(total=int(record.total) if record.total else None, desc=description)
        if record.total:
            if bar.total != record.total:
                bar.total = int(record.total)
            bar.update(max(0, min(int(record.step), int(record.total)) - bar.n))

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()


def synthetic_slide_path(size: int | None = None, seed: int | None = None,
                         progress: Callable[[Progress], None] | None = None) -> Path:
    """Write the synthetic sample slide into the cache folder (once) and return its path.

    Parameters
    ----------
    size : int, optional
        Pixels per side (default :data:`SYNTHETIC_SLIDE_SIZE`).
    seed : int, optional
        Default :data:`SYNTHETIC_SEED`.
    progress : callable, optional
        Called with :class:`~napari_wsl_al.core.progress.Progress` records while the slide is
        written (not when it is in the cache already).
    """
    from .core.data.synthetic import truth_path_for, write_synthetic_slide

    size = SYNTHETIC_SLIDE_SIZE if size is None else int(size)
    seed = SYNTHETIC_SEED if seed is None else int(seed)
    folder = cache_folder()
    path = folder / f"synthetic_slide_{size}px_seed{seed}_v{SYNTHETIC_VERSION}.tif"
    if path.is_file() and truth_path_for(path).is_file():
        return path
    _make_folder(folder)
    if progress is not None:
        progress(Progress(0, None, "preparing the stain textures"))
    return write_synthetic_slide(path, size, size, mpp=SYNTHETIC_SLIDE_MPP, seed=seed,
                                 progress=progress)


def synthetic_patches_path(
    n_per_class: int | None = None, size: int | None = None, seed: int | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Path:
    """Write the synthetic sample patch set (GlaS layout) into the cache folder (once).

    ``progress`` is called after every patch written (see :func:`synthetic_slide_path`).
    """
    from .core.data.synthetic import write_synthetic_patch_set

    n_per_class = SYNTHETIC_PATCHES_PER_CLASS if n_per_class is None else int(n_per_class)
    size = SYNTHETIC_PATCH_SIZE if size is None else int(size)
    seed = SYNTHETIC_SEED if seed is None else int(seed)
    folder = cache_folder()
    root = folder / f"synthetic_patches_{n_per_class}x2_{size}px_seed{seed}_v{SYNTHETIC_VERSION}"
    if (root / "grade.csv").is_file():
        return root
    _make_folder(folder)
    partial = folder / f"{root.name}.{os.getpid()}.part"
    write_synthetic_patch_set(partial, n_per_class=n_per_class, shape=(size, size), seed=seed,
                              progress=progress)
    try:
        os.replace(partial, root)
    except OSError:
        # another process finished first: use its copy
        if not (root / "grade.csv").is_file():
            raise
        _remove_tree(partial)
    return root


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(
            f"cannot create the cache folder ({error})",
            path=folder,
            hint=f"set {CACHE_ENV} to a writable folder",
        ) from error


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def synthetic_slide() -> list[LayerData]:
    """A synthetic pyramidal H&E slide with benign and malignant tissue (cached)."""
    with progress_bar("writing the synthetic sample slide (once)") as report:
        path = synthetic_slide_path(progress=report)
    return _open(path)


def synthetic_patches() -> list[LayerData]:
    """Synthetic benign and malignant H&E patches as a mosaic, with their gland masks."""
    with progress_bar("writing the synthetic sample patches (once)") as report:
        root = synthetic_patches_path(progress=report)
    layers = _open(root / "images")
    labels = _gland_labels(root, layers[0][1])
    return layers if labels is None else [*layers, labels]


def _gland_labels(root: Path, image_kwargs: dict[str, Any]) -> LayerData | None:
    """A Labels layer of the gland masks laid out like the image mosaic (1 benign, 2 malignant)."""
    from skimage.io import imread

    from .core.data.synthetic import CLASS_NAMES

    reader = image_kwargs.get("metadata", {}).get("reader")
    boxes = getattr(reader, "patch_boxes", None)
    names = getattr(reader, "patch_names", None)
    if reader is None or boxes is None or names is None:
        return None
    classes = _read_classes(root / "grade.csv")
    width, height = reader.dimensions
    labels = np.zeros((height, width), np.uint8)
    for name, (x, y, w, h) in zip(names, boxes):
        stem = Path(name).stem
        mask_path = root / "masks" / f"{stem}.png"
        if not mask_path.is_file() or stem not in classes:
            continue
        mask = imread(mask_path) > 0
        if mask.shape != (h, w):
            continue
        labels[y : y + h, x : x + w][mask] = 1 + CLASS_NAMES.index(classes[stem])
    kwargs = {
        "name": "glands (1 benign, 2 malignant)",
        "scale": image_kwargs.get("scale", (1.0, 1.0)),
        "opacity": 0.35,
        "metadata": {"class_names": list(CLASS_NAMES), "source": str(root / "masks")},
    }
    if "units" in image_kwargs:
        kwargs["units"] = image_kwargs["units"]
    return (labels, kwargs, "labels")


def _read_classes(csv_path: Path) -> dict[str, str]:
    import csv

    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    return {row[0].strip(): row[2].strip() for row in rows[1:] if len(row) >= 3}
