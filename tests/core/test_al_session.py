"""The Qt-free labelling session: keys, navigation, confirm/skip/undo on disk, geometry, counters."""

import numpy as np
import pytest

from napari_wsl_al.core.al import rounds
from napari_wsl_al.core.al.labels import LabelStore
from napari_wsl_al.core.al.session import (
    BACKGROUND_COLOUR,
    LabellingSession,
    class_colours,
    class_keys,
    prepare_project,
    suggest_for_slide,
)
from napari_wsl_al.core.al.superpixels import SuperpixelConfig, SuperpixelMap
from napari_wsl_al.core.al.train import RegionTrainConfig
from napari_wsl_al.core.errors import ActiveLearningError, ProjectError
from napari_wsl_al.core.progress import run_to_end
from napari_wsl_al.core.project import ClassSpec, Project

# Six rectangular regions on an 8 x 12 grid of working pixels:
#   rows 0-3: 1 1 1 2 2 2 3 3 3 3 3 3     rows 4-7: 4 4 4 4 5 5 5 5 6 6 6 6
REGIONS = np.zeros((8, 12), np.uint32)
REGIONS[:4, :3], REGIONS[:4, 3:6], REGIONS[:4, 6:] = 1, 2, 3
REGIONS[4:, :4], REGIONS[4:, 4:8], REGIONS[4:, 8:] = 4, 5, 6

# Working pixels are 2 x 2 level-0 pixels of 0.25 um: a working pixel is 0.5 um.
MPP, DOWNSAMPLE = 0.5, 2.0

# The suggested batch, most useful first.
SUGGESTED = [4, 2, 5]

BENIGN, MALIGNANT = "#e6194b", "#3cb44b"  # Project.create's first two colours


