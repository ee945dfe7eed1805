"""Shared fixtures: the repository's sample data and the team's real data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top folder."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def cmu1_path() -> Path:
    """The real Aperio sample slide committed under sample_data/."""
    path = REPO_ROOT / "sample_data" / "CMU-1-Small-Region.svs"
    assert path.exists(), f"{path} is missing from the repository"
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets beside the repository (GlaS training images, an Aperio slide)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present on this machine")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _project_in_tmp(tmp_path, monkeypatch):
    """Widgets default to a project under the home folder; tests use a temporary one."""
    monkeypatch.setenv("NAPARI_WSL_AL_PROJECT", str(tmp_path / "study.wslal"))


@pytest.fixture(scope="session")
def small_synthetic_slide(tmp_path_factory) -> Path:
    """A 512 x 384 synthetic H&E slide at 0.5 µm/px, half tissue, written once per test run."""
    from napari_wsl_al.core.data.synthetic import write_synthetic_slide

    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "synth.tif", 512, 384,
                                 mpp=0.5, seed=4, tissue_fraction=0.5, smallest_level=256)


@pytest.fixture
def two_slide_project(tmp_path):
    """A project with two slides, ``first`` and ``second``, whose files are never read."""
    from napari_wsl_al.core.project import Project

    slides = []
    for name in ("first", "second"):
        path = tmp_path / f"{name}.tif"
        path.write_bytes(b"not read by these tests")
        slides.append(path)
    return Project.create(tmp_path / "study", classes=["benign", "malignant"], slides=slides)
