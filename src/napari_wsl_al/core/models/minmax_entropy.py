"""Min-max entropy model: localiser + classifier, recursive erasing with trust (training only).

Belharbi et al., "Min-max entropy for weakly supervised pointwise localization"
(``min-max-entropy-wsl-localization``), Sec. 3 and appendix A.1 (Eq. 10-12, Alg. 1). The
architecture is that of :class:`~napari_wsl_al.core.models.maxmin.MaxMinModel` (its
successor): a WILDCAT localiser whose posterior-weighted class maps give ``M+`` through a
sigmoid (Eq. 9), and a classifier on ``X+``/``X-``. The objective (Eq. 7) is
``H(p, p+) + H(q, p-) + H(p, p_M)``: confident on the decidable region, uniform (maximum
entropy) on the undecidable region, plus the localiser's own cross-entropy; there is no size
term. Inference is the plain localiser (and classifier on ``X+``): erasing happens only in
:meth:`MinMaxEntropyModel.training_step`.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..wsl.losses import background_regularizer, size_constraint_loss
from .backbones import ResNet
from .maxmin import MaxMinModel


class MinMaxEntropyModel(MaxMinModel):
    """Min-max entropy WSL with incremental recursive erasing (App. A.1).

    At training time, for ``h = 0 .. erase_depth``: the localiser reads the image erased so far
    ``X^(h)`` (``X^(h+1) = X^(h) * (1 - M+^(h))``, mask detached), and each sample gets a trust
    coefficient ``Gamma(h, i) = exp(-h / trust_slope) * Gamma_s(h, i)`` (Eq. 11) where
    ``Gamma_s = p_M(y_i | X^(h)_i)`` if the localiser still predicts the true class and its loss
    is not above the loss at ``h = 0``, else 0 for this and all later steps (Eq. 12, Eq. 10).
    Masks are accumulated as ``M_acc = max(M_acc, Gamma(h, i) M+^(h))`` (the extracted text of
    Eq. 10 is illegible; this is our reading), starting from ``M+^(0)`` itself so that the mask
    keeps learning while the localiser is still wrong; trusted steps also add
    ``Gamma(h, i) H(p, p_M^(h))`` to the loss (the gradient accumulation of Alg. 1 line 12).
    Erasing stops early once no sample is trusted. The classifier terms of Eq. 7 are computed
    on ``X * M_acc`` and ``X * (1 - M_acc)``. The whole recursion is one autograd graph (memory
    grows with ``erase_depth``; the paper's gradient accumulation avoids that at large sizes).

    Parameters
    ----------
    backbone : ResNet
        Shared trunk.
    classes : sequence of str
        Image classes.
    erase_depth : int
        Maximum recursion depth ``u`` (0 disables erasing).
    trust_slope : float
        ``sigma`` of Eq. 11: the larger, the slower the trust decays with depth.
    background_weight : float
        Weight of ``H(q, p-)`` (1 in Eq. 7).
    regularizer : str
        ``"sem"`` (``H(q, p-)``, Eq. 5) by default; see
        :func:`~napari_wsl_al.core.wsl.losses.background_regularizer`.
    **kwargs
        Passed to :class:`MaxMinModel` (WILDCAT, ``sigma``/``omega``, ...). The size
        constraint is off by default.
    """

    def __init__(
        self,
        backbone: ResNet,
        classes,
        *,
        erase_depth: int = 3,
        trust_slope: float = 10.0,
        background_weight: float = 1.0,
        regularizer: str = "sem",
        use_size_constraint: bool = False,
        **kwargs,
    ):
        super().__init__(
            backbone,
            classes,
            background_weight=background_weight,
            regularizer=regularizer,
            use_size_constraint=use_size_constraint,
            **kwargs,
        )
        if erase_depth < 0:
            raise ValueError(f"erase_depth must be >= 0, not {erase_depth!r}")
        if trust_slope <= 0:
            raise ValueError(f"trust_slope must be positive, not {trust_slope!r}")
        self.erase_depth = int(erase_depth)
        self.trust_slope = float(trust_slope)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        """Eq. 7 with recursive erasing (App. A.1, Alg. 1); see the class docstring."""
        batch = images.shape[0]
        rows = torch.arange(batch, device=images.device)
        _, localizer_logits, fg = self.localizer(images)
        localizer_ce = F.cross_entropy(localizer_logits, labels, reduction="none")
        base_loss = localizer_ce.detach()
        accumulated = fg
        trusted = torch.ones(batch, dtype=torch.bool, device=images.device)
        erasing_terms = []
        erased = images
        mask = fg
        steps = 0
        for depth in range(1, self.erase_depth + 1):
            erased = erased * (1.0 - mask.detach())
            _, step_logits, mask = self.localizer(erased)
            step_ce = F.cross_entropy(step_logits, labels, reduction="none")
            posterior = F.softmax(step_logits.detach(), dim=1)
            trusted = (
                trusted & (posterior.argmax(dim=1) == labels) & (step_ce.detach() <= base_loss)
            )
            if not bool(trusted.any()):
                break
            trust = math.exp(-depth / self.trust_slope) * posterior[rows, labels] * trusted.float()
            accumulated = torch.maximum(accumulated, trust.view(-1, 1, 1, 1) * mask)
            erasing_terms.append((trust * step_ce).mean())
            steps += 1
        logits_fg, logits_bg = self.masked_logits(images, accumulated)
        ce_fg = F.cross_entropy(logits_fg, labels)
        bg = background_regularizer(logits_bg, self.regularizer)
        ce_localizer = localizer_ce.mean()
        loss = ce_fg + self.background_weight * bg + self.localizer_weight * ce_localizer
        if erasing_terms:
            loss = loss + self.localizer_weight * torch.stack(erasing_terms).sum() / steps
        parts = {
            "ce_fg": float(ce_fg.detach()),
            "bg_reg": float(bg.detach()),
            "ce_localizer": float(ce_localizer.detach()),
            "erase_steps": float(steps),
            "fg_size": float(accumulated.detach().mean()),
        }
        if self.use_size_constraint:
            size = size_constraint_loss(accumulated, float(self.t))
            loss = loss + size
            parts["size"] = float(size.detach())
        parts["loss"] = float(loss.detach())
        return loss, parts