class FakeClock:
    """A monotonic clock moved by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def project(tmp_path):
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    project.add_slide(None, name="tiny")
    with LabelStore.for_project(project.path) as store:
        store.save_suggestions("tiny", 0, "oreal", SUGGESTED, [0.9, 0.8, 0.7])
    return project


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def session(project, clock):
    superpixels = SuperpixelMap.from_array(REGIONS, mpp=MPP, downsample=DOWNSAMPLE)
    with LabellingSession(project, "tiny", superpixels=superpixels, clock=clock) as opened:
        yield opened


def statuses(session):
    return {s.region_id: s.status for s in session.store.suggestions("tiny")}


# ---------------------------------------------------------------------- keys and colours
def test_default_keys_put_background_on_1_then_the_project_classes(project):
    # Project.create gives benign "2" and malignant "3", after background's "1".
    assert [spec.key for spec in project.classes] == ["2", "3"]
    assert class_keys(project) == ("1", "2", "3")
    assert class_colours(project) == (BACKGROUND_COLOUR, BENIGN, MALIGNANT)


def test_keys_given_by_the_project_are_used_when_they_are_usable(tmp_path):
    def keys_of(specs):
        return class_keys(Project(path=tmp_path, classes=tuple(specs)))

    given = [ClassSpec("benign", key="B"), ClassSpec("malignant", key="m")]
    assert keys_of(given) == ("1", "b", "m")
    assert keys_of([ClassSpec("benign", key="7"), ClassSpec("malignant")]) == ("1", "7", "3")
    assert keys_of([ClassSpec("background", "#000000", "0"), ClassSpec("tumour", key="9")]) == (
        "0",
        "9",
    )
    # A command key, a key of two characters or a key used twice: every class positional.
    assert keys_of([ClassSpec("benign", key="s"), ClassSpec("malignant", key="m")]) == (
        "1",
        "2",
        "3",
    )
    assert keys_of([ClassSpec("benign", key="U"), ClassSpec("malignant", key="m")]) == (
        "1",
        "2",
        "3",
    )
    assert keys_of([ClassSpec("benign", key="b1"), ClassSpec("malignant", key="m")]) == (
        "1",
        "2",
        "3",
    )
    assert keys_of([ClassSpec("benign", key="4"), ClassSpec("malignant", key="4")]) == (
        "1",
        "2",
        "3",
    )
    # Past nine classes there is no positional key.
    many = keys_of([ClassSpec(f"c{i}") for i in range(10)])
    assert many[:9] == tuple("123456789") and many[9:] == ("", "")
    colours = class_colours(Project(path=tmp_path, classes=(ClassSpec("background", "#000000"),)))
    assert colours == ("#000000",)


def test_class_for_key(session):
    assert session.class_for_key("1") == 0
    assert session.class_for_key("3") == 2
    assert session.class_for_key("4") is None
    assert session.class_for_key("") is None


def test_class_for_key_ignores_case(tmp_path):
    project = Project.create(
        tmp_path / "keyed",
        classes=[{"name": "benign", "key": "b"}, {"name": "malignant", "key": "m"}],
    )
    project.add_slide(None, name="tiny")
    with LabellingSession(project, "tiny") as session:
        assert session.keys == ("1", "b", "m")
        assert session.class_for_key("B") == 1


def test_unknown_slide_is_refused(project):
    with pytest.raises(ProjectError, match="no slide named 'other'.*known slides: tiny"):
        LabellingSession(project, "other")
    with pytest.raises(ValueError, match="mode"):
        LabellingSession(project, "tiny", mode="several")


# ---------------------------------------------------------------------- navigation
def test_starts_on_the_first_pending_suggestion(session):
    assert [s.region_id for s in session.suggestions] == SUGGESTED
    assert session.current_region == 4 and session.position == 0
    assert session.chosen == ()
    assert session.counters().pending == 3


def test_next_and_previous_stop_at_the_ends(session):
    assert session.previous() is None and session.current_region == 4
    assert session.next() == 2 and session.position == 1
    assert session.next() == 5 and session.position == 2
    assert session.next() is None and session.current_region == 5 and session.position == 2
    assert session.previous() == 2
    assert session.go_to(0) == 4
    with pytest.raises(IndexError):
        session.go_to(3)
    with pytest.raises(IndexError):
        session.go_to(-1)


def test_navigation_without_suggestions(tmp_path, clock):
    project = Project.create(tmp_path / "empty", classes=["benign"])
    project.add_slide(None, name="tiny")
    superpixels = SuperpixelMap.from_array(REGIONS, mpp=MPP, downsample=DOWNSAMPLE)
    with LabellingSession(project, "tiny", superpixels=superpixels, clock=clock) as session:
        assert session.current_region is None and session.position is None
        assert session.next() is None and session.previous() is None
        assert session.skip() is False
        assert session.camera_target((800, 800)) is None
        assert session.current_outline_um() is None


def test_a_timer_runs_from_when_a_region_becomes_current(session, clock):
    clock.now += 3.0
    assert session.elapsed() == 3.0
    session.next()
    assert session.elapsed() == 0.0


# ---------------------------------------------------------------------- answers
def test_dominant_confirm_stores_one_class_with_its_time_and_moves_on(session, clock):
    assert session.press_class(1) == ("benign",)
    assert session.press_class(2) == ("malignant",)  # a key sets the class in dominant mode
    clock.now += 2.5
    label = session.confirm()
    assert (label.slide, label.region_id) == ("tiny", 4)
    assert label.classes == ("malignant",) and label.dominant == "malignant"
    assert label.seconds == 2.5 and label.clicks == 1 and label.round == 0
    assert label.polygon is not None
    stored = session.store.get("tiny", 4)
    assert stored.classes == ("malignant",) and stored.id == label.id
    assert statuses(session) == {4: "labelled", 2: "pending", 5: "pending"}
    assert session.current_region == 2 and session.position == 1
    assert session.chosen == () and session.elapsed() == 0.0


def test_multi_confirm_toggles_and_stores_every_class(session, clock):
    session.set_mode("multi")
    session.press_class(2)
    session.press_class(0)
    session.press_class(1)
    assert session.press_class(1) == ("background", "malignant")  # toggled off again
    clock.now += 4.0
    label = session.confirm()
    assert label.classes == ("background", "malignant") and label.dominant is None
    assert label.clicks == 2 and label.seconds == 4.0
    session.set_mode("dominant")
    session.press_class(1)
    assert session.confirm().dominant == "benign"


def test_switching_to_dominant_clears_several_classes_only(session):
    session.set_mode("multi")
    session.press_class(1)
    session.set_mode("dominant")
    assert session.chosen == ("benign",)
    session.set_mode("multi")
    session.press_class(2)
    session.set_mode("dominant")
    assert session.chosen == ()
    with pytest.raises(ValueError, match="mode"):
        session.set_mode("all")
    assert session.mode == "dominant"


def test_confirm_needs_a_region_and_a_class(session):
    with pytest.raises(ActiveLearningError, match="no class chosen.*1 background, 2 benign"):
        session.confirm()
    with pytest.raises(IndexError):
        session.press_class(3)
    with pytest.raises(IndexError):
        session.press_class(-1)
    for _ in range(3):
        session.skip()
    assert session.current_region is None
    session.press_class(1)
    with pytest.raises(ActiveLearningError, match="no region to label"):
        session.confirm()
    assert session.store.current() == []


def test_skip_marks_the_suggestion_and_moves_on(session):
    assert session.skip() is True
    assert statuses(session) == {4: "skipped", 2: "pending", 5: "pending"}
    assert session.current_region == 2
    session.select_region(3)  # not a suggestion: nothing to mark, the walk goes on
    assert session.skip() is False
    assert statuses(session) == {4: "skipped", 2: "pending", 5: "pending"}
    assert session.current_region == 2


def test_answers_wrap_around_to_earlier_pending_suggestions(session):
    session.go_to(2)
    session.press_class(1)
    session.confirm()
    assert session.current_region == 4 and session.position == 0
    session.skip()
    assert session.current_region == 2
    session.press_class(1)
    session.confirm()
    # Every suggestion answered: nothing is current; Previous goes back to the last one.
    assert session.current_region is None and session.position is None
    assert session.counters().pending == 0
    assert session.previous() == 5
    assert session.chosen == ("benign",)  # a labelled region shows its label


def test_clicking_a_region_labels_it_and_the_walk_resumes(session, clock):
    session.next()
    clock.now += 1.0
    assert session.select_region(3) == 3
    assert session.position == 1 and session.elapsed() == 0.0
    session.press_class(1)
    clock.now += 1.5
    assert session.confirm().seconds == 1.5
    assert session.store.get("tiny", 3).classes == ("benign",)
    assert session.current_region == 2  # back to the suggestion it was on
    assert session.select_region(5) == 5 and session.position == 2


def test_select_checks_the_region(session):
    with pytest.raises(ActiveLearningError, match="no superpixel 7.*1 to 6"):
        session.select_region(7)
    with pytest.raises(ActiveLearningError, match="no superpixel 0"):
        session.select_region(0)
    assert session.select_region(6) == 6


def test_select_at_finds_the_region_under_a_point(session):
    # Level-0 pixel k is centred at k * 0.25 um; working pixel j covers level-0 2j and 2j + 1.
    # x = 1.7 um is level-0 column 6.8 -> 7 (rounded): working column 3 -> region 2.
    assert session.select_at(0.3, 1.7) == 2 and session.current_region == 2
    # x = 1.1 um is level-0 column 4.4 -> 4: working column 2 -> region 1.
    assert session.select_at(0.3, 1.1) == 1
    assert session.select_at(2.1, 5.0) == 6  # row 2.1 / 0.25 = 8.4 -> working row 4
    assert session.select_at(-5.0, 1.0) == 0 and session.current_region == 6
    assert session.select_at(0.0, 99.0) == 0


def test_undo_brings_the_region_back(session, clock):
    session.press_class(1)
    session.confirm()
    assert session.current_region == 2
    undone = session.undo()
    assert undone.region_id == 4 and undone.classes == ("benign",)
    assert session.store.get("tiny", 4) is None
    assert statuses(session)[4] == "pending"
    assert session.current_region == 4 and session.position == 0 and session.chosen == ()
    assert session.undo() is None
    assert session.current_region == 4


def test_undo_of_a_relabel_shows_the_earlier_label(session):
    session.press_class(1)
    session.confirm()
    session.previous()
    assert session.current_region == 4 and session.chosen == ("benign",)
    session.press_class(2)
    session.confirm()
    assert session.store.get("tiny", 4).classes == ("malignant",)
    session.undo()
    assert session.store.get("tiny", 4).classes == ("benign",)
    assert session.current_region == 4 and session.chosen == ("benign",)


def test_undo_of_another_slide_leaves_the_current_region(session, project):
    project.add_slide(None, name="other")
    superpixels = SuperpixelMap.from_array(REGIONS, mpp=MPP, downsample=DOWNSAMPLE)
    rounds.label_region(session.store, superpixels, "other", 1, ["benign"])
    session.next()
    assert session.undo().slide == "other"
    assert session.current_region == 2


def test_labels_and_statuses_survive_a_new_session(session, project):
    session.press_class(1)
    session.confirm()
    session.skip()
    session.close()
    superpixels = SuperpixelMap.from_array(REGIONS, mpp=MPP, downsample=DOWNSAMPLE)
    with LabellingSession.open(project.path, "tiny", superpixels=superpixels) as reopened:
        assert statuses(reopened) == {4: "labelled", 2: "skipped", 5: "pending"}
        assert reopened.current_region == 5
        assert reopened.store.get("tiny", 4).classes == ("benign",)


def test_labels_belong_to_the_current_model_round(session):
    session.store.start_round(1, {})
    session.store.finish_round(1, {}, None)
    assert session.round_number() == 1
    session.press_class(1)
    assert session.confirm().round == 1


def test_refresh_keeps_the_latest_batch_and_the_current_region(session):
    session.press_class(1)
    session.confirm()
    session.store.save_suggestions("tiny", 1, "entropy", [6, 2], [0.5, 0.4])
    session.refresh()
    # Region 4 (labelled) belongs to batch 0: only batch 1 is listed; region 2 stays current.
    assert [(s.region_id, s.round) for s in session.suggestions] == [(6, 1), (2, 1)]
    assert session.current_region == 2 and session.position == 1
    assert session.first_pending() == 6


def test_refresh_clamps_the_place_when_the_list_shrinks(session):
    session.go_to(2)
    session.select_region(1)
    session.store.save_suggestions("tiny", 1, "entropy", [6], [0.5])
    session.refresh()
    assert session.position == 0 and session.current_region == 1
    session.store.save_suggestions("tiny", 2, "entropy", [], [])
    session.refresh()
    assert session.suggestions == [] and session.position is None


# ---------------------------------------------------------------------- geometry
def test_camera_target_centres_the_box_at_a_quarter_of_the_view(session):
    session.select_region(2)  # working rows 0..4, columns 3..6 (exclusive ends)
    target = session.camera_target((40, 60))
    # Working pixel j spans level-0 2j .. 2j + 1, edges at (2j - 0.5) * 0.25 um:
    # rows 0..4 -> -0.125 .. 1.875 um (centre 0.875); cols 3..6 -> 1.375 .. 2.875 (2.125).
    assert target.center == pytest.approx((0.875, 2.125))
    # Box 2.0 um x 1.5 um; a quarter of 40 px for 2.0 um is 5 px/um, of 60 px for 1.5 um
    # is 10 px/um: the smaller wins.
    assert target.zoom == pytest.approx(5.0)
    assert session.camera_target((60, 40)).zoom == pytest.approx(0.25 * 40 / 1.5)
    # A big view would magnify 100x: capped at 2 screen pixels per 0.25 um slide pixel.
    assert session.camera_target((800, 1000)).zoom == pytest.approx(8.0)
    outline = session.current_outline_um()
    assert outline[0].tolist() == outline[-1].tolist()  # closed
    low, high = outline.min(axis=0), outline.max(axis=0)
    assert ((low + high) / 2).tolist() == pytest.approx(list(target.center))
    assert (high - low).tolist() == pytest.approx([2.0, 1.5])


def test_pending_outlines_follow_the_answers(session):
    assert [region for region, _ in session.pending_outlines()] == [4, 2, 5]
    session.skip()
    outlines = dict(session.pending_outlines())
    assert sorted(outlines) == [2, 5]
    # Region 5 is working rows 4..8, columns 4..8: -0.125 + 2 = 1.875 .. 3.875 um.
    assert outlines[5].min(axis=0).tolist() == pytest.approx([1.875, 1.875])
    assert outlines[5].max(axis=0).tolist() == pytest.approx([3.875, 3.875])
    assert session.outline_um(5) is outlines[5]  # cached


def test_labelled_polygons_are_filled_in_class_colours(session):
    session.press_class(2)
    session.confirm()  # region 4: malignant
    session.set_mode("multi")
    session.press_class(0)
    session.press_class(1)
    session.confirm()  # region 2: background + benign -> benign's colour
    session.select_region(1)
    session.press_class(0)
    session.confirm()  # region 1: background only
    session.store.add_label("tiny", 6, ["other"], dominant="other")  # a class unknown here
    session.store.add_label("tiny", 3, ["pseudo"], source="pseudo")  # not an oracle label
    shapes = session.labelled_polygons()
    assert [shape.colour for shape in shapes] == [
        MALIGNANT,
        BENIGN,
        BACKGROUND_COLOUR,
        BACKGROUND_COLOUR,
    ]
    # Stored level-0 outlines come back in microns, as the superpixels draw them.
    np.testing.assert_allclose(shapes[0].polygon_um, session.outline_um(4))
    np.testing.assert_allclose(shapes[2].polygon_um, session.outline_um(1))
    # A label stored without an outline is drawn with its superpixel's.
    assert shapes[3].polygon_um is session.outline_um(6)
    stored = [lab.id for lab in session.store.current("tiny", source="oracle")]
    assert [shape.label_id for shape in shapes] == stored
    again = session.labelled_polygons()  # cached: nothing is simplified twice
    assert all(a.polygon_um is b.polygon_um for a, b in zip(shapes, again))


def test_counters_add_up_every_answer(session, clock):
    session.press_class(1)
    clock.now += 2.5
    session.confirm()
    session.set_mode("multi")
    session.press_class(1)
    session.press_class(2)
    clock.now += 4.0
    session.confirm()
    counters = session.counters()
    assert (counters.labels, counters.clicks, counters.seconds, counters.pending) == (2, 3, 6.5, 1)
    session.undo()  # the time was spent: clicks and seconds stay
    counters = session.counters()
    assert (counters.labels, counters.clicks, counters.seconds, counters.pending) == (1, 3, 6.5, 2)


def test_counters_count_the_labels_of_every_slide_but_not_pseudo_labels(session, project):
    project.add_slide(None, name="other")
    superpixels = SuperpixelMap.from_array(REGIONS, mpp=MPP, downsample=DOWNSAMPLE)
    rounds.label_region(session.store, superpixels, "other", 1, ["benign"], seconds=1.0)
    session.store.add_label("tiny", 6, ["benign"], source="pseudo")
    counters = session.counters()
    assert (counters.labels, counters.clicks, counters.seconds) == (1, 1, 1.0)


def test_without_superpixels_nothing_can_be_selected(project):
    with LabellingSession(project, "tiny") as session:
        assert session.superpixels is None
        assert session.select_at(1.0, 1.0) == 0
        assert session.pending_outlines() == []
        assert session.labelled_polygons() == []
        with pytest.raises(ActiveLearningError, match="no superpixels yet"):
            session.select_region(1)


def test_a_given_store_is_left_open(project):
    with LabelStore.for_project(project.path) as store:
        LabellingSession(project, "tiny", store=store).close()
        assert len(store.suggestions("tiny")) == 3


# ---------------------------------------------------------------------- a real slide
SETTINGS = rounds.ALSettings(
    n_suggestions=4,
    superpixels=SuperpixelConfig(region_px=32),
    train=RegionTrainConfig(steps=1, batch_size=1, crop_size=32),
    tile_px=256,
    device="cpu",
)


@pytest.fixture
def slide(small_synthetic_slide):
    return small_synthetic_slide


def test_prepare_project_needs_a_file_or_a_registered_slide(project):
    assert prepare_project(project.path, None, "tiny")[1] == "tiny"
    with pytest.raises(ProjectError, match="no slide named 'nope'"):
        prepare_project(project.path, None, "nope")


def test_suggest_then_label_a_real_slide(tmp_path, slide):
    # A new project takes the default model's classes and registers the slide.
    project, name = prepare_project(tmp_path / "fresh", slide, "synth")
    assert project.path.name == "fresh.wslal" and name == "synth"
    assert project.class_names == ("benign", "malignant")
    SETTINGS.save_to(project)
    with LabellingSession(project, "synth") as session:
        assert session.superpixels is None and session.current_region is None
        messages = []
        project, name, selection = run_to_end(
            suggest_for_slide(project.path, None, "synth"), lambda p: messages.append(p.message)
        )
        assert messages[0] == "opening the project" and "scoring" in messages[-1]
        assert len(selection.ids) == 4
        session.refresh()
        assert session.first_pending() == int(selection.ids[0])
        assert [s.region_id for s in session.pending] == selection.ids.tolist()
        superpixels = session.superpixels
        # a new project works at the active-learning resolution, whatever the model's
        assert superpixels.mpp == pytest.approx(rounds.WORKING_MPP) == 1.24
        region = session.current_region
        # The centre of one of the region's working pixels, in microns, selects the region.
        step, unit = superpixels.downsample * superpixels.level0_mpp, superpixels.level0_mpp
        rows, cols = np.nonzero(superpixels.read(0, 0, *superpixels.shape) == region)
        pick = len(rows) // 2
        assert (
            session.select_at(
                rows[pick] * step + (step - unit) / 2, cols[pick] * step + (step - unit) / 2
            )
            == region
        )
        target = session.camera_target((1000, 1000))
        outline = session.current_outline_um()
        assert np.all(outline.min(axis=0) <= target.center)
        assert np.all(outline.max(axis=0) >= target.center)
        session.press_class(1)
        label = session.confirm()
        assert label.region_id == region
        assert session.current_region == int(selection.ids[1])
        np.testing.assert_allclose(session.labelled_polygons()[0].polygon_um, outline)
        # Simplified: every vertex of the pixel outline lies within half a working pixel of it.
        full = superpixels.outline_um([region])[region]
        assert 4 <= len(outline) < len(full) / 2
        start, end = outline[:-1], outline[1:]
        along = np.clip(
            np.einsum("psk,sk->ps", full[:, None] - start[None], end - start)
            / np.maximum(np.sum((end - start) ** 2, axis=1), 1e-12),
            0.0,
            1.0,
        )
        nearest = start[None] + along[..., None] * (end - start)[None]
        gaps = np.min(np.linalg.norm(full[:, None] - nearest, axis=2), axis=1)
        assert gaps.max() <= 0.5 * superpixels.scale[0] + 1e-9


def test_warm_traces_pending_outlines_and_label_polygons_ahead(session):
    session.press_class(1)
    session.confirm()
    labelled = session.store.current("tiny", source="oracle")
    session._outlines.clear()
    session._label_polygons.clear()
    session.warm()
    assert set(session._outlines) == {s.region_id for s in session.pending}
    assert set(session._label_polygons) == {label.id for label in labelled}
    # drawn later from the cache: the same arrays, not traced again
    region, polygon = session.pending_outlines()[0]
    assert polygon is session._outlines[region]
