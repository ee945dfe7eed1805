"""Tests of checkpoints, ModelConfig round-trips and backbone weight loading (no network)."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch

import napari_wsl_al
from napari_wsl_al.core.errors import CheckpointError, WeightsUnavailableError
from napari_wsl_al.core.models import (
    ARCHITECTURES,
    CHECKPOINT_FORMAT,
    ModelConfig,
    build_model,
    default_checkpoint_path,
    load_backbone_weights,
    load_checkpoint,
    load_default_model,
    resnet,
    save_checkpoint,
)

torch.set_num_threads(1)

TINY = dict(width=0.125, classes=("benign", "malignant"))


def tiny_config(arch="maxmin", **changes) -> ModelConfig:
    return ModelConfig(arch=arch, **{**TINY, **changes})


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_json_round_trip(arch):
    config = tiny_config(arch, mpp=0.62, head={} if arch != "maxmin" else {"sigma": 0.2})
    text = json.dumps(config.to_dict())
    assert ModelConfig.from_dict(json.loads(text)) == config


def test_config_refuses_unknown_names():
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(arch="resnet-cam")
    with pytest.raises(ValueError, match="head parameters"):
        ModelConfig(arch="maxmin", head={"sigmaa": 0.1})
    with pytest.raises(ValueError, match="keys"):
        ModelConfig.from_dict({"arch": "maxmin", "colour": "red"})
    assert tiny_config().head_params()["sigma"] == 0.15


@pytest.mark.parametrize("arch", ["maxmin", "joint", "deepmil"])
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    torch.manual_seed(0)
    config = tiny_config(arch)
    model = build_model(config)
    # move batch-norm statistics and the Max-Min schedule away from their initial values
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    model.end_epoch(0)
    model.eval()
    path = save_checkpoint(
        tmp_path / "run" / "model.pt", model, config, extra={"epochs": 2, "dice": [0.5]}
    )
    loaded, loaded_config, extra = load_checkpoint(path, expected=config)
    assert loaded_config == config and extra == {"epochs": 2, "dice": [0.5]}
    assert not loaded.training and loaded.classes == config.classes
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before, after = model(images), loaded(images)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not list(tmp_path.joinpath("run").glob("*.tmp")), "temporary file left behind"


def test_saved_file_layout(tmp_path):
    config = tiny_config("cam-avg")
    path = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["version"] == 1
    assert payload["config"] == config.to_dict() and payload["extra"] == {}
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "bad.pt", build_model(config), config, extra={"x": object()})
    assert not (tmp_path / "bad.pt").exists()


def test_missing_corrupt_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(tmp_path / "absent.pt")
    assert info.value.path == tmp_path / "absent.pt"
    config = tiny_config("cam-max")
    good = save_checkpoint(tmp_path / "good.pt", build_model(config), config)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(truncated)
    assert "truncated.pt" in str(info.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(build_model(config).state_dict(), bare)
    with pytest.raises(CheckpointError, match="not a napari-wsl-al checkpoint"):
        load_checkpoint(bare)


def test_newer_version_is_refused(tmp_path):
    config = tiny_config("cam-avg")
    path = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="newer") as info:
        load_checkpoint(path)
    assert "upgrade" in str(info.value)


def test_mismatches_with_expected_and_shapes_are_refused(tmp_path):
    config = tiny_config("maxmin")
    path = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    with pytest.raises(CheckpointError, match="not the expected 'joint'"):
        load_checkpoint(path, expected=tiny_config("joint"))
    with pytest.raises(CheckpointError, match="classes"):
        load_checkpoint(path, expected={"classes": ["normal", "tumour", "other"]})
    # a checkpoint whose weights belong to another architecture than its config says
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = build_model(tiny_config("joint")).state_dict()
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit") as info:
        load_checkpoint(path)
    assert "m.pt" in str(info.value)


def test_default_model_path_and_absent_default(monkeypatch, tmp_path):
    assert default_checkpoint_path() == (
        __import__("pathlib").Path(napari_wsl_al.__file__).parent / "models" / "default.pt"
    )
    from napari_wsl_al.core.models import checkpoint

    monkeypatch.setattr(checkpoint, "default_checkpoint_path", lambda: tmp_path / "default.pt")
    with pytest.raises(CheckpointError, match="default model"):
        load_default_model("cpu")
    config = tiny_config("cam-avg")
    save_checkpoint(tmp_path / "default.pt", build_model(config), config)
    model = load_default_model("cpu")
    assert not model.training and model.classes == config.classes


def torchvision_style_state_dict(depth=18, width=0.125):
    """A state dict with torchvision's names (and ``fc``), like a saved torchvision ResNet."""
    torch.manual_seed(1)
    reference = resnet(depth=depth, width=width)
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in reference.state_dict().items()
    }
    state = {
        k: v for k, v in state.items() if not k.endswith("num_batches_tracked")
    }  # old torchvision files
    state["fc.weight"] = torch.randn(1000, reference.out_channels)
    state["fc.bias"] = torch.randn(1000)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_named_weights_load(tmp_path, suffix):
    state = torchvision_style_state_dict()
    path = tmp_path / f"resnet18-tiny{suffix}"
    if suffix == ".pth":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    backbone = resnet(depth=18, width=0.125)
    report = load_backbone_weights(backbone, path)
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert report.loaded == len(state) - 2
    assert torch.equal(backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(
        backbone.layer2[0].downsample[1].running_var, state["layer2.0.downsample.1.running_var"]
    )


def test_torchvision_names_match_the_reference_layout():
    names = set(resnet(depth=18).state_dict())
    for expected in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
    ):
        assert expected in names
    bottleneck = set(resnet(depth=50, width=0.125).state_dict())
    assert "layer1.0.conv3.weight" in bottleneck and "layer1.0.downsample.1.weight" in bottleneck
    assert sum(p.numel() for p in resnet(depth=18).parameters()) == 11176512  # torchvision minus fc


def test_backbone_weights_of_another_width_are_refused(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(torchvision_style_state_dict(width=0.25), path)
    with pytest.raises(CheckpointError, match="shape") as info:
        load_backbone_weights(resnet(width=0.125), path)
    assert "wrong.pth" in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(resnet(width=0.125), tmp_path / "absent.pth")


def test_partial_weights_report_missing_and_unexpected(tmp_path):
    state = torchvision_style_state_dict()
    state.pop("layer4.1.conv2.weight")
    state["extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    report = load_backbone_weights(resnet(width=0.125), path)
    assert report.missing_keys == ["layer4.1.conv2.weight"]
    assert report.unexpected_keys == ["extra_head.weight"]


def test_offline_imagenet_raises_weights_unavailable(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="offline") as info:
        load_backbone_weights(resnet(depth=18), "imagenet")
    assert "local" in str(info.value) and "resnet18-" in str(info.value)
    with pytest.raises(WeightsUnavailableError, match="width=1.0"):
        load_backbone_weights(resnet(depth=18, width=0.25), "imagenet")


def test_saved_files_are_readable_by_others(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the result has a plain file's mode."""
    import os
    import stat

    from napari_wsl_al.core.models.checkpoint import save_checkpoint
    from napari_wsl_al.core.models.factory import ModelConfig, build_model

    config = ModelConfig(arch="cam-avg", classes=("a", "b"), width=0.125)
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "model.pt", build_model(config), config)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
