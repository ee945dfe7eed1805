"""Map stores survive kills and concurrent runs: every pyramid level right, one writer at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from filelock import FileLock, Timeout
from infer_models import gradient_image, gradient_slide_project
from store_safety_driver import (
    CONFIG,
    PatternModel,
    colour_model,
    slide_reader,
)

from napari_wsl_al.core.infer import store as store_module
from napari_wsl_al.core.infer.engine import infer_slide
from napari_wsl_al.core.infer.errors import MapStoreError
from napari_wsl_al.core.infer.store import MapStore
from napari_wsl_al.core.progress import run_to_end

DRIVER = Path(__file__).with_name("store_safety_driver.py")

#: Tiles of the driver's slide: 12 rows x 22 columns.
TOTAL_TILES = 12 * 22


def run_driver(store, *options, timeout=180):
    """Run the driver on ``store`` in a new process and wait for it."""
    return subprocess.run([sys.executable, str(DRIVER), str(store), *map(str, options)],
                          check=False, capture_output=True, text=True, timeout=timeout)


def start_driver(store, *options):
    return subprocess.Popen([sys.executable, str(DRIVER), str(store), *map(str, options)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def every_level(path):
    """``{map name: [level 0, level 1, ...]}`` as numpy arrays, read as napari would."""
    return {name: [np.asarray(level) for level in handle.levels]
            for name, handle in MapStore(path).handles().items()}


def assert_same_maps(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name, levels in expected.items():
        assert len(actual[name]) == len(levels), name
        for level, (got, want) in enumerate(zip(actual[name], levels)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6,
                                       err_msg=f"map {name}, level {level}")


def run_here(path):
    return run_to_end(infer_slide(slide_reader(), PatternModel(), CONFIG, MapStore(path)))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Every level of every map from one uninterrupted run."""
    path = tmp_path_factory.mktemp("clean") / "m.zarr"
    result = run_here(path)
    assert result.tiles_total == result.tiles_computed == TOTAL_TILES
    levels = every_level(path)
    assert [level.shape for level in levels["fg"]] == [(275, 525), (138, 263), (69, 132)]
    assert sorted(levels) == ["bg", "cam", "fg", "probs", "uncertainty/entropy",
                              "uncertainty/margin", "uncertainty/ovr_entropy",
                              "uncertainty/ovr_entropy_max"]
    return levels


def test_a_colour_normalising_run_killed_midway_resumes_to_the_maps_of_a_clean_run(tmp_path):
    """The slide's colour statistics are kept in the store's spec: a run killed midway
    resumes with them (it does not sample the slide again) to the maps of a clean run."""
    clean_path = tmp_path / "clean.zarr"
    clean = run_to_end(infer_slide(slide_reader(), colour_model(), CONFIG, MapStore(clean_path)))
    assert clean.tiles_computed == TOTAL_TILES
    source = MapStore(clean_path).read_info()["spec"]["colour_source"]
    assert source is not None and len(source) == 6
    path = tmp_path / "m.zarr"
    killed = run_driver(path, "--kill-after-batches", 17, "--colour")
    assert killed.returncode == -9, killed.stderr
    done = int(MapStore(path).done_bitmap().sum())
    assert 0 < done < TOTAL_TILES
    assert MapStore(path).read_info()["spec"]["colour_source"] == source
    resumed = run_to_end(infer_slide(slide_reader(), colour_model(), CONFIG, MapStore(path)))
    assert resumed.tiles_computed == TOTAL_TILES - done
    assert_same_maps(every_level(path), every_level(clean_path))
    # and the colour normalisation changed the maps: not those of the plain model
    plain = run_to_end(infer_slide(slide_reader(), PatternModel(), CONFIG,
                                   MapStore(tmp_path / "plain.zarr")))
    assert plain.tiles_computed == TOTAL_TILES
    fg, plain_fg = every_level(path)["fg"][0], every_level(tmp_path / "plain.zarr")["fg"][0]
    assert np.abs(fg - plain_fg).max() > 0.01


