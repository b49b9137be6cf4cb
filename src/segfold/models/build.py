"""`build_model`: the network that a `model` config section describes."""

from __future__ import annotations

from typing import Any

from segfold.errors import ConfigError
from segfold.models.base import SegmentationModel
from segfold.models.registry import create_model


def build_model(cfg: Any, classes: int) -> SegmentationModel:
    """Build the network described by the `model` config section.

    Args:
        cfg: the section (`segfold.config.model.ModelConfig`).
        classes: number of mask channels (from the data section).
    """
    kwargs = dict(cfg.params)
    aux_params = cfg.aux_head_params(classes)
    if aux_params is not None:
        kwargs["aux_params"] = aux_params
    if cfg.deep_supervision:
        kwargs["deep_supervision"] = True
    model = create_model(cfg.arch, encoder_name=cfg.encoder_name, encoder_weights=cfg.encoder_weights,
                         in_channels=cfg.in_channels, classes=classes, **kwargs)
    if cfg.grad_checkpointing:
        try:
            model.set_grad_checkpointing(True)
        except ValueError as exc:
            raise ConfigError(f"model.grad_checkpointing: {exc}") from None
    return model
