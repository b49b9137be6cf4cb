"""UNet++: Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
https://arxiv.org/abs/1807.10165

Notation of the paper: ``X[i, j]`` is the node at level ``i`` (stride ``2**i``) after ``j`` convolution
blocks along the skip path; ``X[i, 0]`` are the encoder features. Node ``X[i, j]`` upsamples
``X[i+1, j-1]`` and concatenates ``X[i, 0..j-1]``. The top row with skips is level 1 (stride 2, the
shallowest encoder feature); its last node ``X[1, depth-1]`` goes through one more block to stride 1.
The nodes on the diagonal ``i + j == depth`` form the main path and take ``decoder_channels``; the
nested ones keep the channels of their level's encoder feature.

Deep supervision: the top-row nodes ``X[1, 1..depth-2]`` (the outputs of the nested sub-networks) each
get a 1x1 head; in training the model then also returns their masks, upsampled to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import NormSpec, UpsampleBlock, resolve_use_norm
from segfold.models.decoders.unet import check_decoder_channels
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model


class UnetPlusPlusDecoder(nn.Module):
    """Nested dense skip paths; returns ``(mask_features, [top-row features])`` when deep-supervised in training."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int],
                 use_norm: NormSpec = "batchnorm", attention_type: str | None = None,
                 interpolation: str = "nearest", deep_supervision: bool = False) -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth > 1 and encoder_channels[1] == 0:
            raise ValueError("UnetPlusPlus needs an encoder with a stride-2 feature; this encoder's first feature "
                             "is at stride 4 (ConvNeXt, ViT-like, MiT): use Unet or FPN with it")
        if deep_supervision and depth < 3:
            raise ValueError(f"deep_supervision needs encoder_depth >= 3 (got {depth}): with fewer levels there is "
                             f"no nested decoder to supervise")
        self.depth = depth
        self.deep_supervision = deep_supervision

        def channels(i: int, j: int) -> int:
            if j == 0:
                return encoder_channels[i]
            return decoder_channels[depth - 1 - i] if i + j == depth else encoder_channels[i]

        block = {"use_norm": use_norm, "attention_type": attention_type, "interpolation": interpolation}
        self.nodes = nn.ModuleDict()
        for j in range(1, depth):
            for i in range(1, depth - j + 1):
                # skips X[i, 0..j-1] all have the channels of level i's encoder feature
                self.nodes[f"x_{i}_{j}"] = UpsampleBlock(channels(i + 1, j - 1), j * encoder_channels[i],
                                                         channels(i, j), **block)
        self.final = UpsampleBlock(channels(1, depth - 1), 0, decoder_channels[-1], **block)
        self.deep_channels = [encoder_channels[1]] * (depth - 2) if deep_supervision else []

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        depth = self.depth
        x: dict[tuple[int, int], torch.Tensor] = {(i, 0): features[i] for i in range(1, depth + 1)}
        for j in range(1, depth):
            for i in range(1, depth - j + 1):
                skips = [x[i, k] for k in range(j)]
                x[i, j] = self.nodes[f"x_{i}_{j}"](x[i + 1, j - 1], features[i].shape[-2:], skips)
        out = self.final(x[1, depth - 1], features[0].shape[-2:])
        if self.deep_supervision and self.training:
            return out, [x[1, j] for j in range(1, depth - 1)]
        return out


@register_model
class UnetPlusPlus(SegmentationModel):
    """UNet++: U-Net with nested, densely connected skip paths (optionally deep-supervised).

    Example:
        >>> model = segfold.UnetPlusPlus("efficientnet-b0", encoder_weights=None, classes=4, deep_supervision=True)
        >>> masks, deep = model(images)  # in training; read with segfold.models.unpack_outputs
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 encoder_weights: str | None = "imagenet", decoder_use_norm: NormSpec = "batchnorm",
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), decoder_attention_type: str | None = None,
                 decoder_interpolation: str = "nearest", in_channels: int = 3, classes: int = 1,
                 activation: ActivationSpec = None, aux_params: dict[str, Any] | None = None,
                 deep_supervision: bool = False, **kwargs: Any) -> None:
        super().__init__()
        decoder_use_norm = resolve_use_norm(decoder_use_norm, kwargs)
        channels = check_decoder_channels(decoder_channels, encoder_depth, "UnetPlusPlus")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, **kwargs)
        decoder = UnetPlusPlusDecoder(encoder.out_channels, channels, use_norm=decoder_use_norm,
                                      attention_type=decoder_attention_type, interpolation=decoder_interpolation,
                                      deep_supervision=deep_supervision)
        self.assemble(encoder, decoder, channels[-1], classes=classes, activation=activation, aux_params=aux_params,
                      head_kernel_size=3, deep_channels=decoder.deep_channels)
