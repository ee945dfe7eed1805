"""Stopping a round's map run: the inference job ends (store lock released) before the slide closes."""

from __future__ import annotations

import pytest
from infer_models import gradient_slide_project
from store_safety_driver import PatternModel

from napari_wsl_al.core.al import rounds
from napari_wsl_al.core.infer import engine
from napari_wsl_al.core.infer.errors import MapStoreError
from napari_wsl_al.core.infer.store import MapStore


def lock_is_free(store_path) -> bool:
    """Whether another run gets the store's lock at once (``MapStore.writing``, timeout 0)."""
    probe = MapStore(store_path, lock_timeout=0).writing(iter(()), "probe")
    try:
        next(probe)
    except StopIteration:
        return True
    except MapStoreError:
        return False
    raise AssertionError("the probe has nothing to yield")


@pytest.fixture
def round_run(tmp_path, monkeypatch):
    """``(start, store, closes, jobs)``: ``start()`` begins round 1's maps of a 1024 x 1024 slide
    (about 120 tiles of 128 pixels, 8 per batch); ``closes`` records, each time the slide's
    reader is closed, whether the map store's lock was free at that moment.

    Every inference job started is also kept in a list, as a profiler, a debugger or a
    traceback may keep it: the lock must be released by closing the job, not by CPython
    freeing it once nothing refers to it any more.
    """
    project, settings, store = gradient_slide_project(tmp_path, 1024)
    closes = []
    open_slide = rounds.open_project_slide

    def recorded_open(project, name):
        reader = open_slide(project, name)
        close = reader.close

        def recorded_close():
            closes.append(lock_is_free(store))
            close()

        reader.close = recorded_close
        return reader

    monkeypatch.setattr(rounds, "open_project_slide", recorded_open)
    jobs = []
    infer_slide = engine.infer_slide

    def kept_infer_slide(*args, **kwargs):
        jobs.append(infer_slide(*args, **kwargs))
        return jobs[-1]

    monkeypatch.setattr(engine, "infer_slide", kept_infer_slide)

    def start():
        return rounds.infer_round_maps(project, "synth", PatternModel(), 1, settings)

    return start, store, closes, jobs


def test_closing_in_the_middle_releases_the_lock_before_the_slide_closes(round_run):
    start, store, closes, jobs = round_run
    run = start()
    first, second = next(run), next(run)
    assert first.message.startswith("round 1 maps of synth: ")
    assert 0 < second.step < second.total  # in the middle of the slide
    assert not lock_is_free(store)
    assert len(jobs) == 1
    run.close()
    assert closes == [True]  # the job was closed (lock released) before the reader
    assert lock_is_free(store)  # at once, not when the job is collected


def test_an_error_in_the_middle_releases_the_lock_while_it_propagates(round_run):
    start, store, closes, jobs = round_run
    run = start()
    next(run)
    assert len(jobs) == 1
    with pytest.raises(RuntimeError, match="stopped by the caller") as raised:
        run.throw(RuntimeError("stopped by the caller"))
    # the traceback (kept alive here) holds the run's frame: the lock must not wait for it
    assert raised.value.__traceback__ is not None
    assert closes == [True]
    assert lock_is_free(store)


def test_a_finished_run_closes_the_slide_once(round_run):
    start, store, closes, jobs = round_run
    run = start()
    for _ in run:
        pass
    assert len(jobs) == 1 and closes == [True]
    assert lock_is_free(store) and "fg" in MapStore(store).handles()
