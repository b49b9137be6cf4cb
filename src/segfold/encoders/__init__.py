"""segfold.encoders: timm encoders by name (and smp-style aliases), Mix Transformers, ViT features for DPT."""

from segfold.encoders.aliases import ENCODER_ALIASES, list_encoders, resolve_encoder_name
from segfold.encoders.factory import get_encoder, get_preprocessing_params
from segfold.encoders.timm_encoder import TimmEncoder

__all__ = [
    "ENCODER_ALIASES",
    "TimmEncoder",
    "get_encoder",
    "get_preprocessing_params",
    "list_encoders",
    "resolve_encoder_name",
]
