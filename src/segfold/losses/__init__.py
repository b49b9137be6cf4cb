"""Segmentation losses with segmentation_models_pytorch semantics, plus composites and a registry."""

from segfold.losses.composite import (
    AuxPresenceLoss,
    DeepSupervisionLoss,
    JointLoss,
    MaskedByPresenceLoss,
    masked_by_presence,
    presence_from_target,
)
from segfold.losses.cross_entropy import SoftBCEWithLogitsLoss, SoftCrossEntropyLoss
from segfold.losses.focal import FocalLoss
from segfold.losses.lovasz import LovaszLoss, SymmetricLovaszLoss
from segfold.losses.mcc import MCCLoss
from segfold.losses.region import DiceImageLoss, DiceLoss, JaccardLoss, TverskyLoss
from segfold.losses.registry import build_loss, get_loss, list_losses, register_loss

BINARY_MODE = "binary"
MULTICLASS_MODE = "multiclass"
MULTILABEL_MODE = "multilabel"

__all__ = [
    "BINARY_MODE",
    "MULTICLASS_MODE",
    "MULTILABEL_MODE",
    "AuxPresenceLoss",
    "DeepSupervisionLoss",
    "DiceImageLoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "JointLoss",
    "LovaszLoss",
    "MCCLoss",
    "MaskedByPresenceLoss",
    "SoftBCEWithLogitsLoss",
    "SoftCrossEntropyLoss",
    "SymmetricLovaszLoss",
    "TverskyLoss",
    "build_loss",
    "get_loss",
    "list_losses",
    "masked_by_presence",
    "presence_from_target",
    "register_loss",
]
