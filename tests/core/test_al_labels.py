"""The label store: labels, undo/redo, rounds, suggestions, exports, bad files, concurrent and killed writers."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from napari_wsl_al.core.al import labels as labels_module
from napari_wsl_al.core.al.labels import (
    ABORTED_REASON,
    CSV_COLUMNS,
    LABELS_FILE,
    SCHEMA_VERSION,
    LabelStore,
    RegionLabel,
)
from napari_wsl_al.core.errors import LabelStoreError
from napari_wsl_al.core.project import ClassSpec

CLASSES = (ClassSpec("tumour", "#ff0000", "1"), ClassSpec("stroma", "#00ff80", "2"))


@pytest.fixture
def store(tmp_path):
    with LabelStore(tmp_path / LABELS_FILE) as opened:
        yield opened


def live(store, **kwargs):
    """``(slide, region, classes)`` of the live labels."""
    return [(lab.slide, lab.region_id, lab.classes) for lab in store.current(**kwargs)]


def run_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------- opening


def test_new_store_is_wal_full_sync_and_versioned(tmp_path):
    with LabelStore.for_project(tmp_path) as store:
        assert store.path == tmp_path / "labels.sqlite"
        db = store._connection
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with LabelStore.for_project(tmp_path, busy_timeout_s=0.25) as store:
        assert store._connection.execute("PRAGMA busy_timeout").fetchone()[0] == 250
    # reopening an existing store keeps its labels
    with LabelStore.for_project(tmp_path) as store:
        store.add_label("s", 1, ["tumour"])
    with LabelStore.for_project(tmp_path) as store:
        assert live(store) == [("s", 1, ("tumour",))]


def test_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / LABELS_FILE
    path.write_bytes(b"")
    with LabelStore(path) as store:
        assert store.current() == []


def test_sqlite_file_without_tables_becomes_a_store(tmp_path):
    path = tmp_path / LABELS_FILE
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE scratch (a)")
    raw.execute("DROP TABLE scratch")
    raw.close()
    assert path.stat().st_size > 0
    with LabelStore(path) as store:
        assert store.add_label("s", 1, ["tumour"]).id == 1


def test_connection_failure_is_a_label_store_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(labels_module.sqlite3, "connect", refuse)
    with pytest.raises(LabelStoreError, match="cannot be used .*unable to open"):
        LabelStore(tmp_path / LABELS_FILE)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LabelStoreError, match="folder of the label database does not exist") as info:
        LabelStore.for_project(tmp_path / "no_such_project")
    assert info.value.path == tmp_path / "no_such_project"


def _assert_refused(path, match):
    before = path.read_bytes()
    with pytest.raises(LabelStoreError, match=match) as info:
        LabelStore(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_newer_schema_is_refused_and_untouched(tmp_path):
    path = tmp_path / LABELS_FILE
    with LabelStore(path) as store:
        store.add_label("s", 1, ["tumour"])
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    _assert_refused(path, "newer napari-wsl-al.*upgrade")


def test_garbage_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / LABELS_FILE
    path.write_bytes(bytes(range(256)) * 40)
    _assert_refused(path, "damaged or not a database")


def test_truncated_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / LABELS_FILE
    with LabelStore(path) as store:
        for region in range(300):
            store.add_label("slide", region, ["tumour"], polygon=[[0, 0], [50, 0], [50, 50]] * 5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_refused(path, "damaged")


def test_foreign_sqlite_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / LABELS_FILE
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE photos (name TEXT)")
    raw.commit()
    raw.close()
    _assert_refused(path, "not a napari-wsl-al label database")


def test_folder_in_place_of_the_file_is_refused(tmp_path):
    (tmp_path / LABELS_FILE).mkdir()
    with pytest.raises(LabelStoreError, match="cannot open the label database"):
        LabelStore(tmp_path / LABELS_FILE)


def test_damaged_quick_check_is_refused(tmp_path, monkeypatch):
    path = tmp_path / LABELS_FILE
    LabelStore(path).close()

    class Reader:
        def __init__(self, answers):
            self.answers = answers

        def execute(self, sql):
            return self

        def fetchone(self):
            return (self.answers.pop(0),)

        def close(self):
            pass

    monkeypatch.setattr(labels_module.sqlite3, "connect",
                        lambda *a, **k: Reader(["*** page 3 is never used", 1, 3]))
    with pytest.raises(LabelStoreError, match=r"damaged \(\*\*\* page 3 is never used\)"):
        LabelStore(path)


def test_closed_store_refuses_calls_and_closes_twice(tmp_path):
    store = LabelStore(tmp_path / LABELS_FILE)
    store.close()
    store.close()
    with pytest.raises(LabelStoreError, match="closed"):
        store.current()
    with pytest.raises(LabelStoreError, match="closed"):
        store.add_label("s", 1, ["tumour"])
    with LabelStore(tmp_path / LABELS_FILE) as opened:
        pass
    assert opened._connection is None


def test_locked_database_times_out_with_a_clear_error(tmp_path):
    path = tmp_path / LABELS_FILE
    with LabelStore(path, busy_timeout_s=0.1) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(LabelStoreError, match="locked for 0.1 s"):
                store.add_label("s", 1, ["tumour"])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.add_label("s", 1, ["tumour"]).region_id == 1


def test_sqlite_errors_inside_a_write_become_label_store_errors(store, monkeypatch):
    store.add_label("s", 1, ["tumour"])
    store._connection.execute("DROP INDEX labels_live")
    store._connection.execute("CREATE UNIQUE INDEX strict ON labels (slide, region_id)")
    with pytest.raises(LabelStoreError, match="contradicts the stored labels"):
        store.add_label("s", 1, ["stroma"])
    assert live(store) == [("s", 1, ("tumour",))]  # rolled back
    store._connection.execute("DROP TABLE suggestions")
    with pytest.raises(LabelStoreError, match="cannot be used .*no such table"):
        store.suggestions()
    with pytest.raises(LabelStoreError, match="cannot be used .*no such table"):
        store.add_label("s", 2, ["stroma"])
    assert not store._connection.in_transaction


# ---------------------------------------------------------------------- labels


def test_full_disk_loses_nothing_committed(store):
    polygon = [[0, 0], [1, 0], [1, 1]] * 50
    store.add_label("s", 0, ["tumour"], polygon=polygon)
    pages = store._connection.execute("PRAGMA page_count").fetchone()[0]
    store._connection.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(LabelStoreError, match="disk is full"):
        for region in range(1, 100):
            store.add_label("s", region, ["tumour"], polygon=polygon)
    kept = store.labelled_ids("s").tolist()
    assert kept == list(range(len(kept))) and len(kept) >= 1
    store._connection.execute("PRAGMA max_page_count = 1000000")
    assert store.add_label("s", 500, ["tumour"]).region_id == 500


def test_label_fields_are_stored_and_read_back(store):
    before = datetime.now().astimezone()
    label = store.add_label(
        "slide_1", np.int64(7), ("tumour", "stroma"), dominant="stroma", round=np.int32(2),
        seconds=3.5, clicks=2, level=1, polygon=[[10.5, 20], [30, 20.2], [30, 40.7], [10.5, 20]],
        weight=0.5)
    after = datetime.now().astimezone()
    assert isinstance(label, RegionLabel)
    assert (label.slide, label.region_id, label.classes, label.dominant, label.source) == (
        "slide_1", 7, ("tumour", "stroma"), "stroma", "oracle")
    assert (label.round, label.seconds, label.clicks, label.level, label.weight) == (2, 3.5, 2, 1, 0.5)
    # the closing vertex is dropped, the bbox is floor/ceil of the vertices
    assert label.polygon == ((10.5, 20.0), (30.0, 20.2), (30.0, 40.7))
    assert label.bbox == (10, 20, 30, 41)
    created = datetime.fromisoformat(label.created)
    assert created.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= created <= after + timedelta(seconds=1)
    assert store.get("slide_1", 7) == label
    plain = store.add_label("slide_1", 8, "tumour", bbox=(1, 2, 3, 4))
    assert (plain.classes, plain.dominant, plain.round, plain.seconds, plain.clicks) == (
        ("tumour",), None, None, 0.0, None)
    assert (plain.level, plain.bbox, plain.polygon, plain.weight) == (0, (1, 2, 3, 4), None, 1.0)
    assert plain.id > label.id
    given = store.add_label("slide_1", 9, ["tumour"], bbox=(0, 0, 5, 5), polygon=[[1, 1], [2, 1], [2, 2]])
    assert given.bbox == (0, 0, 5, 5)
    assert store.add_label("slide_1", 0, ["tumour"], bbox=(3, 3, 3, 3)).bbox == (3, 3, 3, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"slide": ""}, "slide must be"),
    ({"slide": 3}, "slide must be"),
    ({"region_id": -1}, "region_id must be >= 0"),
    ({"classes": []}, "at least one class"),
    ({"classes": ["a;b"]}, "without ';'"),
    ({"classes": [""]}, "without ';'"),
    ({"classes": [3]}, "without ';'"),
    ({"classes": ["a", "a"]}, "repeat"),
    ({"dominant": "necrosis"}, "dominant class 'necrosis' is not among"),
    ({"source": "model"}, "source must be"),
    ({"seconds": -1.0}, "seconds must be"),
    ({"seconds": math.inf}, "seconds must be"),
    ({"clicks": -1}, "clicks must be"),
    ({"level": -1}, "level must be"),
    ({"weight": -0.5}, "weight must be"),
    ({"weight": math.nan}, "weight must be"),
    ({"bbox": (5, 0, 4, 9)}, "bbox must be"),
    ({"bbox": (0, 5, 4, 4)}, "bbox must be"),
    ({"bbox": (0, 0, 4)}, "bbox must be"),
    ({"polygon": [[0, 0], [1, 1]]}, "at least 3 vertices"),
    ({"polygon": [[0, 0], [1, 0], [0, 0]]}, "at least 3 vertices"),
    ({"polygon": [[0, 0, 0], [1, 0, 0], [1, 1, 0]]}, r"\(N, 2\)"),
    ({"polygon": [0, 1, 2]}, r"\(N, 2\)"),
    ({"polygon": [[0, 0], [1, np.nan], [1, 1]]}, r"\(N, 2\)"),
])
def test_bad_label_arguments_raise_and_store_nothing(store, kwargs, message):
    arguments = {"slide": "s", "region_id": 1, "classes": ["a", "b"], **kwargs}
    with pytest.raises(ValueError, match=message):
        store.add_label(**arguments)
    assert store.current() == []


def test_add_relabel_delete_undo_redo_sequence(store):
    assert store.undo() is None and store.redo() is None
    first = store.add_label("s", 1, ["tumour"], seconds=1)
    store.add_label("s", 2, ["stroma"], seconds=2)
    relabel = store.add_label("s", 1, ["tumour", "stroma"], seconds=4)
    assert live(store) == [("s", 2, ("stroma",)), ("s", 1, ("tumour", "stroma"))]
    assert store.get("s", 1) == relabel
    # undo the relabel: the first label is live again
    assert store.undo() == relabel
    assert store.get("s", 1) == first
    assert live(store) == [("s", 1, ("tumour",)), ("s", 2, ("stroma",))]
    # redo it
    assert store.redo() == relabel
    assert store.get("s", 1) == relabel
    assert store.redo() is None
    # delete, undo the delete, redo it
    deleted = store.delete("s", 2)
    assert deleted.classes == ("stroma",) and store.get("s", 2) is None
    assert store.delete("s", 2) is None
    assert store.delete("s", 99) is None
    assert store.undo() == deleted
    assert store.get("s", 2) == deleted
    assert store.redo() == deleted
    assert store.get("s", 2) is None
    # undo everything, in reverse order
    assert store.undo() == deleted and store.get("s", 2) == deleted
    assert store.undo() == relabel and store.get("s", 1) == first
    assert store.undo().region_id == 2 and store.get("s", 2) is None
    assert store.undo() == first and store.current() == []
    assert store.undo() is None
    # redo two actions, then a new action drops what is left to redo
    assert store.redo() == first
    assert store.redo().region_id == 2
    third = store.add_label("s", 3, ["tumour"])
    assert store.redo() is None
    assert live(store) == [("s", 1, ("tumour",)), ("s", 2, ("stroma",)), ("s", 3, ("tumour",))]
    assert store.undo() == third
    assert store.undo().region_id == 2
    assert live(store) == [("s", 1, ("tumour",))]
    # the history survives a reopening
    path = store.path
    store.close()
    with LabelStore(path) as reopened:
        assert reopened.redo().region_id == 2
        assert reopened.redo() == third
        assert reopened.redo() is None


def test_pseudo_labels_live_beside_oracle_labels_without_history(store):
    oracle = store.add_label("s", 1, ["tumour"])
    pseudo = store.add_label("s", 1, ["stroma"], source="pseudo", round=1)
    newer = store.add_label("s", 1, ["tumour"], source="pseudo", round=1)
    assert store.get("s", 1) == oracle
    assert store.get("s", 1, source="pseudo") == newer != pseudo
    assert [lab.id for lab in store.current()] == [oracle.id, newer.id]
    assert store.current(source="pseudo") == [newer]
    assert store.undo() == oracle  # the pseudo labels are not in the history
    assert store.current() == [newer]


def test_current_filters_and_labelled_ids(store):
    store.add_label("b", 30, ["tumour"])
    store.add_label("a", 20, ["tumour"])
    store.add_label("a", 5, ["stroma"])
    store.add_label("a", 7, ["stroma"], source="pseudo")
    assert [(lab.slide, lab.region_id) for lab in store.current()] == [
        ("b", 30), ("a", 20), ("a", 5), ("a", 7)]
    assert [lab.region_id for lab in store.current(slide="a")] == [20, 5, 7]
    assert [lab.region_id for lab in store.current(slide="a", source="oracle")] == [20, 5]
    ids = store.labelled_ids("a")
    assert ids.dtype == np.int64 and ids.tolist() == [5, 20]
    assert store.labelled_ids("a", source="pseudo").tolist() == [7]
    empty = store.labelled_ids("nothing")
    assert empty.dtype == np.int64 and empty.shape == (0,)


def test_counts_seconds_and_clicks_by_hand(store):
    store.add_label("s", 1, ["tumour"], seconds=1.5, clicks=1)
    store.add_label("s", 2, ["tumour", "stroma"], seconds=2.0, clicks=2)
    store.add_label("t", 1, ["stroma"], seconds=0.5)  # clicks unknown
    store.add_label("s", 1, ["stroma"], seconds=3.0, clicks=1)  # relabel: region 1 now stroma
    store.add_label("s", 9, ["necrosis"], seconds=10.0, clicks=5)
    store.delete("s", 9)
    store.add_label("s", 4, ["tumour"], source="pseudo", seconds=100.0, clicks=100)
    # live oracle: s1 stroma, s2 tumour+stroma, t1 stroma
    assert store.counts() == {"stroma": 3, "tumour": 1}
    assert store.counts(classes=CLASSES) == {"tumour": 1, "stroma": 3}
    assert list(store.counts(classes=["stroma", "tumour", "other"])) == ["stroma", "tumour", "other"]
    assert store.counts(classes=["other"]) == {"other": 0, "stroma": 3, "tumour": 1}
    assert store.counts(source="pseudo") == {"tumour": 1}
    # every oracle label given counts: 1.5 + 2 + 0.5 + 3 + 10 ; live only: 2 + 0.5 + 3
    assert store.total_seconds() == pytest.approx(17.0)
    assert store.total_seconds(live_only=True) == pytest.approx(5.5)
    assert store.total_clicks() == 1 + 2 + 1 + 5
    assert store.total_clicks(live_only=True) == 3
    assert isinstance(store.total_clicks(), int) and isinstance(store.total_seconds(), float)


def test_empty_totals(store):
    assert store.total_seconds() == 0.0 and store.total_clicks() == 0
    assert store.counts() == {}


def test_replace_pseudo_labels_all_or_nothing(store):
    rows = [{"slide": "s", "region_id": r, "classes": ["tumour"], "weight": 0.25} for r in (1, 2, 3)]
    assert store.replace_pseudo_labels(1, rows) == 3
    round1 = store.current(source="pseudo")
    assert [(lab.region_id, lab.round, lab.weight, lab.source) for lab in round1] == [
        (1, 1, 0.25, "pseudo"), (2, 1, 0.25, "pseudo"), (3, 1, 0.25, "pseudo")]
    # round 2 supersedes round 1's pseudo labels, which stay as a record
    assert store.replace_pseudo_labels(2, [{"slide": "s", "region_id": 2, "classes": ["stroma"],
                                            "dominant": "stroma", "bbox": (0, 0, 2, 2)}]) == 1
    assert live(store, source="pseudo") == [("s", 2, ("stroma",))]
    assert store._connection.execute(
        "SELECT COUNT(*) FROM labels WHERE source = 'pseudo'").fetchone()[0] == 4
    # round 2 run again replaces its own rows
    assert store.replace_pseudo_labels(2, rows[:2]) == 2
    assert live(store, source="pseudo") == [("s", 1, ("tumour",)), ("s", 2, ("tumour",))]
    assert store._connection.execute(
        "SELECT COUNT(*) FROM labels WHERE source = 'pseudo'").fetchone()[0] == 5
    # a region twice: nothing changes
    with pytest.raises(LabelStoreError, match="contradicts"):
        store.replace_pseudo_labels(3, rows + rows[:1])
    assert live(store, source="pseudo") == [("s", 1, ("tumour",)), ("s", 2, ("tumour",))]
    # a bad row: nothing changes either
    with pytest.raises(ValueError, match="at least one class"):
        store.replace_pseudo_labels(3, rows + [{"slide": "s", "region_id": 9, "classes": []}])
    assert store.replace_pseudo_labels(4, []) == 0
    assert store.current(source="pseudo") == []
    assert store.undo() is None


# ---------------------------------------------------------------------- threads and processes


def test_threads_share_one_store(store):
    def write(offset):
        for region in range(offset, 120, 4):
            store.add_label("s", region, ["tumour"])

    threads = [threading.Thread(target=write, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.labelled_ids("s").tolist() == list(range(120))


WRITER = """
    import sys, time
    from napari_wsl_al.core.al.labels import LabelStore
    path, first = sys.argv[1], int(sys.argv[2])
    with LabelStore(path) as store:
        print("ready", flush=True)
        sys.stdin.readline()
        for region in range(first, 400, 2):
            store.add_label("s", region, ["tumour"], seconds=1.0)
            time.sleep(0.002)  # a fast annotator: the other process gets its turns
