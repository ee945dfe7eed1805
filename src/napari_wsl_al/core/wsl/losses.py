"""Loss terms of the weakly-supervised models (Max-Min uncertainty, min-max entropy), as functions.

References are to ``wsl-histology-max-min-uncertainty`` (Belharbi et al., "Deep interpretable
classification and weakly-supervised segmentation of histology images via Max-Min
uncertainty"): Eq. 1-12 and appendix A. Every function takes logits (not probabilities) for
numerical stability; ``reduction`` is ``"mean"`` (over the batch) or ``"none"`` (per sample).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

#: Background regularisers R(p-) accepted by :func:`background_regularizer` (Eq. 8 and App. A).
REGULARIZERS = ("eem", "sem", "kl-p-q", "kl-q-p")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def entropy(logits: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Shannon entropy ``H(p) = -p^T log p`` of ``p = softmax(logits)`` over dim 1 (Sec. 2)."""
    log_p = F.log_softmax(logits, dim=1)
    return _reduce(-(log_p.exp() * log_p).sum(dim=1), reduction)


def eem_loss(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Explicit entropy maximisation: ``-H(p-)`` (Eq. 4); minimal, ``-log c``, at the uniform."""
    return _reduce(-entropy(logits), reduction)


def sem_loss(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Surrogate entropy maximisation: cross-entropy to the uniform ``H(q, p-)`` (Eq. 6).

    ``H(q, p) = -(1/c) sum_l log p_l``; minimal, ``log c``, at the uniform distribution.
    """
    return _reduce(-F.log_softmax(logits, dim=1).mean(dim=1), reduction)


def kl_to_uniform(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``KL(p || q) = -H(p) + log c`` with ``q`` uniform (Eq. 5, App. A.1); 0 at the uniform."""
    c = logits.shape[1]
    return _reduce(-entropy(logits) + math.log(c), reduction)


def kl_from_uniform(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``KL(q || p) = H(q, p) - log c`` with ``q`` uniform (App. A.2); 0 at the uniform."""
    c = logits.shape[1]
    return _reduce(sem_loss(logits, reduction="none") - math.log(c), reduction)


def background_regularizer(
    logits: torch.Tensor, kind: str = "sem", reduction: str = "mean"
) -> torch.Tensor:
    """Max-uncertainty term ``R(p-)`` of Eq. 7-8 on the classifier's logits for ``X-``.

    Parameters
    ----------
    kind : {"eem", "sem", "kl-p-q", "kl-q-p"}
        ``-H(p-)`` (EEM, Eq. 4), ``H(q, p-)`` (SEM, Eq. 6), or the exact KL divergences
        ``KL(p-||q)`` / ``KL(q||p-)`` that equal EEM / SEM up to the constant ``log c``.
    """
    functions = {
        "eem": eem_loss,
        "sem": sem_loss,
        "kl-p-q": kl_to_uniform,
        "kl-q-p": kl_from_uniform,
    }
    if kind not in functions:
        raise ValueError(f"unknown background regulariser {kind!r}; expected one of {REGULARIZERS}")
    return functions[kind](logits, reduction=reduction)


def log_barrier(z: torch.Tensor, t: float) -> torch.Tensor:
    """Extended log-barrier ``psi_t(z)`` for the constraint ``z <= 0`` (Kervadec et al. 2019c).

    ``-(1/t) log(-z)`` if ``z <= -1/t^2``, else ``t z - (1/t) log(1/t^2) + 1/t``: the standard
    barrier where it is steep enough, continued linearly (C^1) so that infeasible ``z`` gets a
    finite loss and gradient. Element-wise.
    """
    if t <= 0:
        raise ValueError(f"log-barrier t must be positive, not {t!r}")
    threshold = -1.0 / t**2
    inside = z <= threshold
    safe = torch.where(inside, -z, torch.ones_like(z))  # keeps log() finite on both branches
    barrier = -torch.log(safe) / t
    linear = t * z - math.log(1.0 / t**2) / t + 1.0 / t
    return torch.where(inside, barrier, linear)


def mask_size_fractions(fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sizes ``s+`` and ``s- `` (Eq. 10-11) of ``M+`` and ``M- = 1 - M+`` as fractions of the image.

    ``fg`` is ``(B, 1, H, W)`` in ``[0, 1]``; the sums of Eq. 10-11 are divided by ``|Omega|``
    so that the barrier's scale does not depend on the image size.
    """
    positive = fg.flatten(1).mean(dim=1)
    return positive, 1.0 - positive


def size_constraint_loss(fg: torch.Tensor, t: float, reduction: str = "mean") -> torch.Tensor:
    """Absolute size constraints (ASC) of Eq. 7: ``psi_t(-s+) + psi_t(-s-)``.

    With the extended log-barrier this is ``-(1/t)[log s+ + log s-]`` while both sizes exceed
    ``1/t^2``; it penalises masks that are almost empty or almost full.
    """
    positive, negative = mask_size_fractions(fg)
    return _reduce(log_barrier(-positive, t) + log_barrier(-negative, t), reduction)


def pseudo_binarize(mask: torch.Tensor, sigma: float = 0.15, omega: float = 5.0) -> torch.Tensor:
    """Sigmoid pseudo-binarisation ``1 / (1 + exp(-omega (M - sigma)))`` (Eq. 12)."""
    return torch.sigmoid(omega * (mask - sigma))


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rescale each ``(1, H, W)`` map of a ``(B, 1, H, W)`` batch to ``[0, 1]`` independently."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    high = maps.amax(dim=(2, 3), keepdim=True)
    return (maps - low) / (high - low).clamp_min(eps)


def maxmin_loss(
    logits_fg: torch.Tensor,
    logits_bg: torch.Tensor,
    labels: torch.Tensor,
    fg: torch.Tensor,
    t: float,
    background_weight: float = 1e-7,
    regularizer: str = "sem",
    use_size_constraint: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Max-Min objective of Eq. 7 (without the localiser's own cross-entropy).

    ``H(p, p+) + lambda R(p-) + psi_t(-s+) + psi_t(-s-)``.

    Parameters
    ----------
    logits_fg, logits_bg : Tensor
        ``(B, C)`` classifier logits on ``X+ = X * M+`` and ``X- = X * (1 - M+)``.
    labels : Tensor
        ``(B,)`` image classes.
    fg : Tensor
        ``(B, 1, H, W)`` pseudo-binary foreground mask ``M+``.
    t : float
        Log-barrier parameter.
    background_weight : float
        ``lambda`` (1e-7 on GlaS, Sec. 3.3).
    regularizer : str
        ``R``, see :func:`background_regularizer`.
    use_size_constraint : bool
        Include the ASC terms.

    Returns
    -------
    loss : Tensor
    parts : dict of str to float
        ``ce_fg``, ``bg_reg``, ``size`` (and the mean ``fg_size``) for logging.
    """
    ce_fg = F.cross_entropy(logits_fg, labels)
    bg = background_regularizer(logits_bg, regularizer)
    loss = ce_fg + background_weight * bg
    parts = {"ce_fg": float(ce_fg.detach()), "bg_reg": float(bg.detach())}
    if use_size_constraint:
        size = size_constraint_loss(fg, t)
        loss = loss + size
        parts["size"] = float(size.detach())
    parts["fg_size"] = float(fg.detach().mean())
    return loss, parts
