"""ResNet feature extractors in plain torch, with torchvision-compatible parameter names.

The modules are named exactly as in ``torchvision.models.resnet`` (``conv1``, ``bn1``,
``layer1`` .. ``layer4`` made of ``BasicBlock``/``Bottleneck`` with ``conv1``/``bn1``/``conv2``/
``bn2``(/``conv3``/``bn3``)/``downsample.0``/``downsample.1``), so an ImageNet state dict saved
by torchvision loads into a ``width=1.0`` backbone (its ``fc`` is dropped: the heads of this
package replace it). ``width`` multiplies every channel count, which gives tiny CPU models for
tests without changing any name.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, WeightsUnavailableError

logger = logging.getLogger(__name__)

#: torchvision's ImageNet weights (``IMAGENET1K_V1``) per depth.
IMAGENET_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}

#: Blocks per stage for each supported depth.
_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}

#: Prefixes stripped from state-dict keys (DataParallel, wrappers that store the backbone).
_STRIPPED_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


def _scaled(channels: int, width: float) -> int:
    """Channel count ``channels * width``, at least 1."""
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 convolutions with a residual connection (ResNet-50, torchvision v1.5)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk (no ``fc``): stem, four stages, optional feature dropout.

    Parameters
    ----------
    depth : {18, 34, 50}
        Number of layers.
    width : float
        Multiplier of every channel count (1.0 = torchvision's ResNet).
    dropout : float
        Probability of ``Dropout2d`` on the stride-16 and stride-32 maps (0 disables it). Kept
        active at inference by :func:`enable_mc_dropout` for MC-dropout uncertainty.
    in_channels : int
        Channels of the input images.
    output_stride : {32, 16, 8}
        Input pixels per pixel of the last feature map. Below 32, layer4 (and for 8 also
        layer3) keeps its input resolution and dilates its convolutions, as torchvision's
        ``replace_stride_with_dilation`` does: finer CAMs, the same parameters (torchvision
        weights still load), more computation in the last stages.

    Attributes
    ----------
    out_channels : int
        Channels of the last map returned by :meth:`features`.
    pyramid_channels : tuple of int
        Channels of the layer1..layer4 maps returned by :meth:`features_pyramid`.
    output_stride : int
        Input pixels per pixel of the map returned by :meth:`features`.
    """

    output_stride = 32

    def __init__(
        self,
        depth: int = 18,
        width: float = 1.0,
        dropout: float = 0.0,
        in_channels: int = 3,
        output_stride: int = 32,
    ):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride!r}")
        if depth not in _STAGES:
            raise ValueError(f"ResNet depth must be one of {sorted(_STAGES)}, not {depth!r}")
        if width <= 0:
            raise ValueError(f"width must be positive, not {width!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout!r}")
        kind, blocks = _STAGES[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.width, self.dropout_p = depth, width, dropout
        self._in = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, self._in, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self._in)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        planes = [_scaled(p, width) for p in (64, 128, 256, 512)]
        # Below stride 32, the last stages keep their resolution and dilate their 3x3
        # convolutions instead (torchvision's replace_stride_with_dilation): same parameters.
        self.output_stride = output_stride
        self._dilation = 1
        self.layer1 = self._make_stage(block, planes[0], blocks[0], stride=1)
        self.layer2 = self._make_stage(block, planes[1], blocks[1], stride=2)
        self.layer3 = self._make_stage(block, planes[2], blocks[2], 2, dilate=output_stride == 8)
        self.layer4 = self._make_stage(block, planes[3], blocks[3], 2, dilate=output_stride < 32)
        self.pyramid_channels = tuple(p * block.expansion for p in planes)
        self.out_channels = self.pyramid_channels[-1]
        self.feature_dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self._init_weights()

    def _make_stage(
        self, block, planes: int, count: int, stride: int, dilate: bool = False
    ) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._in != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._in, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._in, planes, stride, downsample, dilation=previous_dilation)]
        self._in = planes * block.expansion
        layers += [block(self._in, planes, dilation=self._dilation) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def features_pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The layer1..layer4 maps, at strides 4, 8, 16 and 32 (or less when dilated); dropout
        on the last two."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.feature_dropout(self.layer3(c2))
        c4 = self.feature_dropout(self.layer4(c3))
        return c1, c2, c3, c4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``(B, out_channels, H/s, W/s)``, ``s`` = :attr:`output_stride`."""
        return self.features_pyramid(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`features` (so forward hooks on the backbone see the last map)."""
        return self.features(x)


def resnet(
    depth: int = 18,
    width: float = 1.0,
    dropout: float = 0.0,
    in_channels: int = 3,
    output_stride: int = 32,
) -> ResNet:
    """Build a :class:`ResNet` trunk; see its parameters."""
    return ResNet(
        depth=depth,
        width=width,
        dropout=dropout,
        in_channels=in_channels,
        output_stride=output_stride,
    )


_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode except its dropout modules (MC-dropout at inference).

    Batch-norm keeps its running statistics; only dropout stays stochastic. Returns ``model``.
    Modules that apply dropout functionally with ``self.training`` (the WILDCAT head) follow
    their own ``train()`` state: :class:`~napari_wsl_al.core.models.pooling.WildcatPool`
    exposes an ``nn.Dropout`` module, so it is switched on too.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, _DROPOUT_TYPES):
            module.train()
    return model


