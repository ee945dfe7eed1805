"""Active learning on a project's slide: superpixels, suggestions, rounds, crash safety, the CLI."""

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest

from napari_wsl_al.cli import main
from napari_wsl_al.core.al import rounds
from napari_wsl_al.core.al.labels import LabelStore
from napari_wsl_al.core.al.superpixels import SuperpixelConfig, SuperpixelMap
from napari_wsl_al.core.al.train import RegionItem, RegionTrainConfig
from napari_wsl_al.core.data.synthetic import write_synthetic_slide
from napari_wsl_al.core.errors import ActiveLearningError, ProjectError
from napari_wsl_al.core.progress import run_to_end
from napari_wsl_al.core.project import Project

SETTINGS = rounds.ALSettings(
    n_suggestions=5,
    no_adjacent=True,
    superpixels=SuperpixelConfig(region_px=32),
    train=RegionTrainConfig(steps=3, batch_size=2, crop_size=64),
    tile_px=256,
    device="cpu",
)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(
        tmp_path_factory.mktemp("slide") / "synth.tif",
        1024,
        768,
        mpp=0.5,
        seed=4,
        tissue_fraction=0.5,
        smallest_level=512,
    )


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory, slide):
    project = Project.create(
        tmp_path_factory.mktemp("base") / "study", classes=["benign", "malignant"]
    )
    project.add_slide(slide)
    SETTINGS.save_to(project)
    run_to_end(rounds.ensure_superpixels(project, "synth", SETTINGS))
    return project


@pytest.fixture
def project(tmp_path, prepared_project):
    """A fresh copy of a project whose slide already has its superpixels."""
    shutil.copytree(prepared_project.path, tmp_path / "study.wslal")
    return Project.open(tmp_path / "study.wslal")


def label_some(project, ids, classes=("benign",)):
    superpixels = SuperpixelMap.open(rounds.superpixels_path(project, "synth"))
    with LabelStore.for_project(project.path) as store:
        for region in ids:
            label = rounds.label_region(store, superpixels, "synth", region, classes, seconds=2.0)
            assert label.polygon is not None and len(label.polygon) >= 4


def test_settings_round_trip_and_damage(project):
    assert rounds.ALSettings.of_project(Project.open(project.path)) == SETTINGS
    project.update_settings(active_learning={"strategy": "cleverest"})
    with pytest.raises(ProjectError, match="project.json"):
        rounds.ALSettings.of_project(project)
    with pytest.raises(ValueError):
        rounds.ALSettings(init="sometimes")
    # a training setting out of range names the file too, and the file is left as it is
    project.update_settings(active_learning={"train": {"colour_jitter": 5}})
    before = (project.path / "project.json").read_text()
    with pytest.raises(ProjectError, match=r"project\.json: .*colour jitter must be in \[0, 1\], not 5"):
        rounds.ALSettings.of_project(project)
    assert (project.path / "project.json").read_text() == before


def test_region_classes_put_background_first(project):
    assert rounds.region_classes(project) == ("background", "benign", "malignant")


def test_suggest_stores_superpixels_and_suggestions(project):
    selection = run_to_end(rounds.suggest(project, "synth", SETTINGS))
    assert len(selection.ids) == 5 and len(set(selection.ids.tolist())) == 5
    superpixels = SuperpixelMap.open(rounds.superpixels_path(project, "synth"))
    assert superpixels.mpp == pytest.approx(0.62)  # the model's resolution
    assert all(0 < i <= superpixels.n_regions for i in selection.ids)
    adjacency = {tuple(p) for p in superpixels.adjacency().tolist()}
    picks = sorted(selection.ids.tolist())
    assert not any((a, b) in adjacency for a in picks for b in picks if a < b)
    with LabelStore.for_project(project.path) as store:
        stored = store.suggestions("synth")
    assert [s.region_id for s in stored] == selection.ids.tolist()
    assert all(s.status == "pending" for s in stored)
    # no round has trained the segmentation head: random tissue regions, the same every time
    assert selection.strategy == "random"
    again = run_to_end(rounds.suggest(project, "synth", SETTINGS))
    np.testing.assert_array_equal(again.ids, selection.ids)


