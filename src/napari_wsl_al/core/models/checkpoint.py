"""Model checkpoints: atomic saving, safe loading with typed errors, the shipped default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..device import resolve_device
from ..errors import CheckpointError
from .base import WslModel
from .factory import ModelConfig, build_model

#: Value of the ``"format"`` key of every checkpoint written here.
CHECKPOINT_FORMAT = "napari-wsl-al-checkpoint"
#: Newest checkpoint layout this version reads and the one it writes.
CHECKPOINT_VERSION = 1


def _plain(value: Any) -> Any:
    """JSON round-trip of ``value`` (tuples become lists); ``ValueError`` if not JSON-able."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint 'extra' must be JSON-able: {exc}") from exc


def save_checkpoint(
    path: str | Path, model: WslModel, config: ModelConfig, extra: dict | None = None
) -> Path:
    """Write ``model``'s weights with its configuration, atomically.

    The file holds ``{"format": "napari-wsl-al-checkpoint", "version": 1, "config":
    config.to_dict(), "state_dict": ..., "extra": extra}``; it is written to a temporary file in
    the same folder and moved into place with ``os.replace``, so a crash never leaves a
    half-written checkpoint under ``path``.

    Parameters
    ----------
    path : str or Path
        Destination (``.pt``); parent folders are created.
    model : WslModel
        The model; tensors are saved on the CPU.
    config : ModelConfig
        Its configuration (what :func:`build_model` needs to rebuild it).
    extra : dict, optional
        JSON-able metadata: training parameters, data provenance, metrics.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": _plain(extra or {}),
    }
    atomic_write(path, lambda stream: torch.save(payload, stream), binary=True)
    return path


def _expected_config(expected: ModelConfig | dict | None) -> dict | None:
    if expected is None:
        return None
    if isinstance(expected, ModelConfig):
        return expected.to_dict()
    return dict(expected)


def _check_expected(path: Path, config: ModelConfig, expected: dict | None) -> None:
    if not expected:
        return
    if "arch" in expected and expected["arch"] != config.arch:
        raise CheckpointError(
            f"checkpoint is a {config.arch!r} model, not the expected {expected['arch']!r}",
            path=path,
            hint=f"choose a {expected['arch']} checkpoint or switch the architecture",
        )
    for key in ("classes", "seg_classes"):
        if key in expected and tuple(expected[key]) != getattr(config, key):
            if key == "seg_classes" and config.arch != "joint":
                continue
            raise CheckpointError(
                f"checkpoint {key} {list(getattr(config, key))} differ from the expected "
                f"{list(expected[key])}",
                path=path,
                hint="use a checkpoint trained on the same classes, or retrain",
            )


def load_checkpoint(
    path: str | Path,
    device: str | torch.device | None = "cpu",
    expected: ModelConfig | dict | None = None,
) -> tuple[WslModel, ModelConfig, dict]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or Path
        The checkpoint.
    device : str or torch.device, optional
        Where to put the model (``None``/``"auto"``: best available).
    expected : ModelConfig or dict, optional
        If given, its ``arch``, ``classes`` (and ``seg_classes`` for the joint model) must match.

    Returns
    -------
    model : WslModel
        In eval mode, on ``device``.
    config : ModelConfig
    extra : dict

    Raises
    ------
    CheckpointError
        Naming the file, with a hint: missing file; unreadable, truncated or not a checkpoint;
        written by a newer version; architecture or classes not as expected; weights that do
        not fit the configured architecture.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            "checkpoint file not found", path=path, hint="check the path or train a model first"
        )
    if not path.is_file():
        raise CheckpointError(
            "checkpoint path is not a file", path=path, hint="pass the .pt file itself"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise CheckpointError(
            "checkpoint cannot be read (permission denied)",
            path=path,
            hint="check the file's permissions",
        ) from exc
    except Exception as exc:  # pickle, zip and torch raise many types for damaged files
        raise CheckpointError(
            f"not a readable checkpoint ({type(exc).__name__}); the file is corrupt, truncated "
            f"or of another kind",
            path=path,
            hint="re-download or re-train it; a napari-wsl-al checkpoint is a .pt file "
            "written by save_checkpoint",
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            "not a napari-wsl-al checkpoint (no 'format' marker)",
            path=path,
            hint="a bare state dict can be loaded into a backbone with load_backbone_weights",
        )
    version = payload.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"checkpoint has an invalid version {version!r}", path=path, hint="the file is damaged"
        )
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version} is newer than this napari-wsl-al reads "
            f"({CHECKPOINT_VERSION})",
            path=path,
            hint="upgrade napari-wsl-al",
        )
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint configuration is invalid: {exc}",
            path=path,
            hint="the file is damaged or from an incompatible version",
        ) from exc
    _check_expected(path, config, _expected_config(expected))
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError("checkpoint has no state dict", path=path, hint="the file is damaged")
    model = build_model(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:200]
        raise CheckpointError(
            f"weights do not fit a {config.arch!r} ResNet-{config.depth} "
            f"width={config.width} model ({detail})",
            path=path,
            hint="the checkpoint was saved for another architecture or is damaged",
        ) from exc
    extra = payload.get("extra") or {}
    model.to(resolve_device(device))
    model.eval()
    return model, config, dict(extra)


def default_checkpoint_path() -> Path:
    """Where the shipped default model lives: ``napari_wsl_al/models/default.pt``."""
    import napari_wsl_al

    return Path(napari_wsl_al.__file__).parent / "models" / "default.pt"


def load_default_model(device: str | torch.device | None = None) -> WslModel:
    """The shipped default model, in eval mode on ``device`` (``None``: best available).

    Raises
    ------
    CheckpointError
        The default checkpoint is absent (e.g. a source checkout without it) or unreadable.
    """
    path = default_checkpoint_path()
    if not path.is_file():
        raise CheckpointError(
            "the default model checkpoint is not installed",
            path=path,
            hint="reinstall napari-wsl-al, train one with `napari-wsl-al train-wsl`, or open a "
            "checkpoint file",
        )
    model, _, _ = load_checkpoint(path, device=device)
    return model
