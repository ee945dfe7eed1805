"""Sub-commands of the ``napari-wsl-al`` command line, one module each."""