def test_a_gated_cam_run_killed_midway_resumes_to_the_maps_of_a_clean_run(tmp_path):
    """A colour-normalising CAM model (the shipped kind) keeps the slide's colour statistics
    and foreground range in the spec, and its tissue-gated uncertainty maps resume exactly."""
    # the clean run in a process like the killed one's (the slide statistics come out of
    # float reductions that may differ in the last bits with another thread count)
    clean_path = tmp_path / "clean.zarr"
    clean = run_driver(clean_path, "--cam")
    assert clean.returncode == 0, clean.stderr
    total = json.loads(clean.stdout.strip().splitlines()[-1])["total"]
    spec = MapStore(clean_path).read_info()["spec"]
    assert len(spec["colour_source"]) == 6 and len(spec["fg_range"]) == 2
    path = tmp_path / "m.zarr"
    killed = run_driver(path, "--kill-after-batches", 17, "--cam")
    assert killed.returncode == -9, killed.stderr
    done = int(MapStore(path).done_bitmap().sum())
    assert 0 < done < total
    kept = MapStore(path).read_info()["spec"]
    assert kept["colour_source"] == spec["colour_source"] and kept["fg_range"] == spec["fg_range"]
    resumed = run_driver(path, "--cam")  # resumed in a process like the clean run's
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["computed"] == total - done
    maps = every_level(path)
    assert "uncertainty/ovr_entropy_max" in maps
    assert_same_maps(maps, every_level(clean_path))


# ---------------------------------------------------------------------- kill -9, then resume
#: Where the driver is killed, and how many tiles are then marked done.
KILLS = {
    "early": (["--kill-after-batches", 2], "some or none"),
    "middle": (["--kill-after-batches", 17], "some"),
    "middle, pyramid updated during the run": (["--kill-after-batches", 20,
                                                "--pyramid-interval", 0], "some"),
    "after the last tile": (["--kill-in-final-pyramid", 0], "all"),
    "during the final pyramid update": (["--kill-in-final-pyramid", 7], "all"),
}


@pytest.mark.parametrize(("options", "done_after_kill"), list(KILLS.values()), ids=list(KILLS))
def test_a_run_killed_anywhere_resumes_to_the_maps_of_a_clean_run(tmp_path, clean, options,
                                                                  done_after_kill):
    path = tmp_path / "m.zarr"
    killed = run_driver(path, *options)
    assert killed.returncode == -9, killed.stderr
    done = int(MapStore(path).done_bitmap().sum())
    if done_after_kill == "all":
        assert done == TOTAL_TILES  # level 0 finished, the pyramid not (or not all of it)
    elif done_after_kill == "some":
        assert 0 < done < TOTAL_TILES
    else:
        assert done < TOTAL_TILES
    resumed = run_here(path)
    assert resumed.tiles_computed == TOTAL_TILES - done  # only the pyramid, when all were done
    assert_same_maps(every_level(path), clean)
    again = run_here(path)
    assert again.tiles_computed == 0
    assert_same_maps(every_level(path), clean)


def test_a_store_damaged_before_pyramids_were_recorded_is_repaired(tmp_path, clean):
    """A store written before the pyramid state was recorded: its lower levels are rebuilt."""
    path = tmp_path / "m.zarr"
    run_here(path)
    import zarr

    group = zarr.open_group(str(path), mode="r+", zarr_format=2)
    info = dict(group.attrs["wslal"])
    del info["pyramid_stale"]
    group.attrs["wslal"] = info
    group["fg/1"][40:60] = 0.0  # a band of stale zeros, as an old killed run left it
    group["cam/2"][:, :10] = 0.0
    assert run_here(path).tiles_computed == 0
    assert_same_maps(every_level(path), clean)


