"""Tiled slide inference writing CAM, foreground/background, probability and uncertainty maps to OME-Zarr."""

from .engine import MAP_CHOICES, InferenceConfig, InferenceResult, infer_slide
from .errors import DiskFullError, InferenceError, MapStoreError, NoTissueError
from .loading import DEFAULT_MODEL, load_inference_model
from .store import MapHandle, MapStore
from .tiling import TileGrid, resolve_resolution, tile_grid

__all__ = [
    "DEFAULT_MODEL",
    "MAP_CHOICES",
    "DiskFullError",
    "InferenceConfig",
    "InferenceError",
    "InferenceResult",
    "MapHandle",
    "MapStore",
    "MapStoreError",
    "NoTissueError",
    "TileGrid",
    "infer_slide",
    "load_inference_model",
    "resolve_resolution",
    "tile_grid",
]
