"""Binary and multiclass cross-entropy with label smoothing and an ignore label.

Semantics of segmentation_models_pytorch: with `reduction="mean"` ignored pixels contribute 0 but stay
in the count (the mean is over ALL elements), so the value matches that library, not
`torch.nn.functional.cross_entropy(ignore_index=...)` which divides by the kept pixels only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfold.losses._checks import check_pair
from segfold.losses.functional import label_smoothed_nll_loss, reduce_loss

REDUCTIONS = ("mean", "sum", "none")


def _as_buffer(owner: str, name: str, value: torch.Tensor | Sequence[float] | float | None) -> torch.Tensor | None:
    if value is None:
        return None
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if torch.isnan(tensor).any() or (tensor < 0).any():
        raise ValueError(f"{owner}: {name} must hold finite values >= 0, got {tensor.tolist()}")
    return tensor


def _check_reduction(owner: str, reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction={reduction!r} is not one of {list(REDUCTIONS)}")
    return reduction


def _check_smoothing(owner: str, smooth_factor: float | None) -> float:
    factor = 0.0 if smooth_factor is None else float(smooth_factor)
    if not 0.0 <= factor < 1.0:
        raise ValueError(f"{owner}: smooth_factor must be in [0, 1) or None, got {smooth_factor}")
    return factor


class SoftBCEWithLogitsLoss(nn.Module):
    """BCE on logits with label smoothing and an ignore label.

    Targets become `(1 - y) * s + y * (1 - s)` with `s = smooth_factor`; elements whose target equals
    `ignore_index` contribute 0. `weight` and `pos_weight` broadcast against `y_pred` as in
    `torch.nn.BCEWithLogitsLoss` (per-class values for (N, C, H, W) go in as shape (C, 1, 1)).
    A binary target (N, H, W) is accepted for (N, 1, H, W) logits.

    Example:
        >>> loss = SoftBCEWithLogitsLoss(smooth_factor=0.05)
        >>> value = loss(logits, masks)
    """

    def __init__(
        self,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
        smooth_factor: float | None = None,
        pos_weight: torch.Tensor | Sequence[float] | float | None = None,
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.reduction = _check_reduction("SoftBCEWithLogitsLoss", reduction)
        self.smooth_factor = _check_smoothing("SoftBCEWithLogitsLoss", smooth_factor)
        self.register_buffer("weight", _as_buffer("SoftBCEWithLogitsLoss", "weight", weight))
        self.register_buffer("pos_weight", _as_buffer("SoftBCEWithLogitsLoss", "pos_weight", pos_weight))

    def _check_broadcast(self, y_pred: torch.Tensor) -> None:
        for name in ("weight", "pos_weight"):
            value = getattr(self, name)
            if value is not None and value.dim() == 1 and value.numel() > 1 and y_pred.dim() > 2:
                raise ValueError(
                    f"SoftBCEWithLogitsLoss: {name} of shape ({value.numel()},) would broadcast along the last "
                    f"(width) axis of y_pred {tuple(y_pred.shape)}; pass per-class values with shape "
                    f"({value.numel()}, 1, 1)"
                )

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        mode = "binary" if y_pred.dim() >= 2 and y_pred.shape[1] == 1 else "multilabel"
        y_true = check_pair("SoftBCEWithLogitsLoss", mode, y_pred, y_true, self.ignore_index)
        self._check_broadcast(y_pred)
        target = y_true.to(y_pred.dtype)
        if self.smooth_factor:
            target = (1.0 - target) * self.smooth_factor + target * (1.0 - self.smooth_factor)
        keep = None if self.ignore_index is None else y_true != self.ignore_index
        if keep is not None:
            target = torch.where(keep, target, torch.zeros_like(target))
        loss = F.binary_cross_entropy_with_logits(
            y_pred, target, self.weight, reduction="none", pos_weight=self.pos_weight
        )
        if keep is not None:
            loss = loss * keep.to(loss.dtype)
        return reduce_loss(loss, self.reduction)


class SoftCrossEntropyLoss(nn.Module):
    """Cross-entropy with label smoothing: (1 - s) * NLL + s / C * sum_c(-log p_c).

    `smooth_factor=None` (or 0) is plain cross-entropy (segmentation_models_pytorch 0.5.0 raises a TypeError
    on None). `reduction="none"` returns (N, ...) per pixel (the reference keeps a singleton class axis).

    Example:
        >>> loss = SoftCrossEntropyLoss(smooth_factor=0.1, ignore_index=255)
        >>> value = loss(logits, labels)  # (N, C, H, W), (N, H, W) long
    """

    def __init__(
        self,
        reduction: str = "mean",
        smooth_factor: float | None = None,
        ignore_index: int | None = -100,
        dim: int = 1,
    ):
        super().__init__()
        self.reduction = _check_reduction("SoftCrossEntropyLoss", reduction)
        self.smooth_factor = _check_smoothing("SoftCrossEntropyLoss", smooth_factor)
        self.ignore_index = ignore_index
        self.dim = dim

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if self.dim != 1 and isinstance(y_pred, torch.Tensor):
            y_pred = y_pred.movedim(self.dim, 1)
        check_pair("SoftCrossEntropyLoss", "multiclass", y_pred, y_true, self.ignore_index)
        log_prob = F.log_softmax(y_pred, dim=1)
        return label_smoothed_nll_loss(log_prob, y_true.long(), self.smooth_factor, self.ignore_index, self.reduction)
