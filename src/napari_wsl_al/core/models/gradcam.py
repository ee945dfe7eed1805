"""Grad-CAM (Selvaraju et al. 2017) on the last backbone feature map, for any model here."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _last_feature_layer(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "layer4"):
        raise ValueError(
            "grad_cam needs a model with a ResNet `backbone` (attribute `backbone.layer4`)"
        )
    return backbone.layer4


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    class_index: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Grad-CAM maps ``(B, 1, H, W)`` in ``[0, 1]`` at the input size.

    ``ReLU(sum_k w_k A_k)`` with ``A`` the output of ``backbone.layer4`` and ``w_k`` the spatial
    mean of ``d logit_c / d A_k`` (Selvaraju et al., Eq. 1-2); upsampled bilinearly and min-max
    normalised per image. When the backbone runs more than once in a forward pass (Max-Min's
    classifier on ``X+``), the last pass, the one producing ``logits``, is used.

    Works from inference code: gradients are enabled locally, also inside
    ``torch.inference_mode()``. The model's train/eval mode is left as it is; parameters do not
    need ``requires_grad`` (a frozen classifier works) and no ``.grad`` is accumulated.

    Parameters
    ----------
    model : WslModel
        Any model whose ``forward`` returns ``"logits"`` and that has ``backbone.layer4``.
    images : Tensor
        ``(B, 3, H, W)`` normalised images.
    class_index : int or Tensor, optional
        Class explained, one for all or ``(B,)``; default: the predicted class.
    """
    layer = _last_feature_layer(model)
    activations: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: activations.append(output))
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            logits = model(x)["logits"]
            if not activations:
                raise RuntimeError("the backbone's layer4 did not run during forward")
            feature = activations[-1]
            batch = logits.shape[0]
            if class_index is None:
                target = logits.argmax(dim=1)
            else:
                target = torch.as_tensor(class_index, device=logits.device).long().expand(batch)
            score = logits[torch.arange(batch, device=logits.device), target].sum()
            (gradient,) = torch.autograd.grad(score, feature)
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * feature).sum(dim=1, keepdim=True)).detach()
    finally:
        handle.remove()
    cam = F.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)
    low = cam.amin(dim=(2, 3), keepdim=True)
    high = cam.amax(dim=(2, 3), keepdim=True)
    return ((cam - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)
