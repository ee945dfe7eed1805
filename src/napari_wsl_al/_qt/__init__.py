"""Thin napari widgets: the only code that imports Qt, napari.qt or magicgui."""
