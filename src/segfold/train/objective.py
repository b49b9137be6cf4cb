"""The training objective assembled from the `loss` section and the model's outputs.

    total = mask_loss(masks) + sum_i w_i * mask_loss(deep_i) + aux_weight * aux_loss(labels, presence)

`mask_loss` is the weighted sum of `loss.terms` (`segfold.losses.build_loss`); with `loss.skip_empty`
it only sees the (image, class) pairs whose class is present (the aux head learns emptiness). The deep
terms exist for Unet++ with deep supervision in training mode, the aux term for a model with an aux head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segfold.errors import ConfigError
from segfold.losses import AuxPresenceLoss, DeepSupervisionLoss, MaskedByPresenceLoss, build_loss
from segfold.models import unpack_outputs


class TrainingObjective(nn.Module):
    """Loss of one batch from whatever the model returned (see `segfold.models.unpack_outputs`).

    Args:
        cfg: the experiment config (`loss` and `data.mode`).
        model: the plain model, to read whether it has an aux head and how many deep outputs.
    """

    def __init__(self, cfg: Any, model: nn.Module) -> None:
        super().__init__()

        mode = cfg.data.mode
        try:
            ignore = cfg.data.ignore_index if cfg.data.ignore_label is not None else None
            mask_loss: nn.Module = build_loss(cfg.loss.terms, mode, ignore_index=ignore)
        except ValueError as exc:
            raise ConfigError(f"loss.terms: {exc}") from None
        if cfg.loss.skip_empty:
            mask_loss = MaskedByPresenceLoss(mask_loss, mode)
        self.mask_loss = mask_loss
        deep_heads = getattr(model, "deep_heads", None)
        self.deep: nn.Module | None = None
        if deep_heads is not None and len(deep_heads):
            extra = len(deep_heads)
            weights = cfg.loss.deep_supervision_weights or [1.0 / extra] * extra
            if len(weights) != extra:
                raise ConfigError(
                    f"loss.deep_supervision_weights has {len(weights)} weights but the model returns {extra} "
                    f"extra outputs; give {extra} weights, or null for 1/{extra} each"
                )
            self.deep = DeepSupervisionLoss(mask_loss, weights)
        has_aux = getattr(model, "classification_head", None) is not None
        self.aux_weight = float(cfg.loss.aux_weight) if has_aux else 0.0
        self.aux = AuxPresenceLoss(cfg.loss.aux_loss) if self.aux_weight > 0 else None

    def forward(self, outputs: Any, target: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """The scalar loss.

        Args:
            outputs: the model's forward result.
            target: masks of the batch (float (N, C, H, W) or long (N, H, W) for multiclass).
            presence: (N, C) 0/1 per-class presence of the batch's (augmented) masks.
        """
        out = unpack_outputs(outputs)
        masks = out.masks.float()
        if out.deep and self.deep is not None:
            total = self.deep(masks, target, [d.float() for d in out.deep])
        else:
            total = self.mask_loss(masks, target)
        if self.aux is not None and out.labels is not None:
            total = total + self.aux_weight * self.aux(out.labels.float(), presence)
        return total
