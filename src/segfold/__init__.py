"""segfold: a Kaggle image-segmentation pipeline on timm encoders.

The model zoo keeps the segmentation_models_pytorch API::

    model = segfold.create_model("UnetPlusPlus", encoder_name="efficientnet-b0", encoder_weights=None, classes=4)
    masks = model.predict(images)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Re-exported lazily (PEP 562) so that `import segfold.config` does not pull in torch and timm.
_MODEL_EXPORTS = (
    "create_model", "from_pretrained", "list_models", "register_model", "build_model", "unpack_outputs",
    "SegmentationModel", "ModelOutputs",
    "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet",
    "PAN", "DeepLabV3", "DeepLabV3Plus", "UPerNet", "Segformer", "DPT",
)

_ENCODER_EXPORTS = ("list_encoders", "get_encoder", "get_preprocessing_params")

__all__ = ["__version__", *_MODEL_EXPORTS, *_ENCODER_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _MODEL_EXPORTS:
        import segfold.models

        return getattr(segfold.models, name)
    if name in _ENCODER_EXPORTS:
        import segfold.encoders

        return getattr(segfold.encoders, name)
    raise AttributeError(f"module 'segfold' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