def count_dropout_modules(model: nn.Module) -> int:
    """Number of dropout modules with a non-zero probability (0 means MC-dropout is moot)."""
    return sum(1 for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0)


@dataclass
class WeightsReport:
    """What :func:`load_backbone_weights` did.

    Attributes
    ----------
    source : str
        The file or ``"imagenet"``.
    loaded : int
        Number of tensors copied into the backbone.
    missing_keys : list of str
        Backbone tensors absent from the source (left at their initial values).
    unexpected_keys : list of str
        Source tensors with no place in the backbone (``fc.*`` is dropped silently).
    """

    source: str
    loaded: int = 0
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cleaned = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(
            "backbone weights file not found",
            path=path,
            hint="pass an existing .pth/.pt/.safetensors file or 'imagenet'",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for damaged files
        raise CheckpointError(
            f"cannot read backbone weights ({type(exc).__name__}: {exc})",
            path=path,
            hint="the file is damaged or not a tensor state dict",
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            "not a state dict of tensors",
            path=path,
            hint="save the weights with torch.save(model.state_dict(), path)",
        )
    return state


def _download_imagenet(backbone: ResNet) -> dict[str, torch.Tensor]:
    if backbone.width != 1.0 or backbone.depth not in IMAGENET_URLS:
        raise WeightsUnavailableError(
            f"ImageNet weights exist only for width=1.0 ResNet-{sorted(IMAGENET_URLS)}, "
            f"not for depth={backbone.depth} width={backbone.width}",
            hint="use width=1.0, or train from scratch (no backbone weights)",
        )
    url = IMAGENET_URLS[backbone.depth]
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, weights_only=True
        )
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError, OSError) as exc:
        name = url.rsplit("/", 1)[-1]
        raise WeightsUnavailableError(
            f"cannot download ImageNet weights from {url}: the machine looks offline ({exc})",
            hint=f"download {name} on a connected machine and pass its local path instead of "
            f"'imagenet' (a torchvision .pth, or a .safetensors file)",
        ) from exc


def load_backbone_weights(backbone: ResNet, source: str | Path) -> WeightsReport:
    """Copy pretrained weights into ``backbone`` (in place).

    Parameters
    ----------
    backbone : ResNet
        The trunk to fill.
    source : str or Path
        ``"imagenet"`` for torchvision's ImageNet weights (downloaded once into the torch hub
        cache; ``width=1.0`` only), or a local ``.pth``/``.pt``/``.safetensors`` state dict with
        torchvision names. Prefixes ``module.``/``backbone.``/``encoder.``/``model.`` are
        stripped; ``fc.*`` is dropped.

    Returns
    -------
    WeightsReport
        Counts of loaded, missing and unexpected tensors (also logged as a warning).

    Raises
    ------
    WeightsUnavailableError
        ``"imagenet"`` could not be downloaded (offline), or no such weights exist.
    CheckpointError
        The file is missing, unreadable, or a tensor's shape does not match the backbone
        (another depth or width); the message names the file.
    """
    path = None
    if isinstance(source, str) and source.lower() == "imagenet":
        state = _download_imagenet(backbone)
    else:
        path = Path(source)
        state = _read_state_dict(path)
    state = {k: v for k, v in _strip_prefixes(state).items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    report = WeightsReport(source=str(source))
    mismatched = [
        f"{key}: file {tuple(value.shape)} vs backbone {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and own[key].shape != value.shape
    ]
    if mismatched:
        raise CheckpointError(
            f"backbone weights do not fit ResNet-{backbone.depth} width={backbone.width} "
            f"({len(mismatched)} shape mismatches, first: {mismatched[0]})",
            path=path if path is not None else str(source),
            hint="pick the depth/width the weights were trained with",
        )
    report.unexpected_keys = sorted(k for k in state if k not in own)
    report.missing_keys = sorted(
        k for k in own if k not in state and not k.endswith("num_batches_tracked")
    )
    usable = {k: v for k, v in state.items() if k in own}
    backbone.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if report.loaded == 0:
        raise CheckpointError(
            "no backbone tensor found in the weights",
            path=path or str(source),
            hint="expected torchvision ResNet names such as 'layer1.0.conv1.weight'",
        )
    if report.missing_keys or report.unexpected_keys:
        logger.warning(
            "backbone weights %s: %d loaded, %d missing (%s), %d unexpected (%s)",
            source,
            report.loaded,
            len(report.missing_keys),
            ", ".join(report.missing_keys[:5]),
            len(report.unexpected_keys),
            ", ".join(report.unexpected_keys[:5]),
        )
    return report
