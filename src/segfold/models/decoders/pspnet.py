"""PSPNet: Zhao et al., "Pyramid Scene Parsing Network", https://arxiv.org/abs/1612.01105

Pyramid pooling on the deepest feature (of a shallow encoder, depth 3 by default): average-pool to
1x1, 2x2, 3x3 and 6x6 grids, reduce each to a quarter of the channels, upsample back, concatenate
with the feature, fuse with a 1x1 conv; the head upsamples by ``upsampling`` (= the encoder's stride).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segfold.models.base import SegmentationModel
from segfold.models.blocks import Conv2dNormAct, NormSpec, resolve_use_norm
from segfold.models.heads import ActivationSpec
from segfold.models.registry import register_model

POOL_SIZES = (1, 2, 3, 6)


class PyramidPooling(nn.Module):
    """Concatenate the input with its pooled, reduced and re-upsampled versions (channels x2)."""

    def __init__(self, in_channels: int, sizes: tuple[int, ...] = POOL_SIZES, use_norm: NormSpec = "batchnorm") -> None:
        super().__init__()
        branch_channels = in_channels // len(sizes)
        # NOTE the 1x1-pooled branch has no norm: a batch norm over a single value per image is undefined for
        # batch size 1 in training.
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size),
                          Conv2dNormAct(in_channels, branch_channels, 1, use_norm=use_norm if size > 1 else "identity"))
            for size in sizes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False) for branch in self.branches]
        return torch.cat([x, *pooled], dim=1)


class PSPDecoder(nn.Sequential):
    """Pyramid pooling on the deepest feature -> 1x1 conv-norm-act -> dropout."""

    def __init__(self, in_channels: int, out_channels: int = 512, use_norm: NormSpec = "batchnorm",
                 dropout: float = 0.2) -> None:
        super().__init__(
            PyramidPooling(in_channels, use_norm=use_norm),
            Conv2dNormAct(2 * in_channels, out_channels, 1, use_norm=use_norm),
            nn.Dropout2d(p=dropout),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features[-1])


@register_model
class PSPNet(SegmentationModel):
    """PSPNet: pyramid pooling module on a shallow encoder; masks at the encoder's stride, upsampled.

    Example:
        >>> model = segfold.PSPNet("resnet34", encoder_weights="imagenet", classes=1)  # encoder_depth=3
        >>> masks = model.predict(images)
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_weights: str | None = "imagenet",
                 encoder_depth: int = 3, psp_out_channels: int = 512, decoder_use_norm: NormSpec = "batchnorm",
                 psp_dropout: float = 0.2, in_channels: int = 3, classes: int = 1, activation: ActivationSpec = None,
                 upsampling: int = 8, aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        decoder_use_norm = resolve_use_norm(decoder_use_norm, kwargs, old_name="psp_use_batchnorm")
        encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                      weights=encoder_weights, **kwargs)
        stride = max(encoder.reductions)
        if upsampling != stride:
            raise ValueError(f"PSPNet: upsampling={upsampling} but the encoder's output stride is {stride} at "
                             f"encoder_depth={encoder_depth}; pass upsampling={stride} so masks have the input's size")
        decoder = PSPDecoder(encoder.out_channels[-1], psp_out_channels, use_norm=decoder_use_norm,
                             dropout=psp_dropout)
        self.assemble(encoder, decoder, psp_out_channels, classes=classes, activation=activation,
                      aux_params=aux_params, head_kernel_size=3, head_upsampling=upsampling)
