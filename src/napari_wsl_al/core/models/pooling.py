"""Pooling heads: features ``(B, D, h, w)`` to class activation maps and image-level logits.

Each head returns ``(cams, logits)`` with ``cams`` of shape ``(B, C, h, w)`` (class scores per
location) and ``logits`` of shape ``(B, C)``. These are the WSL baselines of Max-Min
(``wsl-histology-max-min-uncertainty``, Sec. 3.2 (b)): CAM-Avg (Zhou et al. 2016), CAM-Max
(Oquab et al. 2015), CAM-LSE (Pinheiro & Collobert 2015), WILDCAT (Durand et al. 2017; the
pooling Max-Min itself uses, Sec. 3.3) and Deep MIL attention (Ilse et al. 2018).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class CamAvgPool(nn.Module):
    """CAM-Avg: a 1x1 convolution to ``C`` maps, then global average pooling."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def pool(self, cams: torch.Tensor) -> torch.Tensor:
        """Spatial pooling of ``(B, C, h, w)`` maps to ``(B, C)`` scores."""
        return cams.mean(dim=(2, 3))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.classifier(features)
        return cams, self.pool(cams)


class CamMaxPool(CamAvgPool):
    """CAM-Max: a 1x1 convolution, then global max pooling."""

    def pool(self, cams: torch.Tensor) -> torch.Tensor:
        return cams.amax(dim=(2, 3))


class CamLsePool(CamAvgPool):
    """CAM-LSE: a 1x1 convolution, then log-sum-exp pooling.

    ``s_c = (1/r) log( (1/hw) sum_z exp(r * cam_c(z)) )``: the mean for ``r -> 0``, the max for
    ``r -> inf`` (Pinheiro & Collobert 2015, Eq. 2).

    Parameters
    ----------
    r : float
        Sharpness (default 10).
    """

    def __init__(self, in_channels: int, num_classes: int, r: float = 10.0):
        super().__init__(in_channels, num_classes)
        if r <= 0:
            raise ValueError(f"LSE sharpness r must be positive, not {r!r}")
        self.r = float(r)

    def pool(self, cams: torch.Tensor) -> torch.Tensor:
        flat = cams.flatten(2)
        return (torch.logsumexp(self.r * flat, dim=2) - math.log(flat.shape[2])) / self.r


def _region_count(k: float, locations: int) -> int:
    """Number of locations selected by ``k``: a fraction in ``(0, 1)`` or a count ``>= 1``."""
    if k <= 0:
        return 0
    if k < 1:
        return max(1, int(round(k * locations)))
    return min(int(round(k)), locations)


def wildcat_spatial_pool(
    maps: torch.Tensor, kmax: float, kmin: float, alpha: float
) -> torch.Tensor:
    """WILDCAT spatial pooling of ``(B, C, h, w)`` maps to ``(B, C)`` scores.

    ``s_c = mean(top-kmax values of map c) + alpha * mean(bottom-kmin values of map c)``
    (Durand et al. 2017, Eq. 2; used by Max-Min, Sec. 2 and 3.3). ``kmax``/``kmin`` are fractions
    of the locations when below 1, counts otherwise; ``kmin = 0`` drops the negative-evidence term.
    """
    flat = maps.flatten(2)
    locations = flat.shape[2]
    n_max = max(1, _region_count(kmax, locations))
    n_min = _region_count(kmin, locations)
    ordered, _ = flat.sort(dim=2, descending=True)
    scores = ordered[..., :n_max].mean(dim=2)
    if n_min > 0 and alpha != 0:
        scores = scores + alpha * ordered[..., locations - n_min :].mean(dim=2)
    return scores


