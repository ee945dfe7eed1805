"""Headless core of napari-wsl-al: slide access, data, models, training, inference, active learning.

Nothing under ``napari_wsl_al.core`` imports napari, Qt or magicgui.
"""
