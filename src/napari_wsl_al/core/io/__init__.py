"""Slide access: one protocol (:class:`SlideReader`) over OpenSlide, tifffile, zarr, images and memory."""

from .base import SlideReader

__all__ = ["SlideReader"]