class WildcatPool(nn.Module):
    """WILDCAT head: ``M`` modalities per class, class-wise average, top/bottom-k pooling.

    A 1x1 convolution gives ``C * M`` maps; the maps of each class are averaged over its
    ``M`` modalities into the class map (the CAM); dropout on the class maps (training only,
    not on the returned CAMs); then :func:`wildcat_spatial_pool`.

    Parameters
    ----------
    in_channels, num_classes : int
        Feature channels ``D`` and classes ``C``.
    modalities : int
        ``M`` (Max-Min on GlaS: 5, Sec. 3.3).
    kmax, kmin : float
        Fractions (``< 1``) or counts of the highest/lowest locations (GlaS: 0.3 and 0).
    alpha : float
        Weight of the negative evidence (0.6, Durand et al.; moot when ``kmin = 0``).
    dropout : float
        Dropout on the class maps before pooling (GlaS: 0.1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        modalities: int = 5,
        kmax: float = 0.3,
        kmin: float = 0.0,
        alpha: float = 0.6,
        dropout: float = 0.1,
    ):
        super().__init__()
        if modalities < 1:
            raise ValueError(f"modalities must be >= 1, not {modalities!r}")
        if kmax <= 0:
            raise ValueError(f"kmax must be positive, not {kmax!r}")
        self.num_classes, self.modalities = num_classes, modalities
        self.kmax, self.kmin, self.alpha = float(kmax), float(kmin), float(alpha)
        self.to_modalities = nn.Conv2d(in_channels, num_classes * modalities, 1)
        self.map_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` class maps: modality maps averaged per class."""
        modality_maps = self.to_modalities(features)
        b, _, h, w = modality_maps.shape
        return modality_maps.view(b, self.num_classes, self.modalities, h, w).mean(dim=2)

    def pool(self, cams: torch.Tensor) -> torch.Tensor:
        """Dropout (training) then WILDCAT spatial pooling of class maps."""
        return wildcat_spatial_pool(self.map_dropout(cams), self.kmax, self.kmin, self.alpha)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.class_maps(features)
        return cams, self.pool(cams)


class DeepMilPool(nn.Module):
    """Deep MIL attention pooling over locations (Ilse et al. 2018, Eq. 8-9).

    Each location ``k`` is an instance with embedding ``h_k``; attention weights
    ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))`` (gated) or
    ``softmax_k(w^T tanh(V h_k))``; bag embedding ``z = sum_k a_k h_k``; ``logits = W z + b``.
    Because the classifier is linear, ``logits = mean_k cams_k`` with
    ``cams_k = hw * a_k * (W h_k) + b``: each location's contribution to the decision (the
    per-location class score weighted by its attention), which is what is returned as CAMs.

    Parameters
    ----------
    in_channels, num_classes : int
        Feature channels and classes.
    attention_dim : int
        Hidden size ``L`` of the attention network (128 in Ilse et al.).
    gated : bool
        Gated attention (Ilse et al., Eq. 9), the better variant in their experiments.
    """

    def __init__(
        self, in_channels: int, num_classes: int, attention_dim: int = 128, gated: bool = True
    ):
        super().__init__()
        self.attention_v = nn.Conv2d(in_channels, attention_dim, 1)
        self.attention_u = nn.Conv2d(in_channels, attention_dim, 1) if gated else None
        self.attention_w = nn.Conv2d(attention_dim, 1, 1)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` attention weights, summing to 1 over the locations of each image."""
        hidden = torch.tanh(self.attention_v(features))
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(features))
        raw = self.attention_w(hidden)
        b, _, h, w = raw.shape
        return F.softmax(raw.view(b, 1, h * w), dim=2).view(b, 1, h, w)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.attention(features)
        h, w = features.shape[2:]
        bias = self.classifier.bias.view(1, -1, 1, 1)
        location_scores = self.classifier(features) - bias
        cams = (h * w) * weights * location_scores + bias
        logits = cams.mean(dim=(2, 3))
        return cams, logits


#: Pooling kinds accepted by :func:`build_pooling`.
POOLING_KINDS = ("avg", "max", "lse", "wildcat", "deepmil")


def build_pooling(kind: str, in_channels: int, num_classes: int, **params) -> nn.Module:
    """Pooling head by name (one of :data:`POOLING_KINDS`) with its hyper-parameters."""
    heads = {
        "avg": CamAvgPool,
        "max": CamMaxPool,
        "lse": CamLsePool,
        "wildcat": WildcatPool,
        "deepmil": DeepMilPool,
    }
    if kind not in heads:
        raise ValueError(f"unknown pooling {kind!r}; expected one of {POOLING_KINDS}")
    return heads[kind](in_channels, num_classes, **params)
