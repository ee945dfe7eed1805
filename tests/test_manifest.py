"""The npe2 manifest is valid, napari discovers the plugin, and every command it names imports."""

from __future__ import annotations

import importlib
from pathlib import Path

import npe2
import pytest

import napari_wsl_al

MANIFEST = Path(napari_wsl_al.__file__).parent / "napari.yaml"


def test_manifest_is_valid():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-wsl-al"
    assert manifest.contributions.readers, "the manifest declares no reader"
    assert {s.key for s in manifest.contributions.sample_data} >= {"cmu1", "synthetic_slide"}


def test_top_level_manifest_is_the_package_one(repo_root):
    top = repo_root / "napari.yaml"
    assert top.is_symlink()
    assert top.resolve() == MANIFEST.resolve()


def test_plugin_is_discovered_by_napari():
    manager = npe2.PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-wsl-al")  # KeyError when not discovered
    assert manifest.package_metadata.version == napari_wsl_al.__version__


@pytest.mark.parametrize(
    "command",
    npe2.PluginManifest.from_file(MANIFEST).contributions.commands,
    ids=lambda command: command.id,
)
def test_every_command_imports(command):
    module_name, _, attribute = command.python_name.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute))
