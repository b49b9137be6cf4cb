"""The architecture registry and the one factory, :func:`create_model`.

Names are matched case-insensitively, with "+" read as "plus" and "-" / "_" / spaces ignored, so
"UnetPlusPlus", "unet++", "unet_plus_plus" and "deeplabv3+" all resolve.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from segfold.models.base import SegmentationModel

ModelClass = TypeVar("ModelClass", bound=type)

_MODELS: dict[str, type] = {}
_KEYS: dict[str, str] = {}  # normalised name -> class name


def normalize_arch(name: str) -> str:
    """The lookup key of an architecture name: lower case, "+" -> "plus", no separators."""
    key = name.strip().lower().replace("+", "plus")
    return "".join(ch for ch in key if ch.isalnum())


def register_model(cls: ModelClass) -> ModelClass:
    """Class decorator: make an architecture available to :func:`create_model` under its class name."""
    key = normalize_arch(cls.__name__)
    if key in _KEYS and _MODELS[_KEYS[key]] is not cls:
        raise ValueError(f"architecture name {cls.__name__!r} is registered twice "
                         f"({_MODELS[_KEYS[key]].__module__} and {cls.__module__})")
    _MODELS[cls.__name__] = cls
    _KEYS[key] = cls.__name__
    return cls


def list_models() -> list[str]:
    """The registered architecture names (class names), sorted."""
    return sorted(_MODELS)


def get_model_class(arch: str) -> type[SegmentationModel]:
    """The architecture class for ``arch`` (see the module docstring for accepted spellings).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if not isinstance(arch, str):
        raise ValueError(f"arch must be a string, got {arch!r}")
    key = normalize_arch(arch)
    if key not in _KEYS:
        close = difflib.get_close_matches(key, list(_KEYS), n=1, cutoff=0.6)
        hint = f" Did you mean {_KEYS[close[0]]!r}?" if close else ""
        raise ValueError(f"unknown architecture {arch!r}.{hint} Valid names: {', '.join(sorted(_MODELS))}")
    return _MODELS[_KEYS[key]]


def create_model(arch: str, encoder_name: str = "resnet34", encoder_weights: str | None = "imagenet",
                 in_channels: int = 3, classes: int = 1, **kwargs: Any) -> SegmentationModel:
    """Build a segmentation model by architecture name.

    Args:
        arch: architecture name, case-insensitive ("Unet", "unet++", "FPN", "deeplabv3+", ...).
        encoder_name: encoder name (timm name or smp-style alias, see ``segfold.encoders``).
        encoder_weights: pretrained encoder weights ("imagenet", a timm tag) or None.
        in_channels: channels of the input images.
        classes: channels of the output masks.
        **kwargs: the architecture's own keywords (``decoder_channels``, ``aux_params``, ...).

    Example:
        >>> model = create_model("unet", encoder_name="test_resnet", encoder_weights=None, classes=2)
    """
    cls = get_model_class(arch)
    return cls(encoder_name=encoder_name, encoder_weights=encoder_weights, in_channels=in_channels,
               classes=classes, **kwargs)
