"""FPN for segmentation: Lin et al., "Feature Pyramid Networks for Object Detection",
https://arxiv.org/abs/1612.03144, with the semantic-segmentation branch of Kirillov et al.,
"Panoptic Feature Pyramid Networks", https://arxiv.org/abs/1901.02446

Top-down pyramid over the encoder levels from the deepest one down to stride 4; each pyramid level
goes through 3x3 conv-GroupNorm-ReLU blocks (with 2x upsampling) to stride 4, the levels are summed
or concatenated, and the head upsamples by ``upsampling`` (4) to the input size.

NOTE with encoder_depth 3 or 4 the pyramid simply has fewer levels (still ending at stride 4).
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

MERGE_POLICIES = ("add", "cat")
GROUPS = 32


class ConvGroupNormReLU(nn.Sequential):
    """3x3 conv -> GroupNorm(32) -> ReLU, then an optional 2x bilinear upsampling."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(GROUPS, out_channels),
            nn.ReLU(inplace=True),
        ]
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        super().__init__(*layers)


def segmentation_branch(in_channels: int, out_channels: int, upsamples: int) -> nn.Sequential:
    """``max(upsamples, 1)`` conv blocks taking a pyramid level ``upsamples`` octaves down to stride 4."""
    blocks = [ConvGroupNormReLU(in_channels, out_channels, upsample=upsamples > 0)]
    blocks += [ConvGroupNormReLU(out_channels, out_channels, upsample=True) for _ in range(1, upsamples)]
    return nn.Sequential(*blocks)


class FPNDecoder(nn.Module):
    """Lateral 1x1 convs + top-down path, per-level segmentation branches, merge by sum or concatenation."""

    def __init__(self, encoder_channels: Sequence[int], pyramid_channels: int = 256, segmentation_channels: int = 128,
                 dropout: float = 0.2, merge_policy: str = "add", interpolation: str = "nearest") -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth < 2:
            raise ValueError(f"FPN needs encoder_depth >= 2 (its pyramid ends at stride 4), got {depth}")
        if merge_policy not in MERGE_POLICIES:
            raise ValueError(f"decoder_merge_policy={merge_policy!r}: use 'add' or 'cat'")
        if segmentation_channels % GROUPS:
            raise ValueError(f"decoder_segmentation_channels={segmentation_channels} must be a multiple of {GROUPS} "
                             f"(GroupNorm with {GROUPS} groups)")
        self.levels = list(range(depth, 1, -1))  # pyramid levels, deepest first, down to stride 4 (level 2)
        self.merge_policy = merge_policy
        self.interpolation = check_interpolation(interpolation)
        self.lateral = nn.ModuleList(nn.Conv2d(encoder_channels[level], pyramid_channels, 1) for level in self.levels)
        self.branches = nn.ModuleList(segmentation_branch(pyramid_channels, segmentation_channels, level - 2)
                                      for level in self.levels)
        self.dropout = nn.Dropout2d(p=dropout)
        self.out_channels = segmentation_channels * (len(self.levels) if merge_policy == "cat" else 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pyramid: list[torch.Tensor] = []
        for lateral, level in zip(self.lateral, self.levels, strict=True):
            x = lateral(features[level])
            if pyramid:
                x = x + interpolate_to(pyramid[-1], x.shape[-2:], self.interpolation)
            pyramid.append(x)
        branches = [branch(p) for branch, p in zip(self.branches, pyramid, strict=True)]
        merged = torch.cat(branches, dim=1) if self.merge_policy == "cat" else torch.stack(branches).sum(dim=0)
        return self.dropout(merged)


@register_model
class FPN(SegmentationModel):
    """Feature Pyramid Network decoder; masks are predicted at stride 4 and upsampled.

    Example:
        >>> model = segfold.FPN("resnet34", encoder_weights="imagenet", classes=4, decoder_merge_policy="cat")
        >>> masks = model.predict(images)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", decoder_pyramid_channels: int = 256,
                 decoder_segmentation_channels: int = 128, decoder_merge_policy: str = "add",
                 decoder_dropout: float = 0.2, decoder_interpolation: str = "nearest", in_channels: int = 3,
                 classes: int = 1, activation: ActivationSpec = None, upsampling: int = 4,
                 aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if upsampling != 4:
            raise ValueError(f"FPN predicts at stride 4, so upsampling must be 4 to give masks of the input's size "
                             f"(got {upsampling})")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, **kwargs)
        decoder = FPNDecoder(encoder.out_channels, pyramid_channels=decoder_pyramid_channels,
                             segmentation_channels=decoder_segmentation_channels, dropout=decoder_dropout,
                             merge_policy=decoder_merge_policy, interpolation=decoder_interpolation)
        self.assemble(encoder, decoder, decoder.out_channels, classes=classes, activation=activation,
                      aux_params=aux_params, head_kernel_size=1, head_upsampling=upsampling)
