"""DPT: Dense Prediction Transformer. Token maps from several blocks of a plain ViT are reassembled
into a pyramid (strides 4, 8, 16, 32 for the default four blocks) and fused top-down by residual
conv units.

Ranftl et al., "Vision Transformers for Dense Prediction", https://arxiv.org/abs/2103.13413
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segfold.encoders import get_vit_encoder
from segfold.models.base import SegmentationModel, initialize_head
from segfold.models.blocks import interpolate_to
from segfold.models.heads import ActivationSpec, get_activation
from segfold.models.registry import register_model

READOUTS = ("ignore", "add", "cat")
VIT_EXAMPLES = "test_vit, vit_*, deit_*, eva02_*, ..."


def pyramid_strides(levels: int) -> list[int]:
    """Strides of the reassembled pyramid, finest first: 4, 8, 16, 32, ... (4 levels: the paper's)."""
    return [4 * 2**i for i in range(levels)]


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
    """Readout, reassemble and top-down fusion of ViT token maps, one per entry of ``intermediate_channels``.

    ``forward(features, prefix_tokens)`` takes the token maps (N, D, h, w), shallowest first, and the
    prefix tokens of each (N, P, D) or None; the output has ``fusion_channels`` channels and size
    ``(h * patch_size / 2, w * patch_size / 2)``, half the input's.
    """

    def __init__(self, embed_dim: int, patch_size: int, readout: str = "cat",
                 intermediate_channels: Sequence[int] = (256, 512, 1024, 1024), fusion_channels: int = 256,
                 levels: int = 4) -> None:
        super().__init__()
        intermediate_channels = list(intermediate_channels)
        if len(intermediate_channels) != levels:
            raise ValueError(f"decoder_intermediate_channels={intermediate_channels!r}: give one width per pyramid "
                             f"level, i.e. per encoder block read ({levels}, the encoder_depth)")
        if patch_size % 2:
            raise ValueError(f"DPT needs an even patch size, got {patch_size}")
        self.patch_size = patch_size
        strides = pyramid_strides(levels)
        self.readouts = nn.ModuleList(Readout(embed_dim, readout) for _ in strides)
        self.reassembles = nn.ModuleList(
            Reassemble(embed_dim, mid, fusion_channels, patch_size, stride)
            for mid, stride in zip(intermediate_channels, strides, strict=True)
        )
        self.fusions = nn.ModuleList(FusionBlock(fusion_channels) for _ in strides)

    def forward(self, features: Sequence[torch.Tensor],
                prefix_tokens: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if len(features) != len(self.reassembles):
            raise ValueError(f"DPT decoder expects {len(self.reassembles)} token maps, got {len(features)}")
        prefixes = list(prefix_tokens) if prefix_tokens is not None else [None] * len(features)
        levels = [reassemble(readout(feature, prefix))
                  for readout, reassemble, feature, prefix in zip(self.readouts, self.reassembles, features, prefixes,
                                                                  strict=True)]
        height, width = features[0].shape[-2:]
        # each fusion output takes the size of the next finer level; the last one half the input size (stride 2)
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


@register_model
class DPT(SegmentationModel):
    """DPT: a plain ViT encoder (timm), readout + reassemble into a pyramid, residual fusion, stride-2 head.

    Ranftl et al., https://arxiv.org/abs/2103.13413. Takes ViT-style encoders only (test_vit, vit_*,
    deit_*, eva02_*, ...); input sizes are padded to a multiple of the patch size.

    Example:
        >>> model = segfold.create_model("DPT", encoder_name="vit_small_patch16_384", classes=3)
        >>> masks = model.predict(images)  # (N, 3, H, W)
    """

    def __init__(self, encoder_name: str = "tu-vit_base_patch16_224.augreg_in21k", encoder_depth: int = 4,
                 encoder_weights: str | None = "imagenet", encoder_output_indices: list[int] | None = None,
                 decoder_readout: str = "cat", decoder_intermediate_channels: Sequence[int] = (256, 512, 1024, 1024),
                 decoder_fusion_channels: int = 256, in_channels: int = 3, classes: int = 1,
                 activation: ActivationSpec = None, aux_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()

        if encoder_output_indices is not None and len(encoder_output_indices) != encoder_depth:
            raise ValueError(f"DPT: encoder_output_indices={list(encoder_output_indices)} must name encoder_depth="
                             f"{encoder_depth} blocks")
        if decoder_readout not in READOUTS:
            raise ValueError(f"decoder_readout={decoder_readout!r} is not supported; use one of {', '.join(READOUTS)}")
        out_indices = list(encoder_output_indices) if encoder_output_indices is not None else encoder_depth
        try:
            encoder = get_vit_encoder(encoder_name, in_channels=in_channels, out_indices=out_indices,
                                      weights=encoder_weights, **kwargs)
        except TypeError as error:
            raise ValueError(f"DPT got unknown keyword(s) {sorted(kwargs)} ({error})") from error
        except ValueError as error:
            raise ValueError(f"DPT takes plain ViT-style timm encoders ({VIT_EXAMPLES}); encoder {encoder_name!r} "
                             f"is not one: {error}") from error
        if decoder_readout != "ignore" and not encoder.has_cls_token:
            raise ValueError(f"decoder_readout={decoder_readout!r} needs a class token and encoder {encoder_name!r} "
                             f"has none; use decoder_readout='ignore'")
        self.encoder_name = encoder_name
        self.encoder_weights = encoder_weights
        decoder = DPTDecoder(encoder.embed_dim, encoder.patch_size, decoder_readout, decoder_intermediate_channels,
                             decoder_fusion_channels, levels=len(encoder.out_indices))
        self.assemble(encoder, decoder, decoder_fusion_channels, classes=classes, activation=activation,
                      aux_params=aux_params, divisor=encoder.patch_size)
        # NOTE DPT's own head (3x3 conv-BN-ReLU, dropout, 1x1, x2) replaces the plain conv head.
        self.segmentation_head = DPTSegmentationHead(decoder_fusion_channels, classes, activation=activation)
        initialize_head(self.segmentation_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Masks (N, classes, H, W); with ``aux_params`` ``(masks, labels)``, labels from the last block's map.

        NOTE the ViT encoder returns ``(token maps, prefix tokens)`` rather than the list of maps the
        base class routes, so DPT routes them here (same padding and cropping as the base class).
        """
        height, width = x.shape[-2:]
        x = self._pad(x)
        features, prefix_tokens = self.encoder(x)
        masks = self.segmentation_head(self.decoder(features, prefix_tokens))
        assert masks.shape[-2:] == x.shape[-2:], f"mask size {tuple(masks.shape[-2:])} != input {tuple(x.shape[-2:])}"
        masks = masks[..., :height, :width]
        if self.classification_head is None:
            return masks
        return masks, self.classification_head(features[-1])
