"""Losses built from other losses: weighted sums, deep supervision, aux presence, presence masking.

Exact semantics:
- `JointLoss([(a, wa), (b, wb)])(y_pred, y_true) = wa * a(y_pred, y_true) + wb * b(y_pred, y_true)`.
- `DeepSupervisionLoss(loss, weights)(masks, y_true, deep) = loss(masks, y_true) + sum_i weights[i] *
  loss(deep[i], y_true)`; the main output has weight 1, nothing is normalised. A deep output whose
  spatial size differs from `masks` is bilinearly resized (as logits) to the size of `masks` first.
- `AuxPresenceLoss`: BCE (or sigmoid focal) on the aux head's (N, C) class logits against per-class
  presence (N, C) in {0, 1}, the mean over all (image, class) entries. `presence_from_target` derives
  presence from a mask: a class is present in an image when at least one of its pixels is > 0.5
  (binary / multilabel) or carries its index (multiclass; `ignore_index` pixels never count).
- `MaskedByPresenceLoss(loss)(y_pred, y_true, presence)` (binary / multilabel only): for each class c
  let P_c be the images where c is present; the result is the mean over the classes with a non-empty
  P_c of `loss(y_pred[P_c, c:c+1], y_true[P_c, c:c+1])`, i.e. the wrapped loss on a one-channel
  sub-batch. Absent (image, class) pairs contribute nothing and do not count; a batch with no present
  pair returns 0 (still attached to the graph, so backward works). The wrapped loss must accept
  (n, 1, H, W) inputs (binary or multilabel mode). `presence` defaults to `presence_from_target`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfold.losses._checks import check_finite_logits, check_mode, check_pair
from segfold.losses.focal import FocalLoss


class JointLoss(nn.Module):
    """Weighted sum of losses sharing the same (y_pred, y_true).

    Example:
        >>> loss = JointLoss([(SoftBCEWithLogitsLoss(), 0.5), (DiceLoss("binary"), 0.5)])
        >>> value = loss(logits, masks)
    """

    def __init__(self, terms: Sequence[tuple[nn.Module, float]], names: Sequence[str] | None = None):
        super().__init__()
        if not terms:
            raise ValueError("JointLoss: terms must hold at least one (loss, weight) pair")
        for index, term in enumerate(terms):
            if len(term) != 2 or not callable(term[0]):
                raise ValueError(f"JointLoss: terms[{index}] must be a (loss, weight) pair, got {term!r}")
            weight = float(term[1])
            if not weight >= 0:
                raise ValueError(f"JointLoss: terms[{index}] has weight {term[1]}; weights must be >= 0")
        if names is not None and len(names) != len(terms):
            raise ValueError(f"JointLoss: {len(names)} names for {len(terms)} terms")
        self.losses = nn.ModuleList([loss for loss, _ in terms])
        self.weights = [float(weight) for _, weight in terms]
        self.names = list(names) if names is not None else [type(loss).__name__ for loss, _ in terms]

    def components(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted value of each term, keyed by name (a repeated name gets `_1`, `_2` ...)."""
        values: dict[str, torch.Tensor] = {}
        for name, loss in zip(self.names, self.losses, strict=True):
            key, suffix = name, 1
            while key in values:
                key, suffix = f"{name}_{suffix}", suffix + 1
            values[key] = loss(y_pred, y_true)
        return values

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of values returned by `components` (in the same order)."""
        return sum(w * v for w, v in zip(self.weights, components.values(), strict=True))

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        return self.combine(self.components(y_pred, y_true))


class DeepSupervisionLoss(nn.Module):
    """`loss` on the main output plus `weights[i] * loss` on each extra (nested) output.

    Example:
        >>> loss = DeepSupervisionLoss(DiceLoss("binary"), weights=[0.5, 0.25, 0.125])
        >>> value = loss(outputs.masks, masks, deep=outputs.deep)
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        values = [float(w) for w in weights]
        if any(not w >= 0 for w in values):
            raise ValueError(f"DeepSupervisionLoss: weights must be >= 0, got {values}")
        self.loss = loss
        self.weights = values

    def forward(self, masks: torch.Tensor, y_true: torch.Tensor, deep: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        if len(deep) != len(self.weights):
            raise ValueError(
                f"DeepSupervisionLoss: got {len(deep)} deep outputs but {len(self.weights)} weights; "
                "loss.deep_supervision_weights needs one weight per extra output of the model"
            )
        total = self.loss(masks, y_true)
        for weight, extra in zip(self.weights, deep, strict=True):
            if extra.shape[2:] != masks.shape[2:]:
                extra = F.interpolate(extra, size=masks.shape[2:], mode="bilinear", align_corners=False)
            total = total + weight * self.loss(extra, y_true)
        return total


def presence_from_target(
    y_true: torch.Tensor, mode: str, num_classes: int | None = None, ignore_index: int | None = None
) -> torch.Tensor:
    """Per-(image, class) presence (N, C) as float 0/1 from a mask target.

    Args:
        y_true: (N, C, ...) 0/1 masks (binary / multilabel; binary (N, ...) is taken as one class) or
            (N, ...) class indices (multiclass).
        mode: "binary", "multiclass" or "multilabel".
        num_classes: number of classes, required for multiclass.
        ignore_index: multiclass label that never counts as a class.
    """
    check_mode("presence_from_target", mode)
    if mode == "multiclass":
        if num_classes is None:
            raise ValueError("presence_from_target: num_classes is required for mode='multiclass'")
        labels = y_true.reshape(y_true.shape[0], -1)  # (N, P)
        if ignore_index is not None:
            labels = torch.where(labels == ignore_index, torch.full_like(labels, num_classes), labels)
        labels = labels.long().clamp(0, num_classes)  # out-of-range labels land in the extra slot
        seen = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device)
        return seen.scatter_(1, labels, 1.0)[:, :num_classes]
    if mode == "binary" and (y_true.dim() < 2 or y_true.dim() == 3):
        y_true = y_true.unsqueeze(1)
    flat = y_true.reshape(y_true.shape[0], y_true.shape[1], -1)  # (N, C, P)
    return (flat > 0.5).any(dim=2).float()