"""


def test_two_processes_write_at_once_and_lose_nothing(tmp_path):
    path = tmp_path / LABELS_FILE
    LabelStore(path).close()
    writers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(path), str(i)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for i in (0, 1)]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready"
    for writer in writers:  # both start writing together
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    with LabelStore(path) as store:
        assert store.labelled_ids("s").tolist() == list(range(400))
        labels = store.current()
        assert len({lab.id for lab in labels}) == 400
        assert store.total_seconds() == 400.0
        # the writes were interleaved: each process's labels are not one block of ids
        evens = [lab.region_id % 2 == 0 for lab in labels]
        assert sum(a != b for a, b in itertools.pairwise(evens)) > 10


KILLED = """
    import sys
    from napari_wsl_al.core.al.labels import LabelStore
    store = LabelStore(sys.argv[1])
    store.start_round(1, {"strategy": "oreal"})
    for region in range(100000):
        label = store.add_label("s", region, ["tumour"])
        print(label.id, flush=True)
"""


def test_labels_survive_a_killed_writer_and_its_round_is_discarded(tmp_path):
    path = tmp_path / LABELS_FILE
    writer = run_python(KILLED, str(path))
    printed = [int(writer.stdout.readline()) for _ in range(40)]
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    with LabelStore(path) as store:
        stored = {lab.id for lab in store.current()}
        assert set(printed) <= stored
        assert store.labelled_ids("s").tolist() == list(range(len(stored)))
        [record] = store.rounds()
        assert record.status == "running"
        assert store.discard_unfinished() == [1]
        [record] = store.rounds()
        assert (record.status, record.reason) == ("failed", ABORTED_REASON)
        assert record.finished is not None
        assert store.discard_unfinished() == []
        assert store.start_round(1, {}).status == "running"  # the number is used again


# ---------------------------------------------------------------------- rounds


def test_round_life_cycle(store):
    assert store.rounds() == [] and store.last_done_round() is None
    store.add_label("s", 1, ["tumour"])
    store.add_label("s", 2, ["tumour"])
    store.add_label("s", 3, ["tumour"], source="pseudo")
    started = store.start_round(1, {"strategy": "oreal", "lr": np.float32(0.5)})
    assert (started.number, started.status, started.labels_used) == (1, "running", 2)
    assert started.settings == {"strategy": "oreal", "lr": 0.5}
    assert started.metrics == {} and started.checkpoint is None and started.finished is None
    assert datetime.fromisoformat(started.started).utcoffset() == timedelta(0)
    assert store.last_done_round() is None
    with pytest.raises(LabelStoreError, match="round 1 is already running.*discard_unfinished"):
        store.start_round(1, {})
    # a round running in this process is not discarded unless forced
    assert store.discard_unfinished() == []
    checkpoint = Path("checkpoints") / "round_0001.pt"
    done = store.finish_round(1, {"dice": np.float64(0.75), "per_class": np.array([1, 2]),
                                  "file": checkpoint}, checkpoint)
    assert (done.status, done.checkpoint, done.metrics) == (
        "done", "checkpoints/round_0001.pt",
        {"dice": 0.75, "per_class": [1, 2], "file": "checkpoints/round_0001.pt"})
    assert done.finished is not None and done.reason is None
    assert store.last_done_round() == 1
    with pytest.raises(LabelStoreError, match="round 1 is already done"):
        store.start_round(1, {})
    with pytest.raises(LabelStoreError, match="round 1 is done, not running"):
        store.finish_round(1, {}, None)
    with pytest.raises(LabelStoreError, match="round 7 is not started, not running"):
        store.fail_round(7, "boom")
    store.start_round(2, {})
    failed = store.fail_round(2, "TrainingError: loss is nan")
    assert (failed.status, failed.reason) == ("failed", "TrainingError: loss is nan")
    with pytest.raises(LabelStoreError, match="round 2 is failed, not running"):
        store.fail_round(2, "again")
    store.add_label("s", 4, ["tumour"])
    again = store.start_round(2, {"init": "wsl"})  # a failed round is run again
    assert (again.status, again.settings, again.labels_used, again.reason) == (
        "running", {"init": "wsl"}, 3, None)
    assert store.finish_round(2, {}, None).checkpoint is None
    assert [r.number for r in store.rounds()] == [1, 2]
    assert store.last_done_round() == 2
    store.start_round(0, {})
    assert store.last_done_round() == 2
    with pytest.raises(ValueError, match="round numbers are >= 0"):
        store.start_round(-1, {})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        store.start_round(5, {"model": object()})
    assert [r.number for r in store.rounds()] == [0, 1, 2]


def test_discard_unfinished_checks_the_process(store, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for number in (1, 2, 3, 4):
        store.start_round(number, {})
    db = store._connection
    db.execute("UPDATE rounds SET pid = ? WHERE number = 1", (dead.pid,))
    db.execute("UPDATE rounds SET pid = ? WHERE number = 2", (os.getppid(),))  # alive
    db.execute("UPDATE rounds SET pid = ?, host = 'elsewhere' WHERE number = 3", (dead.pid,))
    db.execute("UPDATE rounds SET pid = 1 WHERE number = 4")  # alive, maybe not ours

    def not_permitted(pid, sig):
        if pid == 1:
            raise PermissionError
        return real_kill(pid, sig)

    real_kill = os.kill
    monkeypatch.setattr(labels_module.os, "kill", not_permitted)
    assert store.discard_unfinished() == [1]
    assert [r.status for r in store.rounds()] == ["failed", "running", "running", "running"]
    monkeypatch.setattr(labels_module, "_ON_WINDOWS", True)
    assert labels_module._process_alive(os.getpid()) is True
    assert labels_module._process_alive(os.getppid()) is False
    assert store.discard_unfinished(force=True) == [2, 3, 4]
    assert {r.reason for r in store.rounds()} == {ABORTED_REASON}


# ---------------------------------------------------------------------- suggestions


def test_suggestions_follow_labels(store):
    store.add_label("s", 5, ["tumour"])
    assert store.save_suggestions("s", 1, "oreal", np.array([3, 5, 8]),
                                  [0.9, np.float32(0.5), np.nan], ["tumour", ["a", "b"], None]) == 3
    got = store.suggestions("s")
    assert [(g.region_id, g.rank, g.strategy, g.round, g.status, g.classes) for g in got] == [
        (3, 1, "oreal", 1, "pending", ("tumour",)), (5, 2, "oreal", 1, "labelled", ("a", "b")),
        (8, 3, "oreal", 1, "pending", None)]
    assert got[0].score == 0.9 and got[1].score == 0.5 and math.isnan(got[2].score)
    # a label marks a suggestion labelled; undoing it makes it pending again
    store.add_label("s", 3, ["stroma"])
    assert store.suggestions("s", status="labelled")[0].region_id == 3
    store.undo()
    assert [g.status for g in store.suggestions("s")] == ["pending", "labelled", "pending"]
    store.redo()
    assert [g.status for g in store.suggestions("s")] == ["labelled", "labelled", "pending"]
    store.delete("s", 3)
    assert [g.status for g in store.suggestions("s")] == ["pending", "labelled", "pending"]
    # skipping, and a label on a skipped region
    assert store.mark_suggestion("s", 8, "skipped") is True
    assert store.mark_suggestion("s", 99, "skipped") is False
    with pytest.raises(ValueError, match="status must be"):
        store.mark_suggestion("s", 8, "done")
    store.add_label("s", 8, ["tumour"])
    store.undo()
    assert store.suggestions("s", status="skipped") == []
    assert [g.region_id for g in store.suggestions(status="pending")] == [3, 8]
    store.mark_suggestion("s", 8, "skipped")
    store.add_label("s", 3, ["tumour"], source="pseudo")
    assert store.suggestions("s")[0].status == "pending"  # pseudo labels do not count
    # a new batch replaces the pending ones and re-suggested regions, keeps the rest
    store.save_suggestions("t", 1, "random", [1], [0.1])
    store.save_suggestions("s", 2, "entropy", [8, 4], [2.0, 1.0])
    assert [(g.slide, g.region_id, g.rank, g.round, g.status, g.classes)
            for g in store.suggestions()] == [
        ("s", 5, 2, 1, "labelled", ("a", "b")), ("s", 8, 1, 2, "pending", None),
        ("s", 4, 2, 2, "pending", None), ("t", 1, 1, 1, "pending", None)]
    assert [g.region_id for g in store.suggestions("t")] == [1]
    assert store.save_suggestions("s", 3, "entropy", [], []) == 0
    assert [g.region_id for g in store.suggestions("s")] == [5]


@pytest.mark.parametrize("ids, scores, classes, message", [
    ([1, 2], [0.5], None, "2 region ids but 1 scores"),
    ([1, 1], [0.5, 0.4], None, "suggested twice"),
    ([1, 2], [0.5, 0.4], ["a"], "2 region ids but 1 class entries"),
])
def test_bad_suggestions(store, ids, scores, classes, message):
    with pytest.raises(ValueError, match=message):
        store.save_suggestions("s", 1, "oreal", ids, scores, classes)
    assert store.suggestions() == []


# ---------------------------------------------------------------------- GeoJSON


def _fill_for_export(store):
    store.add_label("s1", 4, ["tumour"], dominant="tumour", round=1, seconds=2.0, clicks=1,
                    level=1, polygon=[[10, 10], [20, 10], [20, 30], [10, 25]])
    store.add_label("s1", 5, ["tumour", "stroma"], round=1, seconds=3.0, clicks=2,
                    bbox=(30, 40, 50, 60))
    store.add_label("s2", 5, ["background", "stroma"], dominant="stroma", bbox=(0, 0, 8, 8))
    store.add_label("s2", 6, ["background"], bbox=(8, 0, 16, 8))
    store.add_label("s2", 7, ["stroma"])  # no geometry: left out
    store.add_label("s1", 9, ["tumour"], source="pseudo", bbox=(0, 0, 1, 1))  # not exported


def test_geojson_export_is_what_qupath_reads(store, tmp_path):
    _fill_for_export(store)
    path = tmp_path / "labels.geojson"
    assert store.export_geojson(path, CLASSES) == 4
    document = json.loads(path.read_text())
    assert document["type"] == "FeatureCollection"
    features = document["features"]
    for feature in features:
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] == "Polygon"
        [ring] = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and len(ring) >= 4
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["source"] == "oracle"
    first, second, third, fourth = features
    assert first["geometry"]["coordinates"] == [[[10, 10], [20, 10], [20, 30], [10, 25], [10, 10]]]
    assert first["properties"]["classification"] == {"name": "tumour", "color": [255, 0, 0]}
    assert {k: first["properties"][k] for k in (
        "slide", "region_id", "classes", "dominant", "round", "seconds", "clicks", "level")} == {
        "slide": "s1", "region_id": 4, "classes": ["tumour"], "dominant": "tumour", "round": 1,
        "seconds": 2.0, "clicks": 1, "level": 1}
    # no polygon: the bbox rectangle; no dominant class: QuPath's derived class name
    assert second["geometry"]["coordinates"] == [[[30, 40], [50, 40], [50, 60], [30, 60], [30, 40]]]
    assert second["properties"]["classification"] == {"name": "tumour: stroma", "color": [255, 0, 0]}
    assert third["properties"]["classification"] == {"name": "stroma", "color": [0, 255, 128]}
    assert fourth["properties"]["classification"] == {"name": "background", "color": [128, 128, 128]}
    assert store.export_geojson(path, CLASSES, slide="s2") == 2
    assert [f["properties"]["region_id"] for f in json.loads(path.read_text())["features"]] == [5, 6]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_geojson_export_errors(store, tmp_path):
    store.add_label("s", 1, ["tumour"], bbox=(0, 0, 1, 1))
    with pytest.raises(LabelStoreError, match="folder to export to does not exist"):
        store.export_geojson(tmp_path / "missing" / "a.geojson", CLASSES)
    with pytest.raises(ValueError, match="not #rrggbb"):
        store.export_geojson(tmp_path / "a.geojson", [ClassSpec("tumour", "red")])


def _resolver_from(labels):
    """A resolve() that finds the stored regions again from their outline's bbox."""
    by_box = {(lab.slide, lab.bbox): (lab.region_id, lab.bbox) for lab in labels}
    calls = []

    def resolve(slide, polygon):
        calls.append((slide, polygon.copy()))
        assert polygon.shape[1] == 2 and not np.array_equal(polygon[0], polygon[-1])
        box = (*np.floor(polygon.min(0)).astype(int).tolist(), *np.ceil(polygon.max(0)).astype(int).tolist())
        return [by_box[(slide, box)]] if (slide, box) in by_box else []

    return resolve, calls


