"""Config checks that span sections, run before any training work (and by `scripts/train.py` at load)."""

from __future__ import annotations

from typing import Any

from segfold.errors import ConfigError
from segfold.losses import list_losses


def check_training_config(cfg: Any) -> None:
    """Raise `ConfigError` for combinations the trainer cannot honour; each message says what to change."""
    known = list_losses()
    for index, term in enumerate(cfg.loss.terms):
        if term.name not in known:
            raise ConfigError(f"loss.terms[{index}].name = {term.name!r} is not a loss; choose one of {known}")
    # NOTE with train.steps the epochs are derived per fold (segfold.train.stages.steps_config checks them then)
    if cfg.train.steps is None and cfg.scheduler.warmup_epochs >= cfg.train.epochs:
        raise ConfigError(
            f"scheduler.warmup_epochs = {cfg.scheduler.warmup_epochs} must be shorter than "
            f"train.epochs = {cfg.train.epochs}"
        )
    has_aux = cfg.model.aux_head_params(len(cfg.data.classes)) is not None
    if cfg.loss.skip_empty:
        if cfg.data.mode == "multiclass":
            raise ConfigError("loss.skip_empty works per class on binary / multilabel masks; "
                              "turn it off for data.mode=multiclass")
        if not has_aux:
            raise ConfigError("loss.skip_empty=true leaves emptiness to the aux head, but the model has none: "
                              "set model.aux: true (or turn skip_empty off)")
    if cfg.loss.deep_supervision_weights is not None and not cfg.model.deep_supervision:
        raise ConfigError("loss.deep_supervision_weights is set but model.deep_supervision is false; "
                          "enable it (UnetPlusPlus) or remove the weights")
