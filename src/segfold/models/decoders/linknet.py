"""LinkNet: Chaurasia and Culurciello, "LinkNet: Exploiting Encoder Representations for Efficient Semantic
Segmentation", https://arxiv.org/abs/1707.03718

Each decoder block is 1x1 conv (to a quarter of the channels), a stride-2 transposed conv, and a 1x1
conv to the next level's channels; the encoder feature of that level is then added (not concatenated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import BatchNormLeakyReLU, Conv2dNormAct, NormSpec, get_norm_layer, resolve_use_norm
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model

PREFINAL_CHANNELS = 32


class LinknetBlock(nn.Sequential):
    """1x1 conv -> 2x transposed conv -> 1x1 conv, each followed by norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, use_norm: NormSpec = "batchnorm") -> None:
        middle = in_channels // 4
        norm_layer, _ = get_norm_layer(use_norm)
        norm = norm_layer(middle)
        act: nn.Module = nn.Identity() if isinstance(norm, BatchNormLeakyReLU) else nn.ReLU(inplace=True)
        super().__init__(
            Conv2dNormAct(in_channels, middle, 1, use_norm=use_norm),
            nn.Sequential(nn.ConvTranspose2d(middle, middle, kernel_size=4, stride=2, padding=1), norm, act),
            Conv2dNormAct(middle, out_channels, 1, use_norm=use_norm),
        )


class LinknetDecoder(nn.Module):
    """One block per level from the deepest feature up to stride 1, adding each level's encoder feature."""

    def __init__(self, encoder_channels: Sequence[int], prefinal_channels: int = PREFINAL_CHANNELS,
                 use_norm: NormSpec = "batchnorm") -> None:
        super().__init__()
        if len(encoder_channels) > 2 and encoder_channels[1] == 0:
            raise ValueError("Linknet adds the stride-2 encoder feature, but this encoder's first feature is at "
                             "stride 4 (ConvNeXt, ViT-like, MiT): use Unet or FPN with it")
        # from the deepest feature (skipping the input itself) down to the prefinal channels
        channels = [*encoder_channels[:0:-1], prefinal_channels]
        self.blocks = nn.ModuleList(LinknetBlock(i, o, use_norm=use_norm)
                                    for i, o in zip(channels[:-1], channels[1:], strict=True))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(features) - 1
        x = features[-1]
        for k, block in enumerate(self.blocks):
            level = depth - 1 - k
            x = block(x)
            if level > 0:
                x = x + features[level]
        return x


@register_model
class Linknet(SegmentationModel):
    """LinkNet: a light decoder that adds encoder features instead of concatenating them.

    Example:
        >>> model = segfold.Linknet("resnet18", encoder_weights="imagenet", classes=1)
        >>> masks = model.predict(images)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", decoder_use_norm: NormSpec = "batchnorm",
                 in_channels: int = 3, classes: int = 1, activation: ActivationSpec = None,
                 aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        decoder_use_norm = resolve_use_norm(decoder_use_norm, kwargs)
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, **kwargs)
        decoder = LinknetDecoder(encoder.out_channels, use_norm=decoder_use_norm)
        self.assemble(encoder, decoder, PREFINAL_CHANNELS, classes=classes, activation=activation,
                      aux_params=aux_params, head_kernel_size=1)
