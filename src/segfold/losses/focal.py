"""Sigmoid focal loss for binary, multilabel and (one-vs-rest) multiclass segmentation."""

from __future__ import annotations

import torch
from torch import nn

from segfold.losses._checks import check_mode, check_pair
from segfold.losses.functional import focal_loss_with_logits

REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    """Focal loss on logits (https://arxiv.org/abs/1708.02002).

    - binary / multilabel: one sigmoid focal loss over all elements (for multilabel, the mean over
      elements equals the mean of the per-class losses); pixels whose target is `ignore_index` are dropped.
    - multiclass: one-vs-rest sigmoid focal loss of each class channel against (target == class),
      over the non-ignored pixels, AVERAGED over the classes.
      NOTE: segmentation_models_pytorch 0.5.0 SUMS the per-class terms here, so its value is
      `num_classes` times ours; binary and multilabel values are identical.

    Args:
        mode: "binary", "multiclass" or "multilabel".
        alpha: weight of positives (negatives get 1 - alpha); None weighs both equally.
        gamma: focusing power (0 gives BCE).
        ignore_index: target value to drop.
        reduction: "mean", "sum" or "none" ("none" returns one value per kept element; in multiclass the
            per-class values averaged over classes).
        normalized: divide by the sum of focal terms.
        reduced_threshold: reduced focal loss threshold (https://arxiv.org/abs/1903.01347).

    Example:
        >>> loss = FocalLoss("multilabel", gamma=2.0)
        >>> value = loss(logits, masks)
    """

    def __init__(
        self,
        mode: str,
        alpha: float | None = None,
        gamma: float | None = 2.0,
        ignore_index: int | None = None,
        reduction: str | None = "mean",
        normalized: bool = False,
        reduced_threshold: float | None = None,
    ):
        super().__init__()
        self.mode = check_mode("FocalLoss", mode)
        reduction = "none" if reduction is None else reduction
        if reduction not in REDUCTIONS:
            raise ValueError(f"FocalLoss: reduction={reduction!r} is not one of {list(REDUCTIONS)}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"FocalLoss: alpha must be in [0, 1] or None, got {alpha}")
        if reduced_threshold is not None and not 0.0 < reduced_threshold <= 1.0:
            raise ValueError(f"FocalLoss: reduced_threshold must be in (0, 1] or None, got {reduced_threshold}")
        self.alpha = alpha
        self.gamma = 2.0 if gamma is None else gamma
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.normalized = normalized
        self.reduced_threshold = reduced_threshold

    def _focal(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss_with_logits(
            output,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            reduction=self.reduction,
            normalized=self.normalized,
            reduced_threshold=self.reduced_threshold,
        )

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        y_true = check_pair("FocalLoss", self.mode, y_pred, y_true, self.ignore_index)
        if self.mode != "multiclass":
            y_true = y_true.reshape(-1)
            y_pred = y_pred.reshape(-1)
            if self.ignore_index is not None:
                keep = y_true != self.ignore_index
                y_true, y_pred = y_true[keep], y_pred[keep]
            return self._focal(y_pred, y_true)
        num_classes = y_pred.shape[1]
        keep = None if self.ignore_index is None else y_true != self.ignore_index
        terms = []
        for cls in range(num_classes):
            cls_true = (y_true == cls).long()
            cls_pred = y_pred[:, cls, ...]
            if keep is not None:
                cls_true, cls_pred = cls_true[keep], cls_pred[keep]
            terms.append(self._focal(cls_pred, cls_true))
        return torch.stack(terms).mean(dim=0)
