"""DPT: Dense Prediction Transformer. Token maps from several blocks of a plain ViT are reassembled
into a 4-level pyramid (strides 4, 8, 16, 32) and fused top-down by residual conv units.

Ranftl et al., "Vision Transformers for Dense Prediction", https://arxiv.org/abs/2103.13413
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segfold.models.blocks import interpolate_to
from segfold.models.heads import ActivationSpec, get_activation

READOUTS = ("ignore", "add", "cat")
PYRAMID_STRIDES = (4, 8, 16, 32)


class Readout(nn.Module):
    """How the class token enters the patch tokens: "ignore" drops it, "add" adds it to every token,
    "cat" concatenates it to every token and projects back with a linear layer + GELU."""

    def __init__(self, embed_dim: int, readout: str = "cat") -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"decoder_readout={readout!r} is not supported; use one of {', '.join(READOUTS)}")
        self.readout = readout
        self.project = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) if readout == "cat" else None

    def forward(self, x: torch.Tensor, prefix_tokens: torch.Tensor | None) -> torch.Tensor:
        if self.readout == "ignore":
            return x
        if prefix_tokens is None or prefix_tokens.shape[1] == 0:
            raise ValueError(f"decoder_readout={self.readout!r} needs the encoder's class token, and this encoder has "
                             f"none; use decoder_readout='ignore'")
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, h*w, D)
        cls_token = prefix_tokens[:, :1].expand(-1, tokens.shape[1], -1)  # (N, h*w, D)
        if self.project is None:
            tokens = tokens + cls_token
        else:
            tokens = self.project(torch.cat([tokens, cls_token], dim=-1))
        return tokens.transpose(1, 2).reshape(n, c, h, w)


def _resample(channels: int, patch_size: int, stride: int) -> nn.Module:
    """Bring a patch-stride map to ``stride``: transposed conv up, identity, or strided 3x3 conv down."""
    scale = patch_size / stride
    if scale > 1:
        factor = int(scale)
        return nn.ConvTranspose2d(channels, channels, factor, stride=factor)
    if scale == 1:
        return nn.Identity()
    return nn.Conv2d(channels, channels, 3, stride=int(1 / scale), padding=1)


class Reassemble(nn.Sequential):
    """Token map -> 1x1 projection to ``mid_channels`` -> resample to ``stride`` -> 3x3 conv to ``out_channels``."""

    def __init__(self, embed_dim: int, mid_channels: int, out_channels: int, patch_size: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(embed_dim, mid_channels, 1),
            _resample(mid_channels, patch_size, stride),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
        )


class ResidualConvUnit(nn.Module):
    """``x + (ReLU -> conv3x3 -> BN -> ReLU -> conv3x3 -> BN)(x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FusionBlock(nn.Module):
    """Refine the level's feature (residual unit), add the coarser path, refine again, upsample to the next
    level's size and project with a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.refine_skip = ResidualConvUnit(channels)
        self.refine_sum = ResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, feature: torch.Tensor, path: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor:
        # NOTE the paper's deepest block skips the first unit (there is no path to add yet); here every
        # level is refined, so all parameters are used and train.
        x = self.refine_skip(feature)
        if path is not None:
            x = x + path
        x = self.refine_sum(x)
        return self.project(interpolate_to(x, tuple(size), mode="bilinear"))


class DPTDecoder(nn.Module):
    """Readout, reassemble and top-down fusion of ``len(intermediate_channels)`` ViT token maps.

    ``forward(features, prefix_tokens)`` takes the token maps (N, D, h, w), shallowest first, and the
    prefix tokens of each (N, P, D) or None; the output has ``fusion_channels`` channels at half the
    input size (stride ``patch_size / 2``... i.e. ``h * patch_size / 2``).
    """

    def __init__(self, embed_dim: int, patch_size: int, readout: str = "cat",
                 intermediate_channels: Sequence[int] = (256, 512, 1024, 1024), fusion_channels: int = 256) -> None:
        super().__init__()
        intermediate_channels = list(intermediate_channels)
        if len(intermediate_channels) != len(PYRAMID_STRIDES):
            raise ValueError(f"decoder_intermediate_channels={intermediate_channels!r}: give one width per pyramid "
                             f"level ({len(PYRAMID_STRIDES)}: strides {PYRAMID_STRIDES})")
        if patch_size % 2:
            raise ValueError(f"DPT needs an even patch size, got {patch_size}")
        self.patch_size = patch_size
        self.readouts = nn.ModuleList(Readout(embed_dim, readout) for _ in PYRAMID_STRIDES)
        self.reassembles = nn.ModuleList(
            Reassemble(embed_dim, mid, fusion_channels, patch_size, stride)
            for mid, stride in zip(intermediate_channels, PYRAMID_STRIDES, strict=True)
        )
        self.fusions = nn.ModuleList(FusionBlock(fusion_channels) for _ in PYRAMID_STRIDES)

    def forward(self, features: Sequence[torch.Tensor],
                prefix_tokens: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if len(features) != len(self.reassembles):
            raise ValueError(f"DPT decoder expects {len(self.reassembles)} token maps, got {len(features)}")
        prefixes = list(prefix_tokens) if prefix_tokens is not None else [None] * len(features)
        levels = [reassemble(readout(feature, prefix))
                  for readout, reassemble, feature, prefix in zip(self.readouts, self.reassembles, features, prefixes,
                                                                  strict=True)]
        height, width = features[0].shape[-2:]
        # each fusion output takes the size of the next finer level; the last one stride patch_size / 2
        sizes = [level.shape[-2:] for level in levels[:-1]][::-1]
        sizes.append((height * self.patch_size // 2, width * self.patch_size // 2))
        path = None
        for fusion, level, size in zip(self.fusions, levels[::-1], sizes, strict=True):
            path = fusion(level, path, size)
        return path


class DPTSegmentationHead(nn.Sequential):
    """3x3 conv-BN-ReLU, dropout 0.1, 1x1 conv to ``classes``, bilinear x``upsampling``, activation."""

    def __init__(self, in_channels: int, classes: int, upsampling: int = 2, activation: ActivationSpec = None) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(in_channels, classes, 1),
            nn.Upsample(scale_factor=upsampling, mode="bilinear", align_corners=False),
            get_activation(activation),
        )
