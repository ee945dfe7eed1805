"""Slide inference on a dask.distributed cluster: one task per slide, maps written into the project."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..progress import run_to_end
from ..project import Project
from .engine import InferenceConfig, infer_slide
from .loading import ModelChoice, load_inference_model
from .store import MapStore


def infer_slide_task(
    slide_path: str,
    slide_name: str,
    model: ModelChoice,
    project_path: str,
    config: dict[str, Any],
    region: tuple[int, int, int, int] | None = None,
    lock_timeout: float | None = None,
) -> dict[str, Any]:
    """Infer one slide into ``project_path/maps/<slide_name>.zarr`` (runs on a worker).

    ``lock_timeout``: seconds to wait for another run writing the same store (the store's
    default when None).

    Every argument is plain data (or a picklable callable for ``model``), so the task can be
    shipped to any worker that sees the same file system.

    Returns
    -------
    dict
        ``slide``, ``name``, ``maps`` (store path), ``tiles_total``, ``tiles_computed``
        (patches for a folder of patches), ``seconds``, ``device``, ``patches_csv`` (path of
        ``maps/<slide>.patches.csv`` for a folder of patches, else None) and ``patches``
        (the :class:`~napari_wsl_al.core.infer.patches.PatchPrediction` of every finished
        patch; empty for a slide).
    """
    inference = InferenceConfig.from_dict(config)
    project = Project.open(project_path)
    net = load_inference_model(model, inference.device)
    with project.open_slide(slide_name) as reader:  # at the resolution it records
        result = run_to_end(
            infer_slide(reader, net, inference,
                        MapStore(project.maps_path(slide_name), lock_timeout=lock_timeout),
                        region=region)
        )
    return {
        "slide": slide_path,
        "name": slide_name,
        "maps": str(result.path),
        "tiles_total": result.tiles_total,
        "tiles_computed": result.tiles_computed,
        "seconds": result.seconds,
        "device": result.device,
        "patches_csv": None if result.patches_csv is None else str(result.patches_csv),
        "patches": list(result.patches),
    }


def _records_mpp(path: str | Path) -> bool:
    """Whether the slide file records its own resolution."""
    from ..io import open_slide

    with open_slide(path) as reader:
        return reader.mpp is not None


def infer_slides_distributed(
    paths: Sequence[str | Path],
    checkpoint: ModelChoice,
    project: Project | str | Path,
    config: InferenceConfig,
    scheduler_address: str | Any,
    region: tuple[int, int, int, int] | None = None,
    lock_timeout: float | None = None,
    slide_mpp: float | None = None,
) -> list[dict[str, Any]]:
    """Run inference on several slides, one task per slide, on an existing dask cluster.

    Parameters
    ----------
    paths : sequence of path
        Slides, on a file system the workers share with this machine.
    checkpoint : "default", path or callable
        The model (see :func:`~napari_wsl_al.core.infer.loading.load_inference_model`);
        each worker loads it on its own best device (``config.device``).
    project : Project or path
        The project; slides are registered here (this process is the only writer of
        ``project.json``), maps are written by the workers into ``maps/``.
    config : InferenceConfig
        Inference parameters.
    scheduler_address : str or distributed.Client
        Address of the scheduler (``tcp://host:8786``), or a connected client.
    region : (x, y, w, h), optional
        Level-0 box applied to every slide.
    lock_timeout : float, optional
        Seconds a task waits for another run writing the same slide's maps (the store's
        default when None).
    slide_mpp : float, optional
        Level-0 µm per pixel of slides whose files do not record it (the others keep
        theirs), kept in the project
        (:meth:`~napari_wsl_al.core.project.Project.add_slide`); each task reads its slide at
        the resolution the project records.

    Returns
    -------
    list of dict
        One summary per slide, in the order of ``paths`` (see :func:`infer_slide_task`).

    Raises
    ------
    Exception
        The first task's error (typed errors such as ``NoTissueError`` come through as is).
    """
    from distributed import Client

    if not isinstance(project, Project):
        project = Project.open(project)
    names = [project.add_slide(path, mpp=None if slide_mpp is None or _records_mpp(path)
                                else slide_mpp) for path in paths]
    owned = not isinstance(scheduler_address, Client)
    client = Client(scheduler_address) if owned else scheduler_address
    try:
        futures = [
            client.submit(
                infer_slide_task, str(Path(path).resolve()), name, checkpoint,
                str(project.path), config.to_dict(), region, lock_timeout,
                key=f"wslal-infer-{name}-{uuid.uuid4().hex[:8]}", pure=False,
            )
            for path, name in zip(paths, names)
        ]
        return client.gather(futures)
    finally:
        if owned:
            client.close()
