"""Segformer: the all-MLP decoder (a linear layer per encoder stage, upsample to stride 4,
concatenate, 1x1 fuse). With the Mix Transformer encoders ``mit_b0`` .. ``mit_b5`` this is the
paper's model; it also runs on CNN encoders.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
https://arxiv.org/abs/2105.15203
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import Conv2dNormAct, interpolate_to
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model


class ChannelMLP(nn.Module):
    """A linear layer over the channels of an NCHW map (the paper's per-stage "MLP")."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        x = self.linear(x.flatten(2).transpose(1, 2))  # (N, H*W, C_out)
        return x.transpose(1, 2).reshape(n, -1, h, w)


class SegformerDecoder(nn.Module):
    """All-MLP decoder over ``features[1:]`` (empty stages, ``out_channels == 0``, are skipped): each
    stage is projected to ``out_channels``, resized to the stride-4 feature ``features[2]``,
    concatenated deepest first, and fused with a 1x1 conv-BN-ReLU."""

    def __init__(self, encoder_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        if len(encoder_channels) < 3:
            raise ValueError(f"Segformer needs encoder_depth >= 2 (a stride-4 feature), "
                             f"got {len(encoder_channels) - 1}")
        # NOTE (index, channels) of the stages used, deepest first, as in the paper's concatenation.
        self.stages = [(i, c) for i, c in enumerate(encoder_channels) if i >= 1 and c > 0][::-1]
        self.mlps = nn.ModuleList(ChannelMLP(c, out_channels) for _, c in self.stages)
        self.fuse = Conv2dNormAct(len(self.stages) * out_channels, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[2].shape[-2:]  # stride 4
        projected = [interpolate_to(mlp(features[i]), size, mode="bilinear")
                     for mlp, (i, _) in zip(self.mlps, self.stages, strict=True)]
        return self.fuse(torch.cat(projected, dim=1))


@register_model
class Segformer(SegmentationModel):
    """Segformer: all-MLP decoder at stride 4; ``Segformer(encoder_name="mit_b0")`` is the paper's B0.

    Xie et al., https://arxiv.org/abs/2105.15203

    Example:
        >>> model = segfold.create_model("Segformer", encoder_name="mit_b0", classes=3)
        >>> masks = model.predict(images)  # (N, 3, H, W)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", decoder_segmentation_channels: int = 256,
                 in_channels: int = 3, classes: int = 1, activation: ActivationSpec = None, upsampling: int = 4,
                 aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if upsampling != 4:
            raise ValueError(f"Segformer: upsampling={upsampling!r}: the decoder output has stride 4, so the head "
                             f"must upsample by 4")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, **kwargs)
        decoder = SegformerDecoder(encoder.out_channels, decoder_segmentation_channels)
        self.assemble(encoder, decoder, decoder_segmentation_channels, classes=classes, activation=activation,
                      aux_params=aux_params, head_kernel_size=1, head_upsampling=upsampling)