def test_label_region_checks_the_id(project):
    superpixels = SuperpixelMap.open(rounds.superpixels_path(project, "synth"))
    with LabelStore.for_project(project.path) as store, pytest.raises(ActiveLearningError):
        rounds.label_region(store, superpixels, "synth", superpixels.n_regions + 1, ["benign"])


def test_unknown_slide_is_named(project):
    with pytest.raises(ProjectError, match="no slide named 'other'"):
        run_to_end(rounds.suggest(project, "other", SETTINGS))


def test_round_needs_labels(project):
    with pytest.raises(ActiveLearningError, match="no labels"):
        run_to_end(rounds.run_round(project, SETTINGS))


def test_round_trains_checkpoints_and_suggests_unlabelled_regions(project):
    first = run_to_end(rounds.suggest(project, "synth", SETTINGS))
    labelled = first.ids[:3]
    label_some(project, labelled[:2], ("benign",))
    label_some(project, labelled[2:], ("background", "malignant"))
    result = run_to_end(rounds.run_round(project, SETTINGS))
    assert result["round"] == 1
    assert result["metrics"]["labels"] == 3
    assert result["metrics"]["labels_per_class"] == {"background": 1, "benign": 2, "malignant": 1}
    assert result["metrics"]["clicks"] == 4
    checkpoint = rounds.checkpoint_path(project, 1)
    assert checkpoint.exists() and result["checkpoint"] == str(checkpoint)
    with LabelStore.for_project(project.path) as store:
        record = store.rounds()[-1]
        assert record.status == "done" and record.checkpoint == str(checkpoint)
        fresh = [s.region_id for s in store.suggestions("synth") if s.round == 1]
        strategies = {s.strategy for s in store.suggestions("synth") if s.round == 1}
    assert strategies == {SETTINGS.strategy} != {"random"}  # the trained head now ranks them
    assert len(fresh) == 5 and not set(fresh) & set(labelled.tolist())
    model, number = rounds.current_model(project, SETTINGS)
    assert number == 1 and bool(model.segmentation_trained)
    # each round keeps its own maps of the labelled slide
    from napari_wsl_al.core.infer import MapStore

    first_maps = rounds.round_maps_path(project, "synth", 1)
    assert first_maps == project.path / "maps" / "synth.round_0001.zarr"
    handles = MapStore(first_maps).handles()
    assert {"fg", "seg"} <= set(handles) and "cam" not in handles
    fg_round_1 = np.asarray(handles["fg"].levels[0][...])
    second = run_to_end(rounds.run_round(project, SETTINGS, suggest_after=False))
    assert second["round"] == 2
    fg_round_2 = np.asarray(MapStore(rounds.round_maps_path(project, "synth", 2))
                            .handles()["fg"].levels[0][...])
    again = np.asarray(MapStore(first_maps).handles()["fg"].levels[0][...])
    assert np.array_equal(again, fg_round_1)  # round 2 left round 1's maps alone
    assert not np.array_equal(fg_round_2, fg_round_1)
    no_maps = replace(SETTINGS, round_maps=False)
    assert run_to_end(rounds.run_round(project, no_maps, suggest_after=False))["round"] == 3
    assert not rounds.round_maps_path(project, "synth", 3).exists()


def test_killed_round_leaves_nothing_and_runs_again(project, monkeypatch):
    first = run_to_end(rounds.suggest(project, "synth", SETTINGS))
    label_some(project, first.ids[:2])

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")
        yield  # pragma: no cover

    monkeypatch.setattr(rounds, "train_regions", crash)
    with pytest.raises(RuntimeError):
        run_to_end(rounds.run_round(project, SETTINGS))
    assert not rounds.checkpoint_path(project, 1).exists()
    with LabelStore.for_project(project.path) as store:
        assert store.rounds()[-1].status == "failed"
        assert store.last_done_round() is None
    monkeypatch.undo()
    assert run_to_end(rounds.run_round(project, SETTINGS))["round"] == 1


def test_resolve_polygon_finds_covered_regions(project):
    run_to_end(rounds.suggest(project, "synth", SETTINGS))
    superpixels = SuperpixelMap.open(rounds.superpixels_path(project, "synth"))
    region = int(np.flatnonzero(np.asarray(superpixels.pixel_counts) > 200)[0])
    outline = superpixels.outline_level0([region])[region]
    found = rounds.resolve_polygon(project, "synth", outline)
    assert region in [r for r, _ in found]
    with pytest.raises(ActiveLearningError):
        rounds.resolve_polygon(project, None, outline)


