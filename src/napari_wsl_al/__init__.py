"""napari-wsl-al: weakly-supervised localisation and active learning for whole-slide histology."""

__version__ = "0.1.0"

__all__ = ["__version__"]
