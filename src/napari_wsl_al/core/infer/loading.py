"""Turn a model choice ("default", a checkpoint path, or a factory callable) into a model on a device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..device import resolve_device
from ..models.base import WslModel

#: The name that selects the shipped default model.
DEFAULT_MODEL = "default"

ModelChoice = str | Path | Callable[[], WslModel]


def load_inference_model(choice: ModelChoice, device: str | torch.device | None = "auto") -> WslModel:
    """The model for inference, in eval mode on ``device``.

    Parameters
    ----------
    choice : "default", str, Path or callable
        ``"default"``: the shipped checkpoint; a path: a checkpoint file written by
        ``save_checkpoint``; a callable: called with no argument, it returns a model (tests,
        distributed workers).
    device : str or torch.device, optional
        ``"auto"``/None: the best available.

    Raises
    ------
    CheckpointError
        Missing, damaged or incompatible checkpoint (the message names the file).
    """
    target = resolve_device(device)
    if callable(choice):
        model = choice()
    elif str(choice) == DEFAULT_MODEL:
        from ..models.checkpoint import load_default_model

        model = load_default_model(target)
    else:
        from ..models.checkpoint import load_checkpoint

        model = load_checkpoint(Path(choice), target)[0]
    return model.to(target).eval()