def test_round_model_gives_seg_map(project):
    from napari_wsl_al.core.infer import InferenceConfig, MapStore, infer_slide
    from napari_wsl_al.core.io import open_slide

    first = run_to_end(rounds.suggest(project, "synth", SETTINGS))
    label_some(project, first.ids[:2])
    run_to_end(rounds.run_round(project, SETTINGS, suggest_after=False))
    model, _ = rounds.current_model(project, SETTINGS)
    with open_slide(project.slides[0]["path"]) as reader:
        result = run_to_end(
            infer_slide(
                reader,
                model,
                InferenceConfig(tile_size=256, overlap=64, device="cpu", maps=("fg", "seg")),
                MapStore(project.maps_path("synth")),
            )
        )
    assert "seg" in result.maps and "fg" in result.maps
    seg = np.asarray(result.maps["seg"].levels[0][...])
    assert seg.shape[0] == 3
    inside = seg.sum(axis=0) > 0
    np.testing.assert_allclose(seg.sum(axis=0)[inside], 1.0, atol=1e-3)


def test_cli_suggest_round_export_import(project, tmp_path, capsys):
    assert main(["suggest", str(project.path), "--n", "4", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "synth: 4 suggestions (random, no segmentation trained yet" in printed
    rows = printed.split("rank  region  score\n")[1].splitlines()[:4]
    assert all(row.split()[-1] == "random" for row in rows), rows  # no meaningless score
    with LabelStore.for_project(project.path) as store:
        picks = [s.region_id for s in store.suggestions("synth")][:2]
    label_some(project, picks, ("malignant",))
    assert main(["round", str(project.path), "--steps", "2", "--no-suggest"]) == 0
    assert "round 1: 2 labelled regions" in capsys.readouterr().out
    geojson = tmp_path / "labels.geojson"
    assert main(["labels", "export", str(project.path), str(geojson)]) == 0
    features = json.loads(geojson.read_text())["features"]
    assert len(features) == 2
    assert features[0]["properties"]["classification"]["name"] == "malignant"
    other = Project.create(tmp_path / "copy", classes=["benign", "malignant"])
    other.add_slide(project.slides[0]["path"])
    rounds_settings = replace(SETTINGS)
    rounds_settings.save_to(other)
    run_to_end(rounds.ensure_superpixels(other, "synth", rounds_settings))
    assert main(["labels", "import", str(other.path), str(geojson)]) == 0
    with LabelStore.for_project(other.path) as store:
        assert sorted(store.labelled_ids("synth").tolist()) == sorted(picks)
    csv_file = tmp_path / "labels.csv"
    assert main(["labels", "export", str(project.path), str(csv_file)]) == 0
    assert main(["labels", "export", str(project.path), str(tmp_path / "labels.txt")]) == 1


def test_round_killed_with_sigkill_runs_again_cleanly(project):
    import os
    import signal
    import subprocess
    import sys
    import time

    first = run_to_end(rounds.suggest(project, "synth", SETTINGS))
    label_some(project, first.ids[:2])
    slow = replace(SETTINGS, train=replace(SETTINGS.train, steps=5000))
    slow.save_to(project)
    script = (
        "from napari_wsl_al.core.al.rounds import run_round\n"
        "from napari_wsl_al.core.progress import run_to_end\n"
        "from napari_wsl_al.core.project import Project\n"
        f"run_to_end(run_round(Project.open({str(project.path)!r})))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        running = False
        while time.monotonic() < deadline and not running:
            time.sleep(0.2)
            with LabelStore.for_project(project.path) as store:
                running = any(r.status == "running" for r in store.rounds())
        assert running, "the round never started"
        time.sleep(1.0)  # into training
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not rounds.checkpoint_path(project, 1).exists()
    SETTINGS.save_to(project)
    result = run_to_end(rounds.run_round(project, SETTINGS, suggest_after=False))
    assert result["round"] == 1 and rounds.checkpoint_path(project, 1).exists()
    with LabelStore.for_project(project.path) as store:
        statuses = [(r.number, r.status) for r in store.rounds()]
    assert statuses[-1] == (1, "done")


@pytest.fixture
def patch_project(tmp_path):
    """A project whose slide is a folder of six synthetic patches, with its superpixels."""
    from napari_wsl_al.core.data.synthetic import write_synthetic_patch_set

    folder = write_synthetic_patch_set(tmp_path / "patches", n_per_class=3, shape=(96, 96), seed=2)
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    name = project.add_slide(folder / "images")
    settings = replace(SETTINGS, label_prop=True, label_prop_k=40, label_prop_lambda=0.2,
                       round_maps=False, no_adjacent=False,
                       superpixels=SuperpixelConfig(region_px=16))
    settings.save_to(project)
    run_to_end(rounds.ensure_superpixels(project, name, settings))
    return project, name, settings


def test_label_prop_on_a_patch_folder_stores_pseudo_labels_and_protects_them(patch_project):
    from napari_wsl_al.core.al.train import predict_image_classes
    from napari_wsl_al.core.io import open_slide

    project, name, settings = patch_project
    superpixels = SuperpixelMap.open(rounds.superpixels_path(project, name))
    with open_slide(project.slides[0]["path"]) as reader:
        windows = rounds.patch_windows(reader, superpixels)
        assert len(windows) == 6
        patch_ids = [np.unique(np.asarray(superpixels.read(*w))) for w in windows]
        patch_ids = [ids[ids > 0] for ids in patch_ids]
        images = [rounds.read_working(reader, superpixels, *w) for w in windows]
    # every region lies in one patch
    assert sum(ids.size for ids in patch_ids) == superpixels.n_regions
    with LabelStore.for_project(project.path) as store:
        for region in patch_ids[0][:2]:
            rounds.label_region(store, superpixels, name, int(region), ["benign"])
    # round 1: the segmentation head is not trained yet, so no pseudo labels (P_0 is empty)
    first = run_to_end(rounds.run_round(project, settings, suggest_after=False))
    assert first["metrics"]["pseudo_patches"] == {} and first["metrics"]["pseudo_regions"] == 0
    # round 2: P holds the other patches of patch 0's predicted class (k = 40 takes them all)
    model, _ = rounds.current_model(project, settings)
    predicted = predict_image_classes(
        model, [RegionItem(str(k), image, ids) for k, (image, ids) in
                enumerate(zip(images, [np.zeros(i.shape[:2], np.int64) for i in images]))])
    expected = [k for k in range(1, 6) if predicted[k] == predicted[0]]
    assert 0 < len(expected) < 5  # the shipped model tells some patches from patch 0
    second = run_to_end(rounds.run_round(project, settings))
    assert second["metrics"]["pseudo_patches"] == {name: len(expected)}
    with LabelStore.for_project(project.path) as store:
        pseudo = store.current(name, source="pseudo")
        suggested = [s.region_id for s in store.suggestions(name) if s.round == 2]
        oracle = store.labelled_ids(name)
    expected_regions = sorted(np.concatenate([patch_ids[k] for k in expected] or [[]]).tolist())
    assert sorted(label.region_id for label in pseudo) == expected_regions
    assert second["metrics"]["pseudo_regions"] == len(expected_regions)
    assert all(label.round == 2 and label.weight == pytest.approx(0.2) for label in pseudo)
    assert all(set(label.classes) <= {"background", "benign", "malignant"} for label in pseudo)
    # the pseudo labels are not oracle labels, and their regions are not suggested
    assert sorted(oracle.tolist()) == sorted(patch_ids[0][:2].tolist())
    assert len(suggested) == 5 and not set(suggested) & set(expected_regions)
    # a round that starts from the weakly-supervised model still pseudo-labels with the newest
    # one; P keeps its patches (none of them was labelled since)
    third = run_to_end(rounds.run_round(project, replace(settings, init="wsl"),
                                        suggest_after=False))
    assert third["metrics"]["pseudo_patches"][name] >= len(expected)
    with LabelStore.for_project(project.path) as store:
        live = store.current(name, source="pseudo")
    assert {label.round for label in live} == {3}
    assert set(expected_regions) <= {label.region_id for label in live}
    # without label_prop, the same project suggests them again like any other region
    plain = replace(settings, label_prop=False)
    assert rounds.ALSettings.from_json(plain.to_json()) == plain
    everything = run_to_end(rounds.suggest(project, name, plain, n=superpixels.n_regions))
    assert set(expected_regions) & set(everything.ids.tolist())
    assert "protected" not in everything.params
    with pytest.raises(ValueError, match="label_prop_k"):
        replace(settings, label_prop_k=0)


def test_working_resolution_setting_is_checked_and_kept():
    assert rounds.ALSettings().mpp == rounds.WORKING_MPP == 1.24
    assert rounds.ALSettings.from_json({}).mpp == 1.24  # settings saved before the option
    assert rounds.ALSettings.from_json(rounds.ALSettings(mpp=None).to_json()).mpp is None
    assert rounds.ALSettings.from_json(rounds.ALSettings(mpp=0.5).to_json()).mpp == 0.5
    for bad in (0, -1.24, "1.24"):
        with pytest.raises(ValueError, match="mpp"):
            rounds.ALSettings(mpp=bad)


def test_a_new_project_works_at_the_setting_and_one_with_superpixels_at_theirs(tmp_path, slide,
                                                                              project):
    from napari_wsl_al.core.models.checkpoint import load_default_model

    # superpixels stored at 0.62 µm/px: the project keeps working at their resolution
    assert rounds.stored_working_mpp(project) == pytest.approx(0.62)
    model, number = rounds.current_model(project, SETTINGS)
    assert number is None and model.mpp == pytest.approx(0.62)
    fresh = Project.create(tmp_path / "fresh", classes=["benign", "malignant"])
    fresh.add_slide(slide)
    assert rounds.stored_working_mpp(fresh) is None
    model, _ = rounds.current_model(fresh, SETTINGS)
    assert model.mpp == pytest.approx(SETTINGS.mpp) and SETTINGS.mpp == 1.24
    model, _ = rounds.current_model(fresh, rounds.ALSettings(mpp=0.9, device="cpu"))
    assert model.mpp == pytest.approx(0.9)
    model, _ = rounds.current_model(fresh, rounds.ALSettings(mpp=None, device="cpu"))
    assert model.mpp == pytest.approx(load_default_model("cpu").mpp)
    # the superpixels of its first slide are computed at the model's resolution
    superpixels = run_to_end(rounds.ensure_superpixels(fresh, "synth", SETTINGS, model_mpp=0.9))
    assert superpixels.mpp == pytest.approx(0.9) and rounds.stored_working_mpp(fresh) == 0.9


def test_a_checkpoint_as_the_projects_model_is_converted_at_the_working_resolution(tmp_path,
                                                                                   slide):
    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    config = ModelConfig(arch="wildcat", classes=("benign", "malignant"), width=0.0625, mpp=2.48)
    path = save_checkpoint(tmp_path / "wsl.pt", build_model(config), config)
    fresh = Project.create(tmp_path / "fresh", classes=["benign", "malignant"])
    fresh.add_slide(slide)
    settings = rounds.ALSettings(model=str(path), device="cpu")
    model, number = rounds.current_model(fresh, settings)
    assert number is None and model.mpp == pytest.approx(1.24)
    assert model.seg_classes == ("background", "benign", "malignant")
    assert next(model.parameters()).device.type == "cpu"
    other = Project.create(tmp_path / "other", classes=["normal", "tumour"])
    with pytest.raises(ProjectError, match=re.escape(f"model {path} predicts the classes")):
        rounds.current_model(other, settings)
    with pytest.raises(ProjectError, match="the default model predicts the classes"):
        rounds.current_model(other, rounds.ALSettings(device="cpu"))


def test_settings_are_checked_at_their_bounds():
    rounds.ALSettings(n_suggestions=1, label_prop_k=1, label_prop_lambda=0.0)
    for changes, message in (({"strategy": "cleverest"}, "unknown strategy 'cleverest'"),
                             ({"init": "sometimes"}, "init must be 'previous' or 'wsl'"),
                             ({"n_suggestions": 0}, "n_suggestions must be at least 1"),
                             ({"label_prop_k": 0}, "label_prop_k must be at least 1"),
                             ({"label_prop_lambda": -0.1}, "label_prop_lambda must be >= 0")):
        with pytest.raises(ValueError, match=message):
            rounds.ALSettings(**changes)