def _comparable(labels):
    return [(lab.slide, lab.region_id, lab.classes, lab.dominant, lab.source, lab.round,
             lab.seconds, lab.clicks, lab.level, lab.bbox, lab.polygon) for lab in labels]


def test_geojson_round_trip(store, tmp_path):
    _fill_for_export(store)
    path = tmp_path / "labels.geojson"
    store.export_geojson(path, CLASSES)
    exported = [lab for lab in store.current(source="oracle") if lab.bbox is not None]
    resolve, calls = _resolver_from(exported)
    with LabelStore(tmp_path / "other.sqlite") as other:
        assert other.import_geojson(path, resolve, classes=[*CLASSES, "background"]) == 4
        assert _comparable(other.current()) == _comparable(exported)
        assert [c[0] for c in calls] == ["s1", "s1", "s2", "s2"]
        # the import is one undo action
        assert other.undo().region_id == 6
        assert other.current() == []
        assert other.redo().region_id == 6
        assert _comparable(other.current()) == _comparable(exported)


def test_geojson_import_of_qupath_files(store, tmp_path):
    store.add_label("s", 2, ["tumour"])
    store.save_suggestions("s", 1, "oreal", [2, 3], [1.0, 0.5])
    square = [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]
    features = [  # a bare list, as QuPath writes by default; no slide property
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
            [square], [[[10, 10], [12, 10], [12, 12], [10, 10]]]]},
         "properties": {"objectType": "annotation", "seconds": 6.0, "clicks": 3,
                        "classification": {"name": "tumour: stroma", "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"classification": {"names": ["stroma"], "colorRGB": -1}}},
    ]
    path = tmp_path / "qupath.json"
    path.write_text(json.dumps(features))
    regions = {(0, 0, 4, 4): [(2, (0, 0, 4, 4)), (3, (4, 0, 8, 4))], (10, 10, 12, 12): [(7, (9, 9, 13, 13))]}
    seen = []

    def resolve(slide, polygon):
        seen.append(slide)
        return regions[(*polygon.min(0).astype(int).tolist(), *polygon.max(0).astype(int).tolist())]

    with pytest.raises(LabelStoreError, match="feature 0 names no slide"):
        store.import_geojson(path, resolve)
    assert store.import_geojson(path, resolve, classes=CLASSES, slide="s") == 5
    got = [(lab.region_id, lab.classes, lab.seconds, lab.clicks, lab.bbox, lab.polygon is None)
           for lab in store.current()]
    # feature 0 covers 3 regions: 2 s each, clicks on the first; feature 1 relabels 2 and 3
    assert got == [(7, ("tumour", "stroma"), 2.0, None, (9, 9, 13, 13), True),
                   (2, ("stroma",), 0.0, None, (0, 0, 4, 4), True),
                   (3, ("stroma",), 0.0, None, (4, 0, 8, 4), True)]
    assert seen == [None, None, "s", "s", "s"]
    assert [g.status for g in store.suggestions("s")] == ["labelled", "labelled"]
    # one undo removes the whole import, back to the label given before it
    store.undo()
    assert live(store) == [("s", 2, ("tumour",))]
    assert [g.status for g in store.suggestions("s")] == ["labelled", "pending"]
    assert store.redo().region_id == 3
    assert live(store) == [("s", 7, ("tumour", "stroma")), ("s", 2, ("stroma",)),
                           ("s", 3, ("stroma",))]


def test_geojson_single_feature_keeps_its_outline(store, tmp_path):
    path = tmp_path / "one.geojson"
    outline = [[0.5, 0, 9], [4, 0, 9], [4, 4.5, 9], [0.5, 0, 9]]  # z is ignored
    path.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        outline]}, "properties": {"slide": "s", "classes": ["tumour"], "dominant": "tumour",
                                  "round": 3, "seconds": 1.5, "level": 2, "source": "oracle"}}))
    assert store.import_geojson(path, lambda slide, polygon: [(np.int64(11), np.array([0, 0, 4, 5]))]) == 1
    label = store.get("s", 11)
    assert (label.classes, label.dominant, label.round, label.seconds, label.level) == (
        ("tumour",), "tumour", 3, 1.5, 2)
    assert label.polygon == ((0.5, 0.0), (4.0, 0.0), (4.0, 4.5)) and label.bbox == (0, 0, 4, 5)
    store.undo()
    assert store.import_geojson(path, lambda slide, polygon: []) == 0
    assert store.redo().region_id == 11  # an empty import leaves the redo history alone


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read the GeoJSON file"),
    (json.dumps({"type": "Point"}), "not a GeoJSON Feature"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
         "properties": {"classes": ["tumour"]}}]}), "feature 0 has a Point geometry"),
    (json.dumps([{"type": "Feature", "geometry": None, "properties": {}}]), "feature 0 has a None"),
    (json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]},
                  "properties": {"slide": "s"}}]), "feature 0 has no classification"),
    (json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]},
                  "properties": {"slide": "s", "classification": {"name": "tumour: necrosis"}}}]),
     "feature 0 uses the class 'necrosis'"),
    (json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]},
                  "properties": {"slide": "s", "classes": ["tumour"], "round": 1.5}}]),
     "feature 0: .*integer"),
    (json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]},
                  "properties": {"slide": "s", "classes": ["tumour"], "dominant": "stroma"}}]),
     "feature 0: dominant class"),
])
def test_geojson_import_errors_name_the_file_and_change_nothing(store, tmp_path, content, message):
    store.add_label("s", 1, ["tumour"])
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(LabelStoreError, match=message) as info:
        store.import_geojson(path, lambda slide, polygon: [(1, (0, 0, 1, 1))], classes=CLASSES)
    assert info.value.path == path
    assert live(store) == [("s", 1, ("tumour",))]


