"""Model configuration (frozen, JSON round-trip) and the factory that builds models from it."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .backbones import resnet
from .base import IMAGENET_MEAN, IMAGENET_STD, WslModel
from .cam_models import CamModel
from .joint import JointModel
from .maxmin import MaxMinModel
from .minmax_entropy import MinMaxEntropyModel
from .pooling import build_pooling

#: Architectures accepted by :class:`ModelConfig`.
ARCHITECTURES = (
    "cam-avg",
    "cam-max",
    "cam-lse",
    "wildcat",
    "deepmil",
    "maxmin",
    "minmax-entropy",
    "joint",
)

#: Architectures whose foreground map is a class activation map (:class:`CamModel`).
CAM_ARCHITECTURES = ("cam-avg", "cam-max", "cam-lse", "wildcat", "deepmil")

_WILDCAT_GLAS = {"modalities": 5, "kmax": 0.3, "kmin": 0.0, "alpha": 0.6}

#: Head hyper-parameters and their defaults per architecture (paper values; see the modules).
DEFAULT_HEAD_PARAMS: dict[str, dict[str, Any]] = {
    "cam-avg": {},
    "cam-max": {},
    "cam-lse": {"r": 10.0},
    # WILDCAT with Max-Min's GlaS setting (Sec. 3.3 (a)); dropout on the class maps.
    "wildcat": {**_WILDCAT_GLAS, "dropout": 0.1},
    "deepmil": {"attention_dim": 128, "gated": True},
    # Max-Min, Sec. 3.3 (a) (GlaS).
    "maxmin": {
        **_WILDCAT_GLAS,
        "head_dropout": 0.1,
        "sigma": 0.15,
        "omega": 5.0,
        "background_weight": 1e-7,
        "regularizer": "sem",
        "use_size_constraint": True,
        "t_init": 5.0,
        "t_factor": 1.01,
        "t_max": 10.0,
        "localizer_weight": 1.0,
        "classifier_input_scale": 1.0,
        "inference_logits": "classifier",
        "separate_classifier_backbone": False,
        "fg_range": None,
    },
    # Min-max entropy, Sec. 3 and App. A.1 (values illegible in our copy are our choices).
    "minmax-entropy": {
        **_WILDCAT_GLAS,
        "head_dropout": 0.1,
        "sigma": 0.15,
        "omega": 5.0,
        "background_weight": 1.0,
        "regularizer": "sem",
        "erase_depth": 3,
        "trust_slope": 10.0,
        "localizer_weight": 1.0,
        "classifier_input_scale": 1.0,
        "inference_logits": "classifier",
        "separate_classifier_backbone": False,
    },
    # Joint cls+seg (WACV 2021, Fig. 3): WILDCAT classification head, U-Net decoder.
    "joint": {**_WILDCAT_GLAS, "head_dropout": 0.1, "decoder_dropout": 0.0},
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (saved in checkpoints and with every AL round).

    Attributes
    ----------
    arch : str
        One of :data:`ARCHITECTURES`.
    classes : tuple of str
        Image-level classes.
    depth : {18, 34, 50}
        ResNet depth (ResNet-18 in the papers).
    width : float
        Channel multiplier of the backbone (1.0 for ImageNet weights; 0.125-0.25 for tests).
    dropout : float
        Backbone feature dropout (MC-dropout).
    output_stride : {32, 16, 8}
        Input pixels per CAM pixel: 32 is the plain ResNet, 16 and 8 dilate the last stages.
    seg_classes : tuple of str
        Segmentation classes of the joint model, background first.
    mpp : float or None
        Microns per pixel of the training images.
    mean, std : tuple of float
        Input normalisation.
    head : dict
        Overrides of :data:`DEFAULT_HEAD_PARAMS` for ``arch``; unknown names are refused.
    colour_target : tuple of 6 float or None
        Colour normalisation (:mod:`~napari_wsl_al.core.models.colour`): every image's tissue
        is given these L*, a*, b* means and standard deviations before the model sees it;
        None: images as they are.
    fg_class : str or None
        CAM architectures: the image-level class whose activation map is the foreground map
        (e.g. the disease class, shown on every image whatever its predicted class); None:
        the predicted class's map, as in the papers.
    """

    arch: str = "maxmin"
    classes: tuple[str, ...] = ("benign", "malignant")
    depth: int = 18
    width: float = 1.0
    dropout: float = 0.0
    output_stride: int = 32
    seg_classes: tuple[str, ...] = ("background", "foreground")
    mpp: float | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    head: dict[str, Any] = field(default_factory=dict, hash=False)
    colour_target: tuple[float, ...] | None = None
    fg_class: str | None = None

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; expected one of {ARCHITECTURES}")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "seg_classes", tuple(str(c) for c in self.seg_classes))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "head", dict(self.head or {}))
        if self.colour_target is not None:
            target = tuple(float(v) for v in self.colour_target)
            if len(target) != 6 or not all(map(math.isfinite, target)) or min(target[3:]) <= 0:
                raise ValueError(
                    "colour_target needs six finite numbers: the L*, a*, b* means, then their "
                    f"standard deviations (> 0), not {self.colour_target}")
            object.__setattr__(self, "colour_target", target)
        if len(self.classes) < 1 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct names, got {self.classes}")
        if self.fg_class is not None:
            if self.arch not in CAM_ARCHITECTURES:
                raise ValueError(
                    f"fg_class applies to the CAM architectures {CAM_ARCHITECTURES}; a "
                    f"{self.arch!r} model has its own foreground map")
            if self.fg_class not in self.classes:
                raise ValueError(
                    f"fg_class {self.fg_class!r} is not one of the classes {list(self.classes)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values (RGB)")
        unknown = set(self.head) - set(DEFAULT_HEAD_PARAMS[self.arch])
        if unknown:
            raise ValueError(
                f"unknown head parameters {sorted(unknown)} for {self.arch!r}; "
                f"known: {sorted(DEFAULT_HEAD_PARAMS[self.arch])}"
            )

    def head_params(self) -> dict[str, Any]:
        """The architecture's default head parameters updated with :attr:`head`."""
        return {**copy.deepcopy(DEFAULT_HEAD_PARAMS[self.arch]), **self.head}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists)."""
        data = asdict(self)
        for key in ("classes", "seg_classes", "mean", "std"):
            data[key] = list(data[key])
        if self.colour_target is None:
            del data["colour_target"]  # so that older versions still read such configurations
        else:
            data["colour_target"] = list(self.colour_target)
        if self.fg_class is None:
            del data["fg_class"]  # likewise
        data["head"] = dict(self.head)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model configuration keys {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})


def build_model(config: ModelConfig) -> WslModel:
    """A freshly initialised model for ``config`` (no weights are downloaded).

    Load pretrained backbone weights afterwards with
    :func:`~napari_wsl_al.core.models.backbones.load_backbone_weights` on ``model.backbone``.
    The config is kept as ``model.config``.
    """
    params = config.head_params()
    common = dict(mean=config.mean, std=config.std, mpp=config.mpp)

    def trunk():
        return resnet(
            depth=config.depth,
            width=config.width,
            dropout=config.dropout,
            output_stride=config.output_stride,
        )

    backbone = trunk()
    arch = config.arch
    if arch in CAM_ARCHITECTURES:
        kind = {"cam-avg": "avg", "cam-max": "max", "cam-lse": "lse"}.get(arch, arch)
        pooling = build_pooling(kind, backbone.out_channels, len(config.classes), **params)
        model: WslModel = CamModel(backbone, pooling, config.classes, fg_class=config.fg_class,
                                   **common)
    elif arch in ("maxmin", "minmax-entropy"):
        separate = params.pop("separate_classifier_backbone")
        classifier_backbone = trunk() if separate else None
        model_class = MaxMinModel if arch == "maxmin" else MinMaxEntropyModel
        model = model_class(
            backbone, config.classes, classifier_backbone=classifier_backbone, **params, **common
        )
    else:
        model = JointModel(backbone, config.classes, config.seg_classes, **params, **common)
    model.config = config
    model.colour_target = config.colour_target
    return model
