"""``napari-wsl-al round``'s options change this round's settings, not the project's."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest

from napari_wsl_al.cli import main
from napari_wsl_al.commands import round as round_command
from napari_wsl_al.core.al.rounds import ALSettings
from napari_wsl_al.core.project import Project


def parse(*argv):
    parser = argparse.ArgumentParser()
    round_command.add_arguments(parser)
    return parser.parse_args(["study", *argv])


def test_options_override_the_projects_settings():
    base = ALSettings()
    assert round_command.round_settings(base, parse()) == base
    settings = round_command.round_settings(base, parse(
        "--label-prop", "--label-prop-k", "5", "--label-prop-lambda", "0.5", "--steps", "7",
        "--reinit", "--device", "cpu"))
    assert (settings.label_prop, settings.label_prop_k, settings.label_prop_lambda) == (True, 5, 0.5)
    assert (settings.train.steps, settings.init, settings.device) == (7, "wsl", "cpu")
    jittered = round_command.round_settings(base, parse("--colour-jitter", "0.2"))
    assert jittered.train == replace(base.train, colour_jitter=0.2)
    both = round_command.round_settings(base, parse("--colour-jitter", "0", "--steps", "9"))
    assert (both.train.colour_jitter, both.train.steps) == (0.0, 9)
    on = ALSettings(label_prop=True)
    assert round_command.round_settings(on, parse("--no-label-prop")).label_prop is False
    assert round_command.round_settings(on, parse()).label_prop is True


def test_a_bad_option_is_a_message_and_the_project_is_unchanged(tmp_path):
    project = Project.create(tmp_path / "study", classes=["benign", "malignant"])
    before = (project.path / "project.json").read_text()
    with pytest.raises(SystemExit, match="label_prop_k must be at least 1"):
        main(["round", str(project.path), "--label-prop-k", "0"])
    with pytest.raises(SystemExit, match="label_prop_lambda must be >= 0"):
        main(["round", str(project.path), "--label-prop-lambda", "-1"])
    with pytest.raises(SystemExit, match="colour jitter must be in"):
        main(["round", str(project.path), "--colour-jitter", "2"])
    assert (project.path / "project.json").read_text() == before
