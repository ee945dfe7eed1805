"""Backbones, pooling/CAM heads, the Max-Min and joint models, and checkpoints."""

from .backbones import (
    IMAGENET_URLS,
    ResNet,
    WeightsReport,
    count_dropout_modules,
    enable_mc_dropout,
    load_backbone_weights,
    resnet,
)
from .base import IMAGENET_MEAN, IMAGENET_STD, WslModel
from .cam_models import CamModel
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    default_checkpoint_path,
    load_checkpoint,
    load_default_model,
    save_checkpoint,
)
from .factory import ARCHITECTURES, DEFAULT_HEAD_PARAMS, ModelConfig, build_model
from .gradcam import grad_cam
from .joint import IGNORE_INDEX, JointModel, UNetDecoder
from .maxmin import MaxMinModel
from .minmax_entropy import MinMaxEntropyModel
from .pooling import (
    POOLING_KINDS,
    CamAvgPool,
    CamLsePool,
    CamMaxPool,
    DeepMilPool,
    WildcatPool,
    build_pooling,
    wildcat_spatial_pool,
)

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DEFAULT_HEAD_PARAMS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_URLS",
    "POOLING_KINDS",
    "CamAvgPool",
    "CamLsePool",
    "CamMaxPool",
    "CamModel",
    "DeepMilPool",
    "JointModel",
    "MaxMinModel",
    "MinMaxEntropyModel",
    "ModelConfig",
    "ResNet",
    "UNetDecoder",
    "WeightsReport",
    "WildcatPool",
    "WslModel",
    "build_model",
    "build_pooling",
    "count_dropout_modules",
    "default_checkpoint_path",
    "enable_mc_dropout",
    "grad_cam",
    "load_backbone_weights",
    "load_checkpoint",
    "load_default_model",
    "resnet",
    "save_checkpoint",
    "wildcat_spatial_pool",
]