class AuxPresenceLoss(nn.Module):
    """Classification loss of the aux head: BCE (or focal) of class logits (N, C) vs presence (N, C).

    Example:
        >>> loss = AuxPresenceLoss("bce")
        >>> value = loss(outputs.labels, batch["presence"])
    """

    def __init__(self, kind: str = "bce", gamma: float = 2.0, alpha: float | None = None):
        super().__init__()
        if kind not in ("bce", "focal"):
            raise ValueError(f"AuxPresenceLoss: kind={kind!r} is not one of ['bce', 'focal']")
        self.kind = kind
        self.focal = FocalLoss("multilabel", alpha=alpha, gamma=gamma) if kind == "focal" else None

    def forward(self, labels: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        check_finite_logits("AuxPresenceLoss", labels)
        if labels.dim() != 2 or presence.shape != labels.shape:
            raise ValueError(
                f"AuxPresenceLoss: labels (class logits) must be (N, C) and presence the same shape; "
                f"got {tuple(labels.shape)} and {tuple(presence.shape)}"
            )
        target = presence.to(labels.dtype)
        if self.focal is not None:
            return self.focal(labels, target)
        return F.binary_cross_entropy_with_logits(labels, target)


class MaskedByPresenceLoss(nn.Module):
    """Apply `loss` per class on the images where the class is present only (see the module docstring).

    Example:
        >>> loss = MaskedByPresenceLoss(DiceLoss("multilabel"))
        >>> value = loss(logits, masks, batch["presence"])
    """

    def __init__(self, loss: nn.Module, mode: str = "multilabel"):
        super().__init__()
        self.mode = check_mode("MaskedByPresenceLoss", mode, ("binary", "multilabel"))
        self.loss = loss

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor, presence: torch.Tensor | None = None) -> torch.Tensor:
        y_true = check_pair("MaskedByPresenceLoss", self.mode, y_pred, y_true)
        if presence is None:
            presence = presence_from_target(y_true, "multilabel")
        expected = (y_pred.shape[0], y_pred.shape[1])
        if tuple(presence.shape) != expected:
            raise ValueError(f"MaskedByPresenceLoss: presence must be (N, C) = {expected}, got {tuple(presence.shape)}")
        present = (presence > 0.5).cpu()
        terms = []
        for cls in range(y_pred.shape[1]):
            rows = present[:, cls].nonzero().flatten()
            if rows.numel() == 0:
                continue
            rows = rows.to(y_pred.device)
            terms.append(self.loss(y_pred[rows, cls : cls + 1], y_true[rows, cls : cls + 1]))
        if not terms:
            return y_pred.sum() * 0.0
        return torch.stack(terms).mean()


def masked_by_presence(
    loss: nn.Module, y_pred: torch.Tensor, y_true: torch.Tensor, presence: torch.Tensor | None = None
) -> torch.Tensor:
    """Functional form of `MaskedByPresenceLoss(loss)(y_pred, y_true, presence)`."""
    return MaskedByPresenceLoss(loss)(y_pred, y_true, presence)