def test_geojson_import_of_a_missing_file(store, tmp_path):
    with pytest.raises(LabelStoreError, match="cannot read the GeoJSON file") as info:
        store.import_geojson(tmp_path / "none.geojson", lambda s, p: [])
    assert info.value.path == tmp_path / "none.geojson"


# ---------------------------------------------------------------------- CSV


def test_csv_round_trip(store, tmp_path):
    _fill_for_export(store)
    path = tmp_path / "labels.csv"
    assert store.export_csv(path) == 6
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    first = lines[1].split(",")
    assert first[:11] == ["s1", "4", "tumour", "tumour", "oracle", "1", "2.0", "1", "1",
                          "10 10 20 30", "1.0"]
    assert lines[2].split(",")[2:4] == ["tumour;stroma", ""]
    assert lines[5].split(",")[5:10] == ["", "0.0", "", "0", ""]
    with LabelStore(tmp_path / "other.sqlite") as other:
        assert other.import_csv(path, classes=[*CLASSES, "background"]) == 6
        stored = [lab for lab in store.current()]
        imported = other.current()
        strip = [(*row[:-1], None) for row in _comparable(stored)]  # CSV holds no polygon
        assert _comparable(imported) == strip
        assert [lab.created for lab in imported] == [lab.created for lab in stored]
        assert [lab.weight for lab in imported] == [lab.weight for lab in stored]
        other.undo()
        assert other.current(source="oracle") == []
        assert len(other.current(source="pseudo")) == 1  # pseudo labels are not undone
    assert store.export_csv(path, slide="s2", source="oracle") == 3
    assert store.export_csv(path, source="pseudo") == 1


