"""Matthews correlation coefficient loss for binary segmentation (https://arxiv.org/abs/2010.13454)."""

from __future__ import annotations

import torch
from torch import nn

from segfold.losses._checks import check_pair


class MCCLoss(nn.Module):
    """1 - MCC computed from soft TP / FP / FN / TN pooled over the whole batch (binary only).

    Each soft count has `eps` added. As in segmentation_models_pytorch, `y_pred` is taken as
    probabilities by default; `from_logits=True` (an extension, the default of the `mcc` registry entry)
    applies a sigmoid first.

    Example:
        >>> loss = MCCLoss(from_logits=True)
        >>> value = loss(logits, masks)
    """

    def __init__(self, eps: float = 1e-5, from_logits: bool = False):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"MCCLoss: eps must be > 0, got {eps}")
        self.eps = eps
        self.from_logits = from_logits

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        y_true = check_pair("MCCLoss", "binary", y_pred, y_true)
        prob = torch.sigmoid(y_pred) if self.from_logits else y_pred
        target = y_true.to(prob.dtype)
        tp = (prob * target).sum() + self.eps
        tn = ((1.0 - prob) * (1.0 - target)).sum() + self.eps
        fp = (prob * (1.0 - target)).sum() + self.eps
        fn = ((1.0 - prob) * target).sum() + self.eps
        numerator = tp * tn - fp * fn
        denominator = torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return 1.0 - numerator / denominator