# ---------------------------------------------------------------------- one writer at a time
def test_two_runs_at_once_give_the_maps_of_one_run(tmp_path, clean):
    path = tmp_path / "m.zarr"
    go = tmp_path / "go"
    runs = [start_driver(path, "--ready", tmp_path / f"ready{i}", "--go", go,
                         "--lock-timeout", 150, "--batch-seconds", 0.02) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(r.poll() is None for r in runs)
        time.sleep(0.05)
    go.write_text("go")  # both start at the same moment
    outputs = [r.communicate(timeout=180) for r in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err
    computed = sorted(json.loads(out.splitlines()[-1])["computed"] for out, _ in outputs)
    assert computed == [0, TOTAL_TILES]  # one computed every tile, the other waited and reused
    assert_same_maps(every_level(path), clean)


def test_a_run_refuses_a_store_another_process_writes(tmp_path):
    path = tmp_path / "m.zarr"
    holder = FileLock(store_module.lock_path(path), thread_local=False)
    holder.acquire(timeout=0)
    try:
        refused = run_driver(path, "--lock-timeout", 0.5)
    finally:
        holder.release()
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "another run is writing" in refused.stderr
    assert "'synthetic'" in refused.stderr and str(path) in refused.stderr
    assert not path.exists()  # it left the store alone


def lock_is_free(path):
    probe = FileLock(store_module.lock_path(path), thread_local=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return False
    probe.release()
    return True


def small_job(path, model=None):
    reader = slide_reader()
    return infer_slide(reader, model or PatternModel(), CONFIG, MapStore(path))


def test_the_lock_is_held_while_a_run_writes_and_released_when_it_is_cancelled(tmp_path):
    path = tmp_path / "m.zarr"
    job = small_job(path)
    next(job), next(job)
    assert store_module.lock_path(path) == tmp_path / "m.zarr.lock"
    assert not lock_is_free(path)
    job.close()  # what a napari worker's quit() does between batches
    assert lock_is_free(path)
    assert 0 < MapStore(path).done_bitmap().sum() < TOTAL_TILES


def failing_model():
    """The driver's model (same fingerprint), failing on its third call (the first is a probe)."""
    model = PatternModel()
    forward, calls = model.forward, []

    def fail_on_the_second_batch(x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the model failed")
        return forward(x)

    model.forward = fail_on_the_second_batch
    return model


def test_the_lock_is_released_after_an_exception(tmp_path):
    path = tmp_path / "m.zarr"
    with pytest.raises(RuntimeError, match="the model failed"):
        run_to_end(small_job(path, failing_model()))
    assert lock_is_free(path)
    resumed = run_here(path)  # the next run takes the lock and finishes
    assert resumed.tiles_computed == TOTAL_TILES - CONFIG.batch_size
    assert lock_is_free(path)


def test_a_waiting_run_reports_it_and_can_be_cancelled(tmp_path, monkeypatch):
    path = tmp_path / "m.zarr"
    monkeypatch.setattr(store_module, "LOCK_POLL_S", 0.05)
    holder = FileLock(store_module.lock_path(path), thread_local=False)
    holder.acquire(timeout=0)
    try:
        job = small_job(path)
        first = next(job)
        assert "waiting for another run" in first.message and "'synthetic'" in first.message
        assert first.step == 0
        job.close()
    finally:
        holder.release()
    assert lock_is_free(path) and not path.exists()


def test_cli_refuses_with_the_slide_and_the_store(tmp_path, capsys):
    from napari_wsl_al.cli import main
    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model
    from napari_wsl_al.core.project import Project

    model_config = ModelConfig(arch="cam-avg", classes=("tumour", "normal"), width=0.125)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", build_model(model_config), model_config)
    slide = tmp_path / "slide-a.tif"
    tifffile.imwrite(slide, gradient_image(256, 256), tile=(128, 128), photometric="rgb")
    project = Project.create(tmp_path / "study.wslal", classes=["tumour", "normal"])
    store = project.maps_path("slide-a")
    args = ["infer", str(slide), "--model", str(checkpoint), "--project", str(project.path),
            "--level", "0", "--tile-size", "128", "--overlap", "32", "--device", "cpu",
            "--tissue-threshold", "0", "--lock-timeout", "0.3"]
    holder = FileLock(store_module.lock_path(store), thread_local=False)
    holder.acquire(timeout=0)
    try:
        assert main(args) == 1
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert "another run is writing" in err and "'slide-a'" in err and str(store) in err
    assert main(args) == 0
    assert "maps written to" in capsys.readouterr().out


def test_round_maps_take_the_lock_of_their_store(tmp_path, monkeypatch):
    from napari_wsl_al.core.al import rounds

    project, settings, store = gradient_slide_project(tmp_path, 256)
    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 0.3)
    holder = FileLock(store.with_name(store.name + ".lock"), thread_local=False)
    holder.acquire(timeout=0)
    try:
        with pytest.raises(MapStoreError, match="another run is writing") as refused:
            run_to_end(rounds.infer_round_maps(project, "synth", PatternModel(), 1, settings))
    finally:
        holder.release()
    assert str(store) in str(refused.value)
    assert run_to_end(rounds.infer_round_maps(project, "synth", PatternModel(), 1,
                                              settings)) == store
    assert lock_is_free(store) and "fg" in MapStore(store).handles()
