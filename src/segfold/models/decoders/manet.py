"""MA-Net: Fan et al., "MA-Net: A Multi-Scale Attention Network for Liver and Tumor Segmentation",
https://ieeexplore.ieee.org/document/9201310

A position-wise attention block (PAB) on the deepest feature, then multi-scale fusion attention
blocks (MFAB) that weight each skip feature with channel attention computed from both the skip and
the upsampled high-level feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import (
    Conv2dNormAct,
    NormSpec,
    UpsampleBlock,
    check_interpolation,
    interpolate_to,
    resolve_use_norm,
)
from segfold.models.decoders.unet import check_decoder_channels
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model


class PositionAttention(nn.Module):
    """Self-attention over positions (the PAB): every position is a weighted sum of all others, plus a residual."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # (N, H*W, K)
        key = self.key(x).flatten(2)  # (N, K, H*W)
        weights = torch.softmax(torch.bmm(query, key), dim=-1)  # (N, H*W query, H*W key)
        value = self.value(x).flatten(2)  # (N, C, H*W)
        attended = torch.bmm(value, weights.transpose(1, 2)).view(n, c, h, w)
        return x + self.out(attended)


def _channel_gate(channels: int, reduction: int) -> nn.Sequential:
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(channels, channels // reduction, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels // reduction, channels, 1),
        nn.Sigmoid(),
    )


class FusionAttentionBlock(nn.Module):
    """MFAB: reduce the high-level input to the skip's channels, gate the skip with the sum of both channel
    attentions, concatenate and apply two 3x3 conv-norm-acts."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, use_norm: NormSpec = "batchnorm",
                 reduction: int = 16, interpolation: str = "nearest") -> None:
        super().__init__()
        self.interpolation = check_interpolation(interpolation)
        self.high_conv = nn.Sequential(
            Conv2dNormAct(in_channels, in_channels, 3, padding=1, use_norm=use_norm),
            Conv2dNormAct(in_channels, skip_channels, 1, use_norm=use_norm),
        )
        self.high_gate = _channel_gate(skip_channels, reduction)
        self.skip_gate = _channel_gate(skip_channels, reduction)
        self.conv1 = Conv2dNormAct(2 * skip_channels, out_channels, 3, padding=1, use_norm=use_norm)
        self.conv2 = Conv2dNormAct(out_channels, out_channels, 3, padding=1, use_norm=use_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = interpolate_to(self.high_conv(x), skip.shape[-2:], self.interpolation)
        skip = skip * (self.high_gate(x) + self.skip_gate(skip))
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class MAnetDecoder(nn.Module):
    """PAB on the deepest feature, one MFAB per skip level, a plain upsampling block where a level has none."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int], pab_channels: int = 64,
                 use_norm: NormSpec = "batchnorm", interpolation: str = "nearest") -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        self.center = PositionAttention(encoder_channels[-1], pab_channels)
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList()
        for k, (i, o) in enumerate(zip(in_channels, decoder_channels, strict=True)):
            skip = encoder_channels[depth - 1 - k] if k < depth - 1 else 0
            self.blocks.append(FusionAttentionBlock(i, skip, o, use_norm=use_norm, interpolation=interpolation)
                               if skip > 0 else
                               UpsampleBlock(i, 0, o, use_norm=use_norm, interpolation=interpolation))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(features) - 1
        x = self.center(features[-1])
        for k, block in enumerate(self.blocks):
            level = depth - 1 - k
            x = block(x, features[level]) if isinstance(block, FusionAttentionBlock) else \
                block(x, features[level].shape[-2:])
        return x


@register_model
class MAnet(SegmentationModel):
    """MA-Net: U-Net-like decoder with position attention at the bottom and fusion attention on the skips.

    Example:
        >>> model = segfold.MAnet("resnet34", encoder_weights="imagenet", classes=2)
        >>> masks = model.predict(images)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", decoder_use_norm: NormSpec = "batchnorm",
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), decoder_pab_channels: int = 64,
                 decoder_interpolation: str = "nearest", in_channels: int = 3, classes: int = 1,
                 activation: ActivationSpec = None, aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        decoder_use_norm = resolve_use_norm(decoder_use_norm, kwargs)
        channels = check_decoder_channels(decoder_channels, encoder_depth, "MAnet")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, **kwargs)
        decoder = MAnetDecoder(encoder.out_channels, channels, pab_channels=decoder_pab_channels,
                               use_norm=decoder_use_norm, interpolation=decoder_interpolation)
        self.assemble(encoder, decoder, channels[-1], classes=classes, activation=activation, aux_params=aux_params,
                      head_kernel_size=3)
