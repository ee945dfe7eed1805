"""Removing a slide with its files while a run writes its maps: the store's lock is waited for."""

from __future__ import annotations

import json
import threading
import time

import pytest

from napari_wsl_al.core.errors import ProjectError
from napari_wsl_al.core.infer.errors import MapStoreError
from napari_wsl_al.core.infer.store import MapStore, lock_path
from napari_wsl_al.core.progress import Progress


@pytest.fixture
def project(two_slide_project):
    return two_slide_project


def computed_files(project, name):
    """A map store, a patches CSV and a superpixel store of ``name``, as runs leave them."""
    store, superpixels = project.maps_path(name), project.superpixels_path(name)
    for folder in (store, superpixels):
        (folder / "0").mkdir(parents=True)
        (folder / "0" / "chunk").write_bytes(b"\0" * 8)
    table = project.maps_dir / f"{name}.patches.csv"
    table.write_text("patch,prediction,confidence\n")
    return store, table, superpixels


def writing_run(project, name, events):
    """A run writing the slide's maps, stopped after taking the store's lock.

    When resumed it writes one more file into the store (a writer recreates what it writes)
    and records the moment it ends; the lock is released right after.
    """
    store = MapStore(project.maps_path(name), lock_timeout=0)

    def job():
        yield Progress(0, 1, "tile 0")
        store.path.mkdir(parents=True, exist_ok=True)
        (store.path / "last_tile").write_bytes(b"\1")
        events.append(("run ended", time.monotonic()))
        return store.path

    run = store.writing(job(), name)
    assert next(run).message == "tile 0"
    return run


def _locked(store_path):
    """Whether another writer would have to wait for the store's lock."""
    probe = MapStore(store_path, lock_timeout=0).writing(iter(()), "probe")
    try:
        next(probe)
    except StopIteration:
        return False
    except MapStoreError:
        return True
    raise AssertionError("the probe has nothing to yield")


def finish(run):
    with pytest.raises(StopIteration):
        next(run)


def test_remove_slide_waits_for_the_run_writing_its_maps(project):
    store, table, superpixels = computed_files(project, "first")
    others = computed_files(project, "second")
    events = []
    run = writing_run(project, "first", events)
    assert _locked(store)

    def end_run_later():
        time.sleep(0.4)
        finish(run)

    thread = threading.Thread(target=end_run_later)
    thread.start()
    started = time.monotonic()
    removed = project.remove_slide("first", delete_files=True)  # waits up to 10 s
    events.append(("removed", time.monotonic()))
    thread.join()
    assert time.monotonic() - started >= 0.4
    assert [event for event, _ in events] == ["run ended", "removed"]
    # deleted after the run's last write: nothing of the slide is left, lock file included
    assert not store.exists() and not table.exists() and not superpixels.exists()
    assert not lock_path(store).exists()
    assert set(removed.deleted) == {store, table, superpixels}
    assert all(path.exists() for path in others)
    assert project.slide_names() == ["second"]


def test_remove_slide_gives_up_on_a_run_that_keeps_writing(project):
    store, table, superpixels = computed_files(project, "first")
    before = (project.path / "project.json").read_bytes()
    run = writing_run(project, "first", [])
    started = time.monotonic()
    with pytest.raises(ProjectError) as caught:
        project.remove_slide("first", delete_files=True, lock_timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    message = str(caught.value)
    assert str(store) in message
    assert "another run is writing the maps of slide 'first' (waited 0.3 s" in message
    assert "the slide is not removed" in message and "then remove the slide again" in message
    # nothing changed: the slide is registered, its files are there, the run still holds the lock
    assert project.slide_names() == ["first", "second"]
    assert (project.path / "project.json").read_bytes() == before
    assert store.is_dir() and table.is_file() and superpixels.is_dir()
    assert _locked(store)
    run.close()
    removed = project.remove_slide("first", delete_files=True, lock_timeout=0)
    assert set(removed.deleted) == {store, table, superpixels}
    assert not lock_path(store).exists()


def test_remove_slide_deletes_the_lock_file_a_killed_run_left(project):
    store = project.maps_path("second")
    project.maps_dir.mkdir()
    lock_path(store).write_bytes(b"")  # a run killed before writing anything
    removed = project.remove_slide("second", delete_files=True, lock_timeout=0)
    assert removed.deleted == ()  # the lock file goes with the store, and is not listed
    assert not lock_path(store).exists()
    assert json.loads((project.path / "project.json").read_text())["slides"][0]["name"] == "first"


def test_remove_slide_without_delete_files_ignores_the_lock(project):
    store, table, superpixels = computed_files(project, "first")
    run = writing_run(project, "first", [])
    removed = project.remove_slide("first", lock_timeout=0)
    assert removed.deleted == ()
    assert store.is_dir() and table.is_file() and superpixels.is_dir()
    assert _locked(store)
    run.close()
    assert not _locked(store)
