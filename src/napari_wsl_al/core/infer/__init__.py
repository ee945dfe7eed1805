"""Tiled slide inference writing maps to OME-Zarr."""
