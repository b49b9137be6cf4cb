"""Building blocks shared by the decoders: conv-norm-act, norm-layer resolution, attention.

Layer types are passed around as factories (``norm_layer(channels) -> nn.Module``), resolved once
from the user-facing ``decoder_use_norm`` value by :func:`get_norm_layer`.

scSE attention: Roy et al., "Concurrent Spatial and Channel Squeeze & Excitation in Fully
Convolutional Networks", https://arxiv.org/abs/1803.02579
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NormSpec = bool | str | dict[str, Any] | None
NormFactory = Callable[[int], nn.Module]

NORM_NAMES = ("batchnorm", "identity", "layernorm", "instancenorm", "inplace")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (same parameters as ``nn.LayerNorm(C)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (N, C, H, W)


class BatchNormLeakyReLU(nn.BatchNorm2d):
    """BatchNorm followed by leaky ReLU (slope 0.01): what InPlace-ABN computes, without its memory saving.

    Used for ``decoder_use_norm="inplace"`` so that option works without the ``inplace_abn`` package;
    the parameters are those of ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(super().forward(x), negative_slope=0.01)


def get_norm_layer(use_norm: NormSpec) -> tuple[NormFactory, bool]:
    """Resolve ``decoder_use_norm`` into a norm-layer factory.

    Args:
        use_norm: True / "batchnorm", False / None / "identity", "layernorm", "instancenorm",
            "inplace", or a dict ``{"type": <one of those names>, **keyword arguments of the layer}``.

    Returns:
        ``(factory, is_identity)``; ``factory(channels)`` builds the layer. Convolutions before an
        identity norm keep their bias, the others drop it (the norm has its own shift).
    """
    params: dict[str, Any] = {}
    if isinstance(use_norm, dict):
        params = dict(use_norm)
        if "type" not in params:
            raise ValueError(f"decoder_use_norm as a dict needs a 'type' key (one of {', '.join(NORM_NAMES)}), "
                             f"got {use_norm!r}")
        use_norm = params.pop("type")
    if use_norm is True:
        use_norm = "batchnorm"
    elif use_norm is False or use_norm is None:
        use_norm = "identity"
    if not isinstance(use_norm, str) or use_norm.lower() not in NORM_NAMES:
        raise ValueError(f"decoder_use_norm={use_norm!r} is not supported; use a bool, one of "
                         f"{', '.join(NORM_NAMES)}, or a dict with a 'type' key")
    name = use_norm.lower()
    if name == "identity":
        return (lambda channels: nn.Identity()), True
    layer: Callable[..., nn.Module] = {
        "batchnorm": nn.BatchNorm2d,
        "layernorm": LayerNorm2d,
        "instancenorm": partial(nn.InstanceNorm2d, affine=True),
        "inplace": BatchNormLeakyReLU,
    }[name]
    return partial(layer, **params), False


def resolve_use_norm(use_norm: NormSpec, kwargs: dict[str, Any], old_name: str = "decoder_use_batchnorm") -> NormSpec:
    """Take the deprecated ``*_use_batchnorm`` keyword out of ``kwargs`` (with a warning) if it was given.

    Args:
        use_norm: the value of ``decoder_use_norm``.
        kwargs: the constructor's extra keywords; ``old_name`` is removed from it.
        old_name: the deprecated keyword.
    """
    if old_name in kwargs:
        warnings.warn(f"{old_name} is deprecated, use decoder_use_norm instead", DeprecationWarning, stacklevel=3)
        return kwargs.pop(old_name)
    return use_norm


class Conv2dNormAct(nn.Sequential):
    """Conv -> norm -> ReLU (the norm's own activation for "inplace"); the conv has a bias only without a norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, stride: int = 1,
                 use_norm: NormSpec = "batchnorm") -> None:
        norm_layer, is_identity = get_norm_layer(use_norm)
        norm = norm_layer(out_channels)
        act: nn.Module = nn.Identity() if isinstance(norm, BatchNormLeakyReLU) else nn.ReLU(inplace=True)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=is_identity),
            norm,
            act,
        )


class SCSEAttention(nn.Module):
    """Concurrent spatial and channel squeeze & excitation: ``x * cSE(x) + x * sSE(x)``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel_gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )
        self.spatial_gate = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_gate(x) + x * self.spatial_gate(x)


def get_attention(name: str | None, channels: int) -> nn.Module:
    """An attention module by name: None -> identity, "scse" -> :class:`SCSEAttention`."""
    if name is None:
        return nn.Identity()
    if name == "scse":
        return SCSEAttention(channels)
    raise ValueError(f"attention type {name!r} is not supported; use None or 'scse'")


def interpolate_to(x: torch.Tensor, size: tuple[int, int] | torch.Size, mode: str = "nearest") -> torch.Tensor:
    """Resize ``x`` to ``size`` (align_corners=False for the modes that take it)."""
    if mode in ("nearest", "area", "nearest-exact"):
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


INTERPOLATION_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def check_interpolation(mode: str) -> str:
    """Validate a ``decoder_interpolation`` value and return it."""
    if mode not in INTERPOLATION_MODES:
        raise ValueError(f"decoder_interpolation={mode!r} is not supported; "
                         f"use one of {', '.join(INTERPOLATION_MODES)}")
    return mode


class UpsampleBlock(nn.Module):
    """Unet-style decoder block: resize to the skip's size, concatenate the skips, two 3x3 conv-norm-acts.

    Shared by Unet, Unet++ (every nested node) and MAnet (its last block). The optional attention
    runs on the concatenated input and on the output.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, use_norm: NormSpec = "batchnorm",
                 attention_type: str | None = None, interpolation: str = "nearest") -> None:
        super().__init__()
        self.interpolation = check_interpolation(interpolation)
        self.attention1 = get_attention(attention_type, in_channels + skip_channels)
        self.conv1 = Conv2dNormAct(in_channels + skip_channels, out_channels, 3, padding=1, use_norm=use_norm)
        self.conv2 = Conv2dNormAct(out_channels, out_channels, 3, padding=1, use_norm=use_norm)
        self.attention2 = get_attention(attention_type, out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | torch.Size,
                skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Args: x: the coarser input; size: the output's (H, W); skips: same-size features to concatenate."""
        x = interpolate_to(x, size, self.interpolation)
        if skips:
            x = torch.cat([x, *skips], dim=1)
        x = self.attention1(x)
        x = self.conv2(self.conv1(x))
        return self.attention2(x)
