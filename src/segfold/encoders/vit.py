"""Plain ViT features for DPT: per-block token maps at the patch stride, with the prefix (class/register) tokens.

A plain ViT has no feature pyramid: every block works at stride ``patch_size``. DPT reads the
tokens of a few blocks (by default four, evenly spaced and ending at the last block, blocks
2, 5, 8, 11 of a 12-block ViT-B as in the DPT paper, https://arxiv.org/abs/2103.13413), reshapes
them to maps and resamples them into a pyramid itself; the prefix tokens feed its readout
("ignore", "add" or "project").
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn


def evenly_spaced_blocks(num_blocks: int, count: int) -> list[int]:
    """`count` block indices spread over `num_blocks`, the last one included: (12, 4) -> [2, 5, 8, 11]."""
    if not 1 <= count <= num_blocks:
        raise ValueError(f"cannot take {count} features from a ViT with {num_blocks} blocks; use 1..{num_blocks}")
    return [num_blocks * (i + 1) // count - 1 for i in range(count)]


class ViTEncoder(nn.Module):
    """A timm ViT (any model with ``forward_intermediates``) returning block features for DPT.

    Build it with `segfold.encoders.get_vit_encoder`::

        encoder = get_vit_encoder("test_vit", out_indices=4)
        features, prefix_tokens = encoder(torch.rand(1, 3, 64, 64))  # 4 x (1, 64, 4, 4), 4 x (1, 1, 64)

    Attributes:
        out_indices: the blocks whose outputs are returned (0-based).
        out_channels: ``embed_dim`` per returned block.
        reductions: ``patch_size`` per returned block; ``output_stride`` is the patch size too.
        embed_dim, patch_size, num_prefix_tokens, has_cls_token: what a DPT readout needs.
    """

    def __init__(
        self, timm_name: str, in_channels: int = 3, out_indices: int | Sequence[int] = 4, **create_kwargs: Any
    ) -> None:
        """
        Args:
            timm_name: a timm ViT-style model name (``test_vit``, ``vit_small_patch16_224``, ``deit_*``, ...).
            in_channels: input channels.
            out_indices: how many evenly spaced blocks, or the block indices themselves.
            **create_kwargs: passed to ``timm.create_model`` (``pretrained``, ``pretrained_cfg_overlay``, ``img_size``).
        """
        super().__init__()
        # NOTE dynamic_img_size interpolates the position embedding, so any multiple of the patch size works.
        create_kwargs.setdefault("dynamic_img_size", True)
        try:
            model = timm.create_model(timm_name, in_chans=in_channels, **create_kwargs)
        except TypeError as error:
            raise ValueError(f"{timm_name!r} is not a plain ViT-style timm model ({error})") from error
        intermediates = getattr(model, "forward_intermediates", None)
        if intermediates is None or "return_prefix_tokens" not in inspect.signature(intermediates).parameters:
            raise ValueError(
                f"{timm_name!r} has no ViT-style forward_intermediates with prefix tokens; use get_encoder for CNNs "
                "and hierarchical transformers"
            )
        num_blocks = len(model.blocks)
        if isinstance(out_indices, int):
            indices = evenly_spaced_blocks(num_blocks, out_indices)
        else:
            indices = sorted(int(i) for i in out_indices)
            if not indices or indices[0] < 0 or indices[-1] >= num_blocks:
                raise ValueError(f"out_indices {list(out_indices)} must lie in 0..{num_blocks - 1} for {timm_name!r}")
        # Later blocks, the final norm and the classifier are never used: drop them.
        model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
        patch_size = model.patch_embed.patch_size
        self.model = model
        self.name = timm_name
        self.in_channels = in_channels
        self.out_indices = indices
        self.embed_dim = int(model.embed_dim)
        self.patch_size = int(patch_size[0] if isinstance(patch_size, (tuple, list)) else patch_size)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.has_cls_token = getattr(model, "cls_token", None) is not None
        self.out_channels = [self.embed_dim] * len(indices)
        self.reductions = [self.patch_size] * len(indices)
        self.output_stride = self.patch_size

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Block features ``(N, D, H / patch, W / patch)`` and prefix tokens ``(N, num_prefix_tokens, D)``."""
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the patch size {self.patch_size} of {self.name!r}; "
                "pad or resize the image"
            )
        outputs = self.model.forward_intermediates(
            x,
            indices=self.out_indices,
            return_prefix_tokens=True,
            norm=False,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        features = [spatial for spatial, _ in outputs]
        prefix = [
            tokens if tokens is not None else spatial.new_zeros(spatial.shape[0], 0, spatial.shape[1])
            for spatial, tokens in outputs
        ]
        return features, prefix
