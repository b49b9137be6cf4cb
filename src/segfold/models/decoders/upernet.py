"""UPerNet: a pyramid pooling module on the deepest feature feeding a feature pyramid network whose
levels are all upsampled to stride 4 and fused.

Xiao et al., "Unified Perceptual Parsing for Scene Understanding", https://arxiv.org/abs/1807.10221
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import Conv2dNormAct, LayerNorm2d, NormSpec, interpolate_to, resolve_use_norm
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model

POOL_SIZES = (1, 2, 3, 6)


class PyramidPooling(nn.Module):
    """Average-pool to each of ``pool_sizes``, 1x1 conv-norm-ReLU, upsample back, concatenate with the
    input and fuse with a 3x3 conv-norm-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, pool_sizes: Sequence[int] = POOL_SIZES,
                 use_norm: NormSpec = "batchnorm") -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size), Conv2dNormAct(in_channels, out_channels, 1, use_norm=use_norm))
            for size in pool_sizes
        )
        self.fuse = Conv2dNormAct(in_channels + len(pool_sizes) * out_channels, out_channels, 3, padding=1,
                                  use_norm=use_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [interpolate_to(stage(x), size, mode="bilinear") for stage in self.stages]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class UPerNetDecoder(nn.Module):
    """UPerNet on ``features[2:]`` (stride 4 and deeper), each first normalised with a channel LayerNorm.

    The deepest feature goes through :class:`PyramidPooling`; each shallower one gets a 1x1 lateral
    conv, the top-down sum, and a 3x3 conv; all levels are upsampled to stride 4, concatenated and
    fused by a 3x3 conv-norm-ReLU.
    """

    def __init__(self, encoder_channels: Sequence[int], out_channels: int = 256,
                 use_norm: NormSpec = "batchnorm") -> None:
        super().__init__()
        channels = list(encoder_channels[2:])
        if not channels:
            raise ValueError(f"UPerNet needs encoder_depth >= 2, got {len(encoder_channels) - 1}")
        self.feature_norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in channels)
        self.ppm = PyramidPooling(channels[-1], out_channels, use_norm=use_norm)
        skip_channels = channels[:-1][::-1]  # deepest skip first
        self.lateral_convs = nn.ModuleList(Conv2dNormAct(c, out_channels, 1, use_norm=use_norm) for c in skip_channels)
        self.fpn_convs = nn.ModuleList(
            Conv2dNormAct(out_channels, out_channels, 3, padding=1, use_norm=use_norm) for _ in skip_channels
        )
        self.fuse = Conv2dNormAct(len(channels) * out_channels, out_channels, 3, padding=1, use_norm=use_norm)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        normed = [norm(feature) for norm, feature in zip(self.feature_norms, features[2:], strict=True)]
        top = self.ppm(normed[-1])
        levels = [top]
        for lateral, fpn_conv, skip in zip(self.lateral_convs, self.fpn_convs, normed[:-1][::-1], strict=True):
            top = lateral(skip) + interpolate_to(top, skip.shape[-2:], mode="bilinear")
            levels.append(fpn_conv(top))
        size = normed[0].shape[-2:]  # stride 4
        levels = [interpolate_to(level, size, mode="bilinear") for level in levels[::-1]]  # finest first
        return self.fuse(torch.cat(levels, dim=1))


@register_model
class UPerNet(SegmentationModel):
    """UPerNet: pyramid pooling + FPN, every level fused at stride 4.

    Xiao et al., https://arxiv.org/abs/1807.10221

    Example:
        >>> model = segfold.create_model("UPerNet", encoder_name="convnext_tiny", classes=3)
        >>> masks = model.predict(images)  # (N, 3, H, W)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", decoder_channels: int = 256,
                 decoder_use_norm: NormSpec = "batchnorm", in_channels: int = 3, classes: int = 1,
                 activation: ActivationSpec = None, upsampling: int = 4, aux_params: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        decoder_use_norm = resolve_use_norm(decoder_use_norm, kwargs)
        if upsampling != 4:
            raise ValueError(f"UPerNet: upsampling={upsampling!r}: the decoder output has stride 4, so the head "
                             f"must upsample by 4")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, **kwargs)
        decoder = UPerNetDecoder(encoder.out_channels, decoder_channels, use_norm=decoder_use_norm)
        self.assemble(encoder, decoder, decoder_channels, classes=classes, activation=activation,
                      aux_params=aux_params, head_kernel_size=1, head_upsampling=upsampling)
