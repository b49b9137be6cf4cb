"""segfold.models: the model zoo (encoder -> decoder -> heads), its registry and factory."""

from segfold.models.base import SegmentationModel, from_pretrained
from segfold.models.build import build_model
from segfold.models.heads import ClassificationHead, SegmentationHead, get_activation
from segfold.models.outputs import ModelOutputs, unpack_outputs
from segfold.models.registry import _MODELS, create_model, get_model_class, list_models, register_model

# NOTE the architectures register themselves when their modules are imported: all of them, here.
import segfold.models.decoders  # noqa: E402, F401  isort: skip

__all__ = [
    "ClassificationHead",
    "ModelOutputs",
    "SegmentationHead",
    "SegmentationModel",
    "build_model",
    "create_model",
    "from_pretrained",
    "get_activation",
    "get_model_class",
    "list_models",
    "register_model",
    "unpack_outputs",
]


def __getattr__(name: str):
    # NOTE architecture classes (segfold.models.Unet, ...) come from the registry, so every
    # registered one is reachable here without a list to keep in sync.
    if name in _MODELS:
        return _MODELS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
