"""Region losses: Dice, Jaccard (IoU), Tversky pooled over the batch, and a per-image Dice.

Semantics (those of segmentation_models_pytorch, so a value means the same there and here):
- probabilities are `softmax` over classes (multiclass) or `sigmoid` (binary, multilabel) of the logits
  when `from_logits`;
- the soft score of each class is computed over all pixels of the whole batch (dims N, H, W);
- loss per class = 1 - score, or -log(max(score, eps)) with `log_loss`;
- a class with no true pixel in the batch has loss 0 and still counts in the mean over classes;
- `classes` keeps a subset of the classes before the mean; `class_weights` (an extension) turns the mean
  into sum(w_c * loss_c) / sum(w_c) over the kept classes;
- `ignore_index`: pixels whose target equals it are removed from both prediction and target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfold.losses._checks import check_class_weights, check_classes, check_mode, check_pair
from segfold.losses.functional import soft_dice_score, soft_jaccard_score, soft_tversky_score


def flatten_for_region(
    mode: str, y_pred: torch.Tensor, y_true: torch.Tensor, from_logits: bool, ignore_index: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and one-hot targets, both (N, C, P) with ignored pixels zeroed in both."""
    batch, num_classes = y_pred.shape[0], y_pred.shape[1]
    if from_logits:
        y_pred = F.log_softmax(y_pred, dim=1).exp() if mode == "multiclass" else F.logsigmoid(y_pred).exp()
    if mode == "multiclass":
        y_true = y_true.reshape(batch, -1)  # (N, P)
        y_pred = y_pred.reshape(batch, num_classes, -1)  # (N, C, P)
        if ignore_index is not None:
            keep = y_true != ignore_index
            y_pred = y_pred * keep.unsqueeze(1)
            onehot = F.one_hot((y_true * keep).long(), num_classes).permute(0, 2, 1) * keep.unsqueeze(1)
        else:
            onehot = F.one_hot(y_true.long(), num_classes).permute(0, 2, 1)  # (N, C, P)
        return y_pred, onehot.type_as(y_pred)
    channels = 1 if mode == "binary" else num_classes
    y_true = y_true.reshape(batch, channels, -1)
    y_pred = y_pred.reshape(batch, channels, -1)
    if ignore_index is not None:
        keep = y_true != ignore_index
        y_pred = y_pred * keep
        y_true = y_true * keep
    return y_pred, y_true.type_as(y_pred)


class _RegionLoss(nn.Module):
    """Shared body of Dice / Jaccard / Tversky: subclasses give `score(probs, target, dims)`."""

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        class_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.mode = check_mode(name, mode)
        self.classes = check_classes(name, classes, mode)
        weights = check_class_weights(name, class_weights)
        self.register_buffer("class_weights", weights, persistent=False)
        self.log_loss = log_loss
        self.from_logits = from_logits
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.eps = eps

    def score(self, probs: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def per_class_loss(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Loss per class (C,), before the class subset and the mean; absent classes are 0."""
        name = type(self).__name__
        y_true = check_pair(name, self.mode, y_pred, y_true, self.ignore_index)
        probs, target = flatten_for_region(self.mode, y_pred, y_true, self.from_logits, self.ignore_index)
        scores = self.score(probs, target, dims=(0, 2))
        loss = -torch.log(scores.clamp_min(self.eps)) if self.log_loss else 1.0 - scores
        present = target.sum(dim=(0, 2)) > 0
        return loss * present.to(loss.dtype)

    def aggregate(self, loss: torch.Tensor) -> torch.Tensor:
        """Mean (or `class_weights`-weighted mean) over the kept classes."""
        weights = self.class_weights
        if weights is not None and weights.numel() != loss.numel():
            raise ValueError(
                f"{type(self).__name__}: class_weights has {weights.numel()} entries but y_pred has "
                f"{loss.numel()} classes"
            )
        if self.classes is not None:
            if int(self.classes.max()) >= loss.numel():
                raise ValueError(
                    f"{type(self).__name__}: classes={self.classes.tolist()} has an index >= the "
                    f"{loss.numel()} classes of y_pred"
                )
            loss = loss[self.classes.to(loss.device)]
            weights = None if weights is None else weights[self.classes.to(weights.device)]
        if weights is None:
            return loss.mean()
        weights = weights.to(loss)
        return (loss * weights).sum() / weights.sum()

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.per_class_loss(y_pred, y_true))


class DiceLoss(_RegionLoss):
    """Soft Dice loss, per class pooled over the batch (see the module docstring for the exact rules).

    Example:
        >>> loss = DiceLoss("multilabel", from_logits=True)
        >>> value = loss(logits, masks)  # (N, C, H, W) logits and 0/1 masks
    """

    def score(self, probs: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return soft_dice_score(probs, target, self.smooth, self.eps, dims)


class JaccardLoss(_RegionLoss):
    """Soft Jaccard (IoU) loss, per class pooled over the batch; `ignore_index` is an extension.

    Example:
        >>> loss = JaccardLoss("multiclass")
        >>> value = loss(logits, labels)  # (N, C, H, W) logits and (N, H, W) class indices
    """

    def score(self, probs: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return soft_jaccard_score(probs, target, self.smooth, self.eps, dims)


class TverskyLoss(_RegionLoss):
    """Tversky loss: `alpha` weighs false positives, `beta` false negatives; `gamma` powers the class mean.

    The loss is mean_c(loss_c) ** gamma (gamma > 1 is the "focal Tversky" variant).

    Example:
        >>> loss = TverskyLoss("binary", alpha=0.3, beta=0.7)
        >>> value = loss(logits, masks)
    """

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        class_weights: Sequence[float] | None = None,
    ):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights)
        if alpha < 0 or beta < 0 or gamma <= 0:
            raise ValueError(f"TverskyLoss: need alpha >= 0, beta >= 0, gamma > 0; got {alpha}, {beta}, {gamma}")
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma

    def score(self, probs: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return soft_tversky_score(probs, target, self.alpha, self.beta, self.smooth, self.eps, dims)

    def aggregate(self, loss: torch.Tensor) -> torch.Tensor:
        return super().aggregate(loss) ** self.gamma


class DiceImageLoss(_RegionLoss):
    """Per-image soft Dice: one score per (image, class), then the mean over all of them.

    Unlike `DiceLoss`, nothing is pooled over the batch and empty images count: with `smooth` > 0 an image
    whose class is absent scores 2 * smooth / (sum(p) + 2 * smooth), which is 1 for an empty prediction, as the
    per-image competition Dice (SIIM, `dice_image`) scores empty-vs-empty. `smooth` must be > 0.

    Example:
        >>> loss = DiceImageLoss("binary", smooth=1.0)
        >>> value = loss(logits, masks)
    """

    def __init__(
        self,
        mode: str = "binary",
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 1.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        class_weights: Sequence[float] | None = None,
    ):
        if smooth <= 0:
            raise ValueError(
                f"DiceImageLoss: smooth must be > 0 (got {smooth}) so that an empty image with an empty "
                "prediction scores 1; use DiceLoss for the batch-pooled Dice"
            )
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights)

    def score(self, probs: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return soft_dice_score(probs, target, self.smooth, self.eps, dims)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        y_true = check_pair("DiceImageLoss", self.mode, y_pred, y_true, self.ignore_index)
        probs, target = flatten_for_region(self.mode, y_pred, y_true, self.from_logits, self.ignore_index)
        scores = self.score(probs, target, dims=(2,))  # (N, C)
        loss = -torch.log(scores.clamp_min(self.eps)) if self.log_loss else 1.0 - scores
        return self.aggregate(loss.mean(dim=0))
