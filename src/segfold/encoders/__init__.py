"""segfold.encoders: timm encoders by name (and smp-style aliases), Mix Transformers, ViT features for DPT."""

from segfold.encoders.aliases import ENCODER_ALIASES, list_encoders, resolve_encoder_name
from segfold.encoders.factory import encoder_follows_weights, get_encoder, get_preprocessing_params, get_vit_encoder
from segfold.encoders.mit import MIT_SPECS, MixTransformerEncoder
from segfold.encoders.timm_encoder import TimmEncoder
from segfold.encoders.vit import ViTEncoder

__all__ = [
    "ENCODER_ALIASES",
    "MIT_SPECS",
    "MixTransformerEncoder",
    "TimmEncoder",
    "ViTEncoder",
    "encoder_follows_weights",
    "get_encoder",
    "get_preprocessing_params",
    "get_vit_encoder",
    "list_encoders",
    "resolve_encoder_name",
]