def test_csv_import_with_only_the_required_columns(store, tmp_path):
    path = tmp_path / "minimal.csv"
    path.write_text("\ufeffslide,region_id,classes\ns,3,tumour;stroma\n", encoding="utf-8")
    assert store.import_csv(path) == 1
    label = store.get("s", 3)
    assert (label.classes, label.dominant, label.source, label.round, label.seconds,
            label.clicks, label.level, label.bbox, label.weight) == (
        ("tumour", "stroma"), None, "oracle", None, 0.0, None, 0, None, 1.0)
    assert datetime.fromisoformat(label.created).utcoffset() == timedelta(0)


@pytest.mark.parametrize("content, message", [
    ("slide,classes\ns,tumour\n", "no column 'region_id'"),
    ("slide,region_id,classes\ns,x,tumour\n", "line 2: invalid literal"),
    ("slide,region_id,classes\ns,1,tumour\ns,2,necrosis\n", "line 3 uses the class 'necrosis'"),
    ("slide,region_id,classes,bbox\ns,1,tumour,1 2 3\n", "line 2: bbox must be"),
    ("slide,region_id,classes,source\ns,1,tumour,model\n", "line 2: source must be"),
])
def test_csv_import_errors_name_the_file_and_change_nothing(store, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(LabelStoreError, match=message) as info:
        store.import_csv(path, classes=CLASSES)
    assert info.value.path == path
    assert store.current() == []


def test_csv_import_of_unreadable_files(store, tmp_path):
    with pytest.raises(LabelStoreError, match="cannot read the CSV file"):
        store.import_csv(tmp_path / "none.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\xfa\x00slide")
    with pytest.raises(LabelStoreError, match="cannot read the CSV file"):
        store.import_csv(binary)
    with pytest.raises(LabelStoreError, match="folder to export to does not exist"):
        store.export_csv(tmp_path / "missing" / "a.csv")


def test_socket_host_is_recorded(store):
    store.start_round(1, {})
    assert store._connection.execute("SELECT pid, host FROM rounds").fetchone() == (
        os.getpid(), socket.gethostname())


def test_polygon_with_a_hole_is_stored_exported_and_imported_without_the_hole(store, tmp_path):
    outer = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]
    hole = [[4.0, 4.0], [6.0, 4.0], [6.0, 6.0], [4.0, 6.0]]
    label = store.add_label("s1", 7, ["tumour"], polygon=[outer, hole + [hole[0]]])
    assert label.polygon == tuple(map(tuple, outer))
    assert label.holes == (tuple(map(tuple, hole)),)
    assert label.bbox == (0, 0, 10, 10)
    plain = store.add_label("s1", 8, ["stroma"], polygon=np.asarray(outer) + 20)
    assert plain.holes == ()
    assert store.current(slide="s1")[0].holes == label.holes  # read back from the database
    path = tmp_path / "labels.geojson"
    store.export_geojson(path, CLASSES)
    features = {f["properties"]["region_id"]: f for f in json.loads(path.read_text())["features"]}
    assert features[7]["geometry"]["coordinates"] == [outer + [outer[0]], hole + [hole[0]]]
    assert len(features[8]["geometry"]["coordinates"]) == 1

    def resolve(slide, polygon):
        # region 7 under the outline, region 9 under the hole, region 10 under the other
        if polygon.min() >= 20:
            return [(10, (20, 20, 30, 30))]
        if polygon.max() <= 6:
            return [(9, (4, 4, 6, 6))]
        return [(7, (0, 0, 10, 10)), (9, (4, 4, 6, 6))]

    with LabelStore(tmp_path / "other.sqlite") as other:
        assert other.import_geojson(path, resolve, classes=CLASSES) == 2
        imported = {lab.region_id: lab for lab in other.current()}
    assert sorted(imported) == [7, 10]
    assert imported[7].holes == label.holes and imported[7].polygon == label.polygon
