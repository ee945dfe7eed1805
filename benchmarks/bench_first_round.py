"""Your first round, timed: the Active learning dock on the sample slide with the default model
and the default settings; Suggest 20, label all 20 with key presses, train the next round.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_first_round.py

Prints the seconds of each step and the machine's share of a first round (what a person waits
for). Key presses are dispatched as napari does; the answers follow a fixed pattern (the
benchmark measures the software, not the answers). A person's own time to judge a region
comes on top: at 5 s per region, 100 s for 20.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
os.environ["NAPARI_WSL_AL_PROJECT"] = str(Path(tempfile.mkdtemp()) / "study.wslal")

import napari

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_al_widget import press, pump_events

from napari_wsl_al._qt.al_widget import ActiveLearningWidget
from napari_wsl_al.core.al.rounds import ALSettings

SLIDE = REPOSITORY / "sample_data" / "CMU-1-Small-Region.svs"
#: Answers cycled over the suggestions: background, benign, malignant, background + benign ...
ANSWERS = ("1", "2", "3", "1", "2")


def main() -> int:
    defaults = ALSettings()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(str(SLIDE), plugin="napari-wsl-al")
    widget = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Active learning", area="right")
    pump_events(lambda: True)
    widget.batch_spin.setValue(20)
    times = {}
    start = time.perf_counter()
    widget.suggest()
    pump_events(lambda: widget.worker is None)
    times["Suggest (project created, superpixels, regions scored, 20 suggestions)"] = (
        time.perf_counter() - start)
    print(widget.status.text(), flush=True)
    start = time.perf_counter()
    labelled = 0
    while widget.session.current_region is not None and labelled < 20:
        press(viewer, ANSWERS[labelled % len(ANSWERS)])
        press(viewer, "Enter")
        pump_events(lambda: True)
        labelled += 1
    times[f"{labelled} labels by key press (software only)"] = time.perf_counter() - start
    start = time.perf_counter()
    widget.train()
    pump_events(lambda: widget.worker is None)
    times[f"Train next round ({defaults.train.steps} steps, its maps, 20 new suggestions)"] = (
        time.perf_counter() - start)
    print(widget.status.text(), flush=True)
    total = sum(times.values())
    for what, seconds in times.items():
        print(f"  {what:<66} {seconds:7.1f} s")
    print(f"  {'machine time of a first round':<66} {total:7.1f} s")
    print(f"  {'with 5 s of judgement per region':<66} {total + 5 * labelled:7.1f} s "
          f"({(total + 5 * labelled) / 60:.1f} min)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
