"""`get_encoder`: one factory for timm encoders and the Mix Transformers, with weights and dilation checks."""

from __future__ import annotations

import os
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from segfold.encoders.aliases import NATIVE_ENCODERS, resolve_encoder_name
from segfold.encoders.timm_encoder import TimmEncoder, feature_reductions
from segfold.encoders.weights import (
    download_url,
    find_cached_weights,
    hub_reachable,
    is_weights_path,
    load_encoder_state_dict,
    offline_error,
    pretrained_cfg_for,
    read_state_dict,
)
from segfold.errors import WeightsError

OUTPUT_STRIDES = (8, 16, 32)


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
        weights: None (random init), ``"imagenet"`` (timm's default pretrained tag), another timm
            tag such as ``"ra_in1k"``, or a local ``.pth``/``.pt``/``.safetensors`` file holding a
            timm classifier state dict or this encoder's own state dict.
        output_stride: 32, or 16 / 8 to dilate the last stages (CNNs whose timm model supports it).

    Returns:
        The encoder, with ``out_channels``, ``reductions`` and ``output_stride`` attributes.

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
        from segfold.encoders.mit import build_mit_encoder

        return build_mit_encoder(timm_name, in_channels, depth, weights, output_stride)
    dilated = output_stride < 2**depth
    if dilated:
        reductions = feature_reductions(timm_name, output_stride)
        if reductions is None or max(reductions) != output_stride:
            raise ValueError(
                f"encoder {name!r} cannot be dilated to output_stride={output_stride} (its timm model "
                f"{timm_name!r} has no output_stride support); use output_stride=32 or another encoder"
            )
    build = dict(timm_name=timm_name, in_channels=in_channels, depth=depth, output_stride=output_stride)
    if weights is None:
        return TimmEncoder(**build, pretrained=False)
    if is_weights_path(weights):
        return _from_local_file(name, build, weights)
    cfg = pretrained_cfg_for(timm_name, str(weights))
    cached = find_cached_weights(cfg)
    if cached is not None:
        return _from_timm_state_dict(name, build, read_state_dict(cached), str(cached), cfg.tag)
    if not hub_reachable(download_url(cfg)):
        raise offline_error(name, cfg)
    try:
        return TimmEncoder(**build, pretrained=True, pretrained_cfg_overlay={"tag": cfg.tag} if cfg.tag else None)
    except Exception as error:  # noqa: BLE001 - network and hub errors of every kind
        raise WeightsError(f"downloading pretrained weights for encoder {name!r} failed: {error}") from error


def _from_local_file(name: str, build: dict[str, Any], path: str | os.PathLike) -> TimmEncoder:
    state_dict = read_state_dict(path)
    if all(key.startswith("model.") for key in state_dict):
        # This encoder's own state dict (TimmEncoder keeps the timm module as `model`).
        encoder = TimmEncoder(**build, pretrained=False)
        load_encoder_state_dict(encoder, state_dict, source=str(path))
        return encoder
    return _from_timm_state_dict(name, build, state_dict, str(path), tag=None)


def _from_timm_state_dict(
    name: str, build: dict[str, Any], state_dict: dict[str, Any], source: str, tag: str | None
) -> TimmEncoder:
    """Let timm load a classifier state dict: its checkpoint filter, in_chans adaptation and head removal apply."""
    overlay: dict[str, Any] = {"state_dict": state_dict, "source": "timm"}
    if tag:
        overlay["tag"] = tag
    try:
        return TimmEncoder(**build, pretrained=True, pretrained_cfg_overlay=overlay)
    except RuntimeError as error:
        detail = str(error).replace("\n", " ").replace("\t", " ")
        if len(detail) > 1500:
            detail = detail[:1500] + " ..."
        raise WeightsError(
            f"encoder weights {source} do not fit encoder {name!r} ({build['timm_name']}): {detail}. Pass a state "
            "dict of the same timm model (classifier or encoder)"
        ) from error


def get_preprocessing_params(name: str, weights: str | os.PathLike | None = "imagenet") -> dict[str, list[float]]:
    """Input normalisation of an encoder's pretrained weights, from timm's ``pretrained_cfg``.

    Args:
        name: encoder name as for `get_encoder`.
        weights: ``"imagenet"``, a timm tag, None or a local file (the last two give the default tag's values).

    Returns:
        ``{"mean": [...], "std": [...], "input_range": [0, 1]}`` for images scaled to ``input_range``.
    """
    timm_name = resolve_encoder_name(name)
    if timm_name in NATIVE_ENCODERS:
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    else:
        tag = None if weights is None or is_weights_path(weights) else str(weights)
        cfg = pretrained_cfg_for(timm_name, tag) if tag else None
        if cfg is None:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(timm_name)
        mean = cfg.mean if cfg is not None else IMAGENET_DEFAULT_MEAN
        std = cfg.std if cfg is not None else IMAGENET_DEFAULT_STD
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "input_range": [0, 1]}
