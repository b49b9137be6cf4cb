"""DeepLabV3 and DeepLabV3+: atrous spatial pyramid pooling on a dilated encoder.

- DeepLabV3: Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
  https://arxiv.org/abs/1706.05587
- DeepLabV3+: Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
  Segmentation", https://arxiv.org/abs/1802.02611
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import Conv2dNormAct, interpolate_to
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model

DEEPLAB_OUTPUT_STRIDES = (8, 16)
HIGHRES_CHANNELS = 48  # the paper's reduction of the stride-4 skip feature


class SeparableConv2d(nn.Sequential):
    """Depthwise (optionally dilated) convolution followed by a pointwise one, both without bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation,
                      groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


def atrous_conv(in_channels: int, out_channels: int, dilation: int, separable: bool) -> nn.Sequential:
    """3x3 convolution with ``dilation`` (plain or depthwise-separable) -> BatchNorm -> ReLU."""
    conv: nn.Module
    if separable:
        conv = SeparableConv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
    else:
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average -> 1x1 conv-BN-ReLU -> broadcast back to the input size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), Conv2dNormAct(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = super().forward(x)  # (N, C, 1, 1)
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, the image-level branch;
    concatenated and projected with a 1x1 conv-BN-ReLU and dropout."""

    def __init__(self, in_channels: int, out_channels: int, atrous_rates: Sequence[int], separable: bool = False,
                 dropout: float = 0.5) -> None:
        super().__init__()
        branches: list[nn.Module] = [Conv2dNormAct(in_channels, out_channels, 1)]
        branches += [atrous_conv(in_channels, out_channels, rate, separable) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            Conv2dNormAct(len(branches) * out_channels, out_channels, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def _check_rates(atrous_rates: Iterable[int]) -> tuple[int, ...]:
    rates = tuple(atrous_rates)
    if len(rates) != 3 or not all(isinstance(rate, int) and rate >= 1 for rate in rates):
        raise ValueError(f"decoder_atrous_rates={rates!r}: give three positive integers, e.g. (12, 24, 36)")
    return rates


class DeepLabV3Decoder(nn.Sequential):
    """ASPP on the deepest feature, then a 3x3 conv-BN-ReLU; the output keeps the encoder's output stride."""

    def __init__(self, encoder_channels: Sequence[int], out_channels: int = 256,
                 atrous_rates: Iterable[int] = (12, 24, 36), aspp_separable: bool = False,
                 aspp_dropout: float = 0.5) -> None:
        super().__init__(
            ASPP(encoder_channels[-1], out_channels, _check_rates(atrous_rates), aspp_separable, aspp_dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features[-1])


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP + separable 3x3 on the deepest feature, upsampled to the stride-4 feature (``features[2]``),
    concatenated with its 48-channel reduction and fused by a separable 3x3 conv-BN-ReLU."""

    def __init__(self, encoder_channels: Sequence[int], out_channels: int = 256,
                 atrous_rates: Iterable[int] = (12, 24, 36), aspp_separable: bool = True,
                 aspp_dropout: float = 0.5) -> None:
        super().__init__()
        if len(encoder_channels) < 4:
            raise ValueError(f"DeepLabV3Plus needs encoder_depth >= 3 (a stride-4 skip feature and a deeper one); "
                             f"got {len(encoder_channels) - 1}")
        self.aspp = nn.Sequential(
            ASPP(encoder_channels[-1], out_channels, _check_rates(atrous_rates), aspp_separable, aspp_dropout),
            SeparableConv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.highres = Conv2dNormAct(encoder_channels[2], HIGHRES_CHANNELS, 1)
        self.fuse = nn.Sequential(
            SeparableConv2d(out_channels + HIGHRES_CHANNELS, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skip = features[2]  # stride 4
        deep = interpolate_to(self.aspp(features[-1]), skip.shape[-2:], mode="bilinear")
        return self.fuse(torch.cat([deep, self.highres(skip)], dim=1))


def _check_output_stride(arch: str, output_stride: int, allowed: tuple[int, ...]) -> None:
    if output_stride not in allowed:
        raise ValueError(f"{arch}: encoder_output_stride={output_stride!r} is not supported; use one of "
                         f"{', '.join(map(str, allowed))}")


@register_model
class DeepLabV3(SegmentationModel):
    """DeepLabV3: ASPP on a dilated encoder (output stride 8 by default), upsampled straight to the input.

    Chen et al., https://arxiv.org/abs/1706.05587

    Example:
        >>> model = segfold.create_model("DeepLabV3", encoder_name="resnet34", classes=3)
        >>> masks = model.predict(images)  # (N, 3, H, W)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", encoder_output_stride: int = 8,
                 decoder_channels: int = 256, decoder_atrous_rates: Iterable[int] = (12, 24, 36),
                 decoder_aspp_separable: bool = False, decoder_aspp_dropout: float = 0.5, in_channels: int = 3,
                 classes: int = 1, activation: ActivationSpec = None, upsampling: int | None = None,
                 aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        _check_output_stride("DeepLabV3", encoder_output_stride, DEEPLAB_OUTPUT_STRIDES)
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, output_stride=encoder_output_stride, **kwargs)
        decoder = DeepLabV3Decoder(encoder.out_channels, decoder_channels, decoder_atrous_rates,
                                   decoder_aspp_separable, decoder_aspp_dropout)
        # NOTE the decoder keeps the deepest feature's stride, so by default the head upsamples by it.
        stride = max(encoder.reductions)
        if upsampling is not None and upsampling != stride:
            raise ValueError(f"DeepLabV3: upsampling={upsampling} does not bring the decoder output (stride {stride}) "
                             f"back to the input size; leave it None (or set {stride})")
        self.assemble(encoder, decoder, decoder_channels, classes=classes, activation=activation,
                      aux_params=aux_params, head_kernel_size=1, head_upsampling=stride)


@register_model
class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+: DeepLabV3's ASPP with a light decoder that adds back the stride-4 feature.

    Chen et al., https://arxiv.org/abs/1802.02611

    Example:
        >>> model = segfold.create_model("DeepLabV3Plus", encoder_name="resnet34", classes=3)
        >>> masks = model.predict(images)  # (N, 3, H, W)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", encoder_output_stride: int = 16,
                 decoder_channels: int = 256, decoder_atrous_rates: Iterable[int] = (12, 24, 36),
                 decoder_aspp_separable: bool = True, decoder_aspp_dropout: float = 0.5, in_channels: int = 3,
                 classes: int = 1, activation: ActivationSpec = None, upsampling: int = 4,
                 aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        _check_output_stride("DeepLabV3Plus", encoder_output_stride, DEEPLAB_OUTPUT_STRIDES)
        if encoder_depth not in (3, 4, 5):
            raise ValueError(f"DeepLabV3Plus: encoder_depth={encoder_depth!r} is not supported; use 3, 4 or 5")
        if upsampling != 4:
            raise ValueError(f"DeepLabV3Plus: upsampling={upsampling!r}: the decoder output has stride 4, so the head "
                             f"must upsample by 4")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, output_stride=encoder_output_stride, **kwargs)
        decoder = DeepLabV3PlusDecoder(encoder.out_channels, decoder_channels, decoder_atrous_rates,
                                       decoder_aspp_separable, decoder_aspp_dropout)
        self.assemble(encoder, decoder, decoder_channels, classes=classes, activation=activation,
                      aux_params=aux_params, head_kernel_size=1, head_upsampling=upsampling)
