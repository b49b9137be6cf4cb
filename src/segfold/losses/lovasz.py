"""Lovasz losses (https://arxiv.org/abs/1705.08790): hinge for binary/multilabel, softmax for multiclass.

- binary / multilabel: the Lovasz hinge on logits; every element of the batch (or of each image with
  `per_image`) is one binary problem (multilabel flattens all classes together, as in
  segmentation_models_pytorch).
- multiclass: the Lovasz-softmax on softmax probabilities, averaged over the classes present among the
  kept pixels; with `per_image`, averaged over images.
- `ignore_index` removes pixels whose target equals it; an image (or batch) with nothing left scores 0.
- `SymmetricLovaszLoss`: (hinge(x, y) + hinge(-x, 1 - y)) / 2, which rewards IoU of the background too
  (a common fine-tuning loss for IoU-scored competitions, e.g. TGS Salt).
"""

from __future__ import annotations

import torch
from torch import nn

from segfold.losses._checks import check_mode, check_pair
from segfold.losses.functional import lovasz_hinge_flat, lovasz_softmax_flat


def _kept(values: torch.Tensor, labels: torch.Tensor, ignore_index: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    values, labels = values.reshape(-1), labels.reshape(-1)
    if ignore_index is None:
        return values, labels
    keep = labels != ignore_index
    return values[keep], labels[keep]


def lovasz_hinge(
    logits: torch.Tensor, labels: torch.Tensor, per_image: bool = False, ignore_index: float | None = None
) -> torch.Tensor:
    """Binary Lovasz hinge of logits against 0/1 labels of the same shape (N, ...)."""
    if per_image:
        losses = [lovasz_hinge_flat(*_kept(x, y, ignore_index)) for x, y in zip(logits, labels, strict=True)]
        return torch.stack(losses).mean()
    return lovasz_hinge_flat(*_kept(logits, labels, ignore_index))


def lovasz_softmax(
    probas: torch.Tensor, labels: torch.Tensor, per_image: bool = False, ignore_index: int | None = None
) -> torch.Tensor:
    """Multiclass Lovasz-softmax of probabilities (N, C, ...) against class indices (N, ...)."""

    def flat(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = p.reshape(p.shape[0], p.shape[1], -1).permute(0, 2, 1).reshape(-1, p.shape[1])  # (N*P, C)
        y = y.reshape(-1)
        if ignore_index is not None:
            keep = y != ignore_index
            p, y = p[keep], y[keep]
        return lovasz_softmax_flat(p, y.long())

    if per_image:
        losses = [flat(p.unsqueeze(0), y.unsqueeze(0)) for p, y in zip(probas, labels, strict=True)]
        return torch.stack(losses).mean()
    return flat(probas, labels)


class LovaszLoss(nn.Module):
    """Lovasz hinge (binary, multilabel) or Lovasz-softmax (multiclass) loss.

    `from_logits=False` means multiclass `y_pred` already holds probabilities (NOTE: segmentation_models_pytorch
    0.5.0 applies the softmax whatever `from_logits` says); the hinge of binary and multilabel modes works on
    logits only, so there it must stay True.

    Example:
        >>> loss = LovaszLoss("binary", per_image=True)
        >>> value = loss(logits, masks)
    """

    def __init__(self, mode: str, per_image: bool = False, ignore_index: int | None = None, from_logits: bool = True):
        super().__init__()
        self.mode = check_mode("LovaszLoss", mode)
        if not from_logits and mode != "multiclass":
            raise ValueError(
                f"LovaszLoss(mode={mode!r}): from_logits=False is only meaningful for multiclass; "
                "the Lovasz hinge takes logits"
            )
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.from_logits = from_logits

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        y_true = check_pair("LovaszLoss", self.mode, y_pred, y_true, self.ignore_index)
        if self.mode == "multiclass":
            probas = y_pred.softmax(dim=1) if self.from_logits else y_pred
            return lovasz_softmax(probas, y_true, self.per_image, self.ignore_index)
        return lovasz_hinge(y_pred, y_true, self.per_image, self.ignore_index)


class SymmetricLovaszLoss(nn.Module):
    """Symmetric Lovasz hinge: the mean of hinge(logits, y) and hinge(-logits, 1 - y), binary/multilabel.

    Example:
        >>> loss = SymmetricLovaszLoss(per_image=True)
        >>> value = loss(logits, masks)
    """

    def __init__(self, mode: str = "binary", per_image: bool = False, ignore_index: int | None = None):
        super().__init__()
        self.mode = check_mode("SymmetricLovaszLoss", mode, ("binary", "multilabel"))
        self.per_image = per_image
        self.ignore_index = ignore_index

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        y_true = check_pair("SymmetricLovaszLoss", self.mode, y_pred, y_true, self.ignore_index)
        labels = y_true.to(y_pred.dtype)
        if self.ignore_index is not None:
            # NOTE: 1 - y would move the ignore value, so ignored pixels get -1, a value no label takes
            keep = y_true != self.ignore_index
            marker = torch.full_like(labels, -1.0)
            labels, flipped, ignore = torch.where(keep, labels, marker), torch.where(keep, 1.0 - labels, marker), -1.0
        else:
            flipped, ignore = 1.0 - labels, None
        direct = lovasz_hinge(y_pred, labels, self.per_image, ignore)
        inverse = lovasz_hinge(-y_pred, flipped, self.per_image, ignore)
        return (direct + inverse) / 2.0
