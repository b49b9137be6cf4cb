"""PAN: Pyramid Attention Network, a feature pyramid attention (FPA) block on the deepest feature and
global attention upsample (GAU) blocks on the way back to stride 4.

Li et al., "Pyramid Attention Network for Semantic Segmentation", https://arxiv.org/abs/1805.10180
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import check_interpolation, interpolate_to
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model

PAN_OUTPUT_STRIDES = (16, 32)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (with bias, as in the paper's reference code) -> BatchNorm -> ReLU, "same" padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _down(in_channels: int, kernel_size: int, convs: int = 1) -> nn.Sequential:
    # NOTE ceil_mode keeps a 1-pixel map at 1 pixel, so small inputs (64 px at stride 16) still work.
    layers: list[nn.Module] = [nn.MaxPool2d(2, 2, ceil_mode=True), conv_bn_relu(in_channels, 1, kernel_size)]
    layers += [conv_bn_relu(1, 1, kernel_size) for _ in range(convs - 1)]
    return nn.Sequential(*layers)


class FPABlock(nn.Module):
    """Feature pyramid attention: a 3-level U-shaped pyramid (7x7, 5x5, 3x3 convs, one channel) gates a
    1x1 projection of the input, and the global-pool branch is added."""

    def __init__(self, in_channels: int, out_channels: int, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.interpolation = interpolation
        self.global_branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, out_channels, 1))
        self.mid = conv_bn_relu(in_channels, out_channels, 1)
        self.down1 = _down(in_channels, 7)
        self.down2 = _down(1, 5)
        self.down3 = _down(1, 3, convs=2)
        self.conv2 = conv_bn_relu(1, 1, 5)
        self.conv1 = conv_bn_relu(1, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        global_context = self.global_branch(x)  # (N, C, 1, 1), broadcast in the sum below
        mid = self.mid(x)
        x1 = self.down1(x)  # (N, 1, H/2, W/2)
        x2 = self.down2(x1)  # (N, 1, H/4, W/4)
        x3 = self.down3(x2)  # (N, 1, H/8, W/8)
        pyramid = self.conv2(x2) + interpolate_to(x3, x2.shape[-2:], self.interpolation)
        pyramid = self.conv1(x1) + interpolate_to(pyramid, x1.shape[-2:], self.interpolation)
        pyramid = interpolate_to(pyramid, size, self.interpolation)  # (N, 1, H, W)
        return mid * pyramid + global_context


class GAUBlock(nn.Module):
    """Global attention upsample: the deeper map's global context (pool -> 1x1 -> sigmoid) weighs a 3x3
    projection of the skip feature, and the deeper map upsampled to the skip's size is added."""

    def __init__(self, skip_channels: int, out_channels: int, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.interpolation = interpolation
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(out_channels, out_channels, 1),
                                       nn.Sigmoid())
        self.skip = conv_bn_relu(skip_channels, out_channels, 3)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        weights = self.attention(deep)  # (N, C, 1, 1)
        return self.skip(skip) * weights + interpolate_to(deep, skip.shape[-2:], self.interpolation)


class PANDecoder(nn.Module):
    """FPA on ``features[-1]``, then one GAU per feature from ``features[-2]`` down to ``features[2]``
    (stride 4); the output has ``out_channels`` channels at stride 4."""

    def __init__(self, encoder_channels: Sequence[int], out_channels: int = 32,
                 interpolation: str = "bilinear") -> None:
        super().__init__()
        if len(encoder_channels) < 4:
            raise ValueError(f"PAN needs encoder_depth >= 3, got {len(encoder_channels) - 1}")
        interpolation = check_interpolation(interpolation)
        self.fpa = FPABlock(encoder_channels[-1], out_channels, interpolation)
        skip_channels = list(encoder_channels[2:-1])[::-1]  # deepest skip first
        self.gaus = nn.ModuleList(GAUBlock(channels, out_channels, interpolation) for channels in skip_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.fpa(features[-1])
        skips = features[2:-1][::-1]
        for gau, skip in zip(self.gaus, skips, strict=True):
            x = gau(skip, x)
        return x


@register_model
class PAN(SegmentationModel):
    """PAN: feature pyramid attention on a dilated encoder, global attention upsampling to stride 4.

    Li et al., https://arxiv.org/abs/1805.10180

    Example:
        >>> model = segfold.create_model("PAN", encoder_name="resnet34", classes=3)
        >>> masks = model.predict(images)  # (N, 3, H, W)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", encoder_output_stride: int = 16,
                 decoder_channels: int = 32, decoder_interpolation: str = "bilinear", in_channels: int = 3,
                 classes: int = 1, activation: ActivationSpec = None, upsampling: int = 4,
                 aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if encoder_output_stride not in PAN_OUTPUT_STRIDES:
            raise ValueError(f"PAN: encoder_output_stride={encoder_output_stride!r} is not supported; use 16 or 32")
        if encoder_depth not in (3, 4, 5):
            raise ValueError(f"PAN: encoder_depth={encoder_depth!r} is not supported; use 3, 4 or 5")
        if upsampling != 4:
            raise ValueError(f"PAN: upsampling={upsampling!r}: the decoder output has stride 4, so the head must "
                             f"upsample by 4")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, output_stride=encoder_output_stride, **kwargs)
        decoder = PANDecoder(encoder.out_channels, decoder_channels, decoder_interpolation)
        self.assemble(encoder, decoder, decoder_channels, classes=classes, activation=activation,
                      aux_params=aux_params, head_kernel_size=3, head_upsampling=upsampling)
