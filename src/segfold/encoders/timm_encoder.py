"""timm ``features_only`` models as segmentation encoders (the contract in docs/DESIGN.md).

The wrapper picks the timm feature levels at strides 2, 4, 8, 16, 32 (skipping a stride-1 level
such as VGG's), builds only the first ``depth`` of them, turns channels-last outputs (Swin and
other transformer-style models) into NCHW, and puts an empty stride-2 map in front when the first
feature is at stride 4.
"""

from __future__ import annotations

import functools
from typing import Any

import timm
import torch
from torch import nn

ENCODER_STRIDES = (2, 4, 8, 16, 32)


@functools.lru_cache(maxsize=64)
def feature_reductions(timm_name: str, output_stride: int = 32) -> tuple[int, ...] | None:
    """Reductions of all ``features_only`` levels of a timm model, measured on the meta device (no memory).

    Returns:
        One reduction per timm feature level, or None when the model cannot be built with that
        `output_stride` (timm raises for models without dilation support).
    """
    kwargs: dict[str, Any] = {"features_only": True}
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    try:
        with torch.device("meta"):
            model = timm.create_model(timm_name, **kwargs)
    except (TypeError, AssertionError, ValueError):
        return None
    return tuple(model.feature_info.reduction())


def select_out_indices(timm_name: str, depth: int) -> tuple[tuple[int, ...], bool]:
    """timm feature indices for encoder outputs 1..depth, and whether the stride-2 level is missing.

    Raises:
        ValueError: the model has no features at strides 4, 8, 16 and 32 (a plain ViT, for instance).
    """
    reductions = feature_reductions(timm_name)
    if reductions is None:
        raise ValueError(f"timm model {timm_name!r} does not support features_only, so it cannot be an encoder")
    if not set(ENCODER_STRIDES[1:]) <= set(reductions):
        hint = " (a plain ViT: use segfold.encoders.get_vit_encoder, as DPT does)" if len(set(reductions)) == 1 else ""
        raise ValueError(
            f"encoder {timm_name!r} gives features at strides {list(reductions)}, not at 4, 8, 16 and 32{hint}"
        )
    starts_at_four = 2 not in reductions
    indices = []
    for stride in ENCODER_STRIDES[:depth]:
        if stride in reductions:
            indices.append(reductions.index(stride))
    return tuple(indices), starts_at_four


def _drop_unused_blocks(model: nn.Module) -> None:
    """Cut the stages after the last requested feature where timm builds them all (EfficientNet/MobileNet features)."""
    stage_out = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if isinstance(stage_out, dict) and stage_out and isinstance(blocks, nn.Sequential):
        if getattr(model, "feature_hooks", None) is None:
            # NOTE timm collects stage s after block s - 1 (stage 0 is the stem).
            model.blocks = blocks[: max(stage_out)]


class TimmEncoder(nn.Module):
    """A timm ``features_only`` model returning ``depth + 1`` NCHW maps, index 0 being the input.

    Build it with `segfold.encoders.get_encoder`, which also resolves names and loads weights::

        encoder = get_encoder("resnet34", in_channels=3, depth=5, weights=None)
        features = encoder(torch.rand(2, 3, 64, 64))  # strides 1, 2, 4, 8, 16, 32
    """

    def __init__(
        self,
        timm_name: str,
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        **create_kwargs: Any,
    ) -> None:
        """
        Args:
            timm_name: a timm model name supporting ``features_only``.
            in_channels: channels of the input image.
            depth: number of feature levels (1..5).
            output_stride: 32, or 16 / 8 for a dilated last stage(s).
            **create_kwargs: passed to ``timm.create_model`` (``pretrained``, ``pretrained_cfg_overlay``).
        """
        super().__init__()
        out_indices, starts_at_four = select_out_indices(timm_name, depth)
        self.name = timm_name
        self.depth = depth
        self.in_channels = in_channels
        self.starts_at_four = starts_at_four
        self.model: nn.Module | None = None
        channels: list[int] = []
        reductions: list[int] = []
        if out_indices:  # depth 1 of a stride-4 model needs no timm module at all
            kwargs = dict(create_kwargs, features_only=True, out_indices=out_indices, in_chans=in_channels)
            if output_stride < 2**depth:
                kwargs["output_stride"] = output_stride
            self.model = timm.create_model(timm_name, **kwargs)
            _drop_unused_blocks(self.model)
            channels = list(self.model.feature_info.channels())
            reductions = list(self.model.feature_info.reduction())
        self.channels_last = str(getattr(self.model, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC")
        stem = [0] if starts_at_four else []
        self.out_channels = [in_channels] + stem + channels
        self.reductions = [1] + ([2] if starts_at_four else []) + reductions
        self.output_stride = self.reductions[-1]  # min(output_stride, 2**depth)
        assert len(self.out_channels) == depth + 1, (self.out_channels, depth)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = list(self.model(x)) if self.model is not None else []
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]  # (N, H, W, C) -> (N, C, H, W)
        if self.starts_at_four:
            height, width = x.shape[-2:]
            features.insert(0, x.new_empty(x.shape[0], 0, -(-height // 2), -(-width // 2)))
        return [x, *features]
