"""`build_model`: the network that a `model` config section describes."""

from __future__ import annotations

from typing import Any

from segfold.errors import ConfigError
from segfold.models.base import SegmentationModel
from segfold.models.registry import create_model


def build_model(cfg: Any, classes: int, *, pretrained: bool = True,
                encoder_timm_name: str | None = None) -> SegmentationModel:
    """Build the network described by the `model` config section.

    Args:
        cfg: the section (`segfold.config.model.ModelConfig`).
        classes: number of mask channels (from the data section).
        pretrained: load `cfg.encoder_weights` into the encoder. False builds it with random weights
            (for weights that a checkpoint replaces straight away: no hub, pip package or file is
            touched); ``model.encoder_weights`` still names the configured weights.
        encoder_timm_name: the timm model to build instead of the one `cfg.encoder_name` names: the one
            the weights built when they were loaded (``model.encoder_timm_name``; efficientnet_pytorch-
            layout weights build timm's ``tf_`` twin of an EfficientNet).
    """
    kwargs = dict(cfg.params)
    aux_params = cfg.aux_head_params(classes)
    if aux_params is not None:
        kwargs["aux_params"] = aux_params
    if cfg.deep_supervision:
        kwargs["deep_supervision"] = True
    model = create_model(cfg.arch, encoder_name=encoder_timm_name or cfg.encoder_name,
                         encoder_weights=cfg.encoder_weights if pretrained else None,
                         in_channels=cfg.in_channels, classes=classes, **kwargs)
    if not pretrained:
        model.encoder_weights = cfg.encoder_weights
    if cfg.grad_checkpointing:
        try:
            model.set_grad_checkpointing(True)
        except ValueError as exc:
            raise ConfigError(f"model.grad_checkpointing: {exc}") from None
    return model
