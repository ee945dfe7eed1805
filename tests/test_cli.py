"""The ``napari-wsl-al`` command line: help, slide information, the headless demo, clear errors."""

from __future__ import annotations

import json

import numpy as np
from skimage.io import imread

from napari_wsl_al.cli import main


def test_help_lists_the_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("demo", "info", "make-sample"):
        assert command in out


def test_info_on_the_real_slide(cmu1_path, capsys):
    assert main(["info", str(cmu1_path)]) == 0
    out = capsys.readouterr().out
    assert "2220 x 2967 px" in out and "0.499" in out and "macro" in out


def test_info_json(cmu1_path, capsys):
    assert main(["info", "--json", str(cmu1_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dimensions"] == [2220, 2967]
    assert summary["properties"]["openslide.vendor"] == "aperio"


def test_info_on_a_missing_file_names_it(tmp_path, capsys):
    missing = tmp_path / "nowhere.svs"
    assert main(["info", str(missing)]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err


def test_headless_demo_writes_a_screenshot(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--headless", "--screenshot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "CMU-1-Small-Region" in out and "tissue covers" in out
    picture = imread(png)
    assert picture.ndim == 3 and min(picture.shape[:2]) > 100
    # The tissue outline is drawn in blue on the slide.
    blue = np.all(picture[..., :3] == (0, 160, 255), axis=-1)
    assert blue.any()
