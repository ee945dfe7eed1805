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


#: ``fg_class`` value that shows each image's predicted class's map (the papers' protocol).
PREDICTED_CLASS = "predicted"


def set_foreground_class(model: WslModel, fg_class: str) -> WslModel:
    """Make ``model`` (a CAM model) show ``fg_class``'s map as its foreground on every image,
    or each image's predicted class's map for :data:`PREDICTED_CLASS`; the weights are not
    touched. Returns ``model``.

    Raises
    ------
    ValueError
        ``model`` has its own foreground mask (Max-Min, the joint model), or ``fg_class`` is
        not one of its classes; the message says what to choose.
    """
    if not hasattr(model, "fg_index"):
        raise ValueError(
            f"a {type(model).__name__} model shows its own foreground mask, not a class's map: "
            "leave --fg-class out")
    classes = tuple(model.classes)
    if fg_class != PREDICTED_CLASS and fg_class not in classes:
        raise ValueError(
            f"--fg-class {fg_class!r} is not one of the model's classes ({', '.join(classes)}) "
            f"nor {PREDICTED_CLASS!r}")
    name = None if fg_class == PREDICTED_CLASS else fg_class
    model.fg_index = None if name is None else classes.index(name)
    config = getattr(model, "config", None)
    if config is not None:
        model.config = config.replace(fg_class=name)
    return model


def load_with_foreground_class(choice: ModelChoice, fg_class: str,
                               device: str | torch.device | None = "auto") -> WslModel:
    """:func:`load_inference_model` then :func:`set_foreground_class` (a module-level
    function, so that ``functools.partial(load_with_foreground_class, choice, fg_class)`` is a
    picklable model choice for distributed workers)."""
    return set_foreground_class(load_inference_model(choice, device), fg_class)
