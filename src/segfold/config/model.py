"""Config section `model` (`segfold.models.build_model` turns it into a network).

Example (YAML)::

    model:
      arch: UnetPlusPlus
      encoder_name: efficientnet-b0
      encoder_weights: imagenet
      params: {decoder_attention_type: scse}
      aux: {dropout: 0.3}          # image-level head; its `classes` default to the mask classes
      deep_supervision: true       # Unet++ only
      grad_checkpointing: true     # large inputs: recompute encoder activations in backward
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from pydantic import field_validator, model_validator

from segfold.config.base import StrictModel
from segfold.encoders.aliases import resolve_encoder_name
from segfold.models.heads import AUX_KEYS
from segfold.models.registry import get_model_class

# Keywords the config sets through its own fields, never through `params`.
_OWN_KEYS = ("encoder_name", "encoder_weights", "in_channels", "classes", "aux_params", "deep_supervision")


class ModelConfig(StrictModel):
    """Which network to build.

    Attributes:
        arch: architecture name (see ``segfold.models.list_models()``; case-insensitive).
        encoder_name: timm encoder name or smp-style alias.
        encoder_weights: pretrained weights ("imagenet", a timm tag) or None.
        in_channels: channels of the input images.
        params: the architecture's own constructor keywords (``decoder_channels``, ``encoder_depth``, ...).
        aux: image-level head: False (none), True (defaults) or a dict of ``aux_params`` keys
            (``classes``, ``pooling``, ``dropout``, ``activation``); ``classes`` defaults to the mask classes.
        aux_params: the smp spelling of ``aux``; give one of the two.
        deep_supervision: Unet++ only: also return the nested decoders' masks in training.
        grad_checkpointing: recompute the encoder's activations in the backward pass (timm's
            ``set_grad_checkpointing``): less memory for large inputs, more compute; timm encoders only.
    """

    arch: str = "UnetPlusPlus"
    encoder_name: str = "efficientnet-b0"
    encoder_weights: str | None = None
    in_channels: int = 3
    params: dict[str, Any] = {}
    aux: bool | dict[str, Any] = False
    aux_params: dict[str, Any] | None = None
    deep_supervision: bool = False
    grad_checkpointing: bool = False

    @field_validator("encoder_name")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        resolve_encoder_name(name)  # ValueError naming the close matches
        return name

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        cls = get_model_class(self.arch)  # ValueError listing the valid names
        if self.in_channels < 1:
            raise ValueError(f"in_channels={self.in_channels}: use a positive integer")
        valid = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                 if name != "self" and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        for key in self.params:
            if key in _OWN_KEYS:
                raise ValueError(f"model.params.{key}: set it as model.{key.replace('aux_params', 'aux')} instead")
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"model.params.{key} is not a keyword of {cls.__name__}{hint} "
                                 f"(valid: {', '.join(k for k in valid if k not in _OWN_KEYS)})")
        if self.aux_params is not None and self.aux not in (False, {}):
            raise ValueError("give model.aux or model.aux_params, not both")
        aux = self.aux_params if self.aux_params is not None else self.aux
        if isinstance(aux, dict):
            unknown = sorted(set(aux) - set(AUX_KEYS))
            if unknown:
                raise ValueError(f"model.aux has unknown key(s) {unknown}; valid keys: {', '.join(AUX_KEYS)}")
        if self.deep_supervision and "deep_supervision" not in valid:
            raise ValueError(f"model.deep_supervision is only available for UnetPlusPlus, not {cls.__name__}")
        return self

    def aux_head_params(self, classes: int) -> dict[str, Any] | None:
        """The ``aux_params`` dict for ``classes`` mask classes, or None without an aux head."""
        aux = self.aux_params if self.aux_params is not None else self.aux
        if aux is False:
            return None
        params = {} if aux is True else dict(aux)
        params.setdefault("classes", classes)
        return params
