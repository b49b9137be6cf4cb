"""U-Net: Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
https://arxiv.org/abs/1505.04597
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import NormSpec, UpsampleBlock, resolve_use_norm
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model


def check_decoder_channels(decoder_channels: Sequence[int], encoder_depth: int, arch: str) -> list[int]:
    """``decoder_channels`` as a list, one entry per decoder block (= encoder_depth)."""
    channels = list(decoder_channels)
    if len(channels) != encoder_depth:
        raise ValueError(f"{arch}: decoder_channels has {len(channels)} entries but encoder_depth={encoder_depth}; "
                         f"give one channel count per block, e.g. {[256, 128, 64, 32, 16][:encoder_depth]}")
    return channels


class UnetDecoder(nn.Module):
    """From the deepest feature up to stride 1, one :class:`UpsampleBlock` per level with that level's skip."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int],
                 use_norm: NormSpec = "batchnorm", attention_type: str | None = None,
                 interpolation: str = "nearest") -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        # block k takes the previous output, upsamples to level depth-1-k and adds that level's skip
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        skip_channels = [encoder_channels[depth - 1 - k] if k < depth - 1 else 0 for k in range(depth)]
        self.blocks = nn.ModuleList(
            UpsampleBlock(i, s, o, use_norm=use_norm, attention_type=attention_type, interpolation=interpolation)
            for i, s, o in zip(in_channels, skip_channels, decoder_channels, strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(features) - 1
        x = features[-1]
        for k, block in enumerate(self.blocks):
            level = depth - 1 - k  # the level this block outputs; level 0 is the input's size
            x = block(x, features[level].shape[-2:], [features[level]] if level > 0 else None)
        return x


@register_model
class Unet(SegmentationModel):
    """U-Net: a decoder that upsamples step by step and concatenates the encoder feature of each level.

    Example:
        >>> model = segfold.Unet("resnet34", encoder_weights="imagenet", classes=3)
        >>> masks = model.predict(images)  # (N, 3, H, W) logits
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", decoder_use_norm: NormSpec = "batchnorm",
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), decoder_attention_type: str | None = None,
                 decoder_interpolation: str = "nearest", in_channels: int = 3, classes: int = 1,
                 activation: ActivationSpec = None, aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        decoder_use_norm = resolve_use_norm(decoder_use_norm, kwargs)
        channels = check_decoder_channels(decoder_channels, encoder_depth, "Unet")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, **kwargs)
        decoder = UnetDecoder(encoder.out_channels, channels, use_norm=decoder_use_norm,
                              attention_type=decoder_attention_type, interpolation=decoder_interpolation)
        self.assemble(encoder, decoder, channels[-1], classes=classes, activation=activation, aux_params=aux_params,
                      head_kernel_size=3)
