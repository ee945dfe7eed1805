"""The core never imports napari, Qt or magicgui: it runs headless, in scripts and on clusters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import napari_wsl_al.core

GUI_MODULES = ("napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")

IMPORT_ALL_CORE = """
import importlib, pkgutil, sys
import napari_wsl_al.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, core.__name__ + ".")]
for name in names:
    importlib.import_module(name)
import napari_wsl_al.cli, napari_wsl_al._reader, napari_wsl_al._sample_data
gui = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(len(names), ",".join(gui))
"""


def test_core_imports_without_gui_modules():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL_CORE, *GUI_MODULES],
        capture_output=True,
        text=True,
        check=True,
    )
    count, _, gui = result.stdout.strip().rpartition("\n")[-1].partition(" ")
    assert int(count) >= 5, "the core's modules were not found"
    assert gui == "", f"the core imported GUI modules: {gui}"


def test_core_sources_do_not_name_gui_modules():
    core_dir = Path(napari_wsl_al.core.__file__).parent
    offenders = []
    for source in core_dir.rglob("*.py"):
        for number, line in enumerate(source.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                if words[1].split(".")[0] in GUI_MODULES:
                    offenders.append(f"{source.name}:{number}: {line.strip()}")
    assert not offenders, offenders
