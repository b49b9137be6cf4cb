"""Mix Transformer (MiT) encoders of SegFormer, mit_b0 .. mit_b5.

Paper: "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
Xie et al., NeurIPS 2021, https://arxiv.org/abs/2105.15203

Four stages, each an overlapping patch embedding (a strided conv) followed by transformer blocks
with efficient self-attention (keys and values spatially reduced by a strided conv, ratios
8, 4, 2, 1) and a Mix-FFN (a 3x3 depthwise conv between the two linear layers instead of position
embeddings). Parameter names follow the released SegFormer ImageNet checkpoints (``mit_b*.pth``)
so those files load as local weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from segfold.encoders.weights import load_encoder_state_dict, read_state_dict
from segfold.errors import WeightsError


@dataclass(frozen=True)
class MixTransformerSpec:
    """Widths and depths of one MiT variant (Table 6 of the paper)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1


_WIDE = (64, 128, 320, 512)
MIT_SPECS: dict[str, MixTransformerSpec] = {
    "mit_b0": MixTransformerSpec((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MixTransformerSpec(_WIDE, (2, 2, 2, 2)),
    "mit_b2": MixTransformerSpec(_WIDE, (3, 4, 6, 3)),
    "mit_b3": MixTransformerSpec(_WIDE, (3, 4, 18, 3)),
    "mit_b4": MixTransformerSpec(_WIDE, (3, 8, 27, 3)),
    "mit_b5": MixTransformerSpec(_WIDE, (3, 6, 40, 3)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided conv whose kernel overlaps neighbouring patches (7x7/4 first, then 3x3/2), then LayerNorm."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width  # (N, H*W, C)


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a map shrunk `sr_ratio` times per side."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)  # (N, heads, T, d)
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(batch, dim, height, width)
            x = self.norm(self.sr(grid).flatten(2).transpose(1, 2))  # (N, T / sr^2, C)
        kv = self.kv(x).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (N, heads, T, d)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv on a token sequence laid out as an image: the Mix-FFN's positional signal."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, dim = x.shape
        grid = x.transpose(1, 2).reshape(batch, dim, height, width)
        return self.dwconv(grid).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DepthwiseConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class MixTransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x)), each with drop path."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixTransformerEncoder(nn.Module):
    """MiT backbone as a segfold encoder: outputs at strides 1, 2 (empty), 4, 8, 16, 32.

    Example::

        encoder = MixTransformerEncoder(MIT_SPECS["mit_b0"], in_channels=3, depth=5)
        features = encoder(torch.rand(1, 3, 64, 64))  # channels [3, 0, 32, 64, 160, 256]
    """

    def __init__(self, spec: MixTransformerSpec, in_channels: int = 3, depth: int = 5) -> None:
        """
        Args:
            spec: widths, depths, heads and reduction ratios of the variant.
            in_channels: input channels.
            depth: 1..5; stages after stride ``2**depth`` are not built.
        """
        super().__init__()
        self.depth = depth
        self.num_stages = depth - 1  # stage s (1-based) gives stride 2 ** (s + 1)
        rates = torch.linspace(0, spec.drop_path_rate, sum(spec.depths)).tolist()
        previous = in_channels
        for stage in range(self.num_stages):
            dim = spec.embed_dims[stage]
            kernel, stride = (7, 4) if stage == 0 else (3, 2)
            first = sum(spec.depths[:stage])
            blocks = [
                MixTransformerBlock(dim, spec.num_heads[stage], spec.sr_ratios[stage], spec.mlp_ratio, rates[first + i])
                for i in range(spec.depths[stage])
            ]
            setattr(self, f"patch_embed{stage + 1}", OverlapPatchEmbed(previous, dim, kernel, stride))
            setattr(self, f"block{stage + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{stage + 1}", nn.LayerNorm(dim, eps=1e-6))
            previous = dim
        self.in_channels = in_channels
        self.out_channels = [in_channels, 0, *spec.embed_dims[: self.num_stages]]
        self.reductions = [1, 2, 4, 8, 16, 32][: depth + 1]
        self.output_stride = 2**depth
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch, _, height, width = x.shape
        features = [x, x.new_empty(batch, 0, -(-height // 2), -(-width // 2))]
        hidden = x
        for stage in range(1, self.num_stages + 1):
            tokens, grid_height, grid_width = getattr(self, f"patch_embed{stage}")(hidden)
            for block in getattr(self, f"block{stage}"):
                tokens = block(tokens, grid_height, grid_width)
            tokens = getattr(self, f"norm{stage}")(tokens)
            hidden = tokens.transpose(1, 2).reshape(batch, -1, grid_height, grid_width)  # (N, C, H, W)
            features.append(hidden)
        return features


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_mit_encoder(
    name: str, in_channels: int, depth: int, weights: str | os.PathLike | None, output_stride: int
) -> MixTransformerEncoder:
    """Build ``mit_b0`` .. ``mit_b5``; weights only from a local file (timm has no MiT weights).

    Raises:
        ValueError: dilation requested (MiT has no output_stride support).
        WeightsError: ``"imagenet"`` or a tag requested, or an unfit file.
    """
    if output_stride < 2**depth:
        raise ValueError(
            f"encoder {name!r} cannot be dilated to output_stride={output_stride}: the Mix Transformer has fixed "
            "strides 4, 8, 16, 32; use output_stride=32"
        )
    encoder = MixTransformerEncoder(MIT_SPECS[name], in_channels=in_channels, depth=depth)
    if weights is None:
        return encoder
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise WeightsError(
            f"no download source for {name!r} weights {path!r} (timm has no Mix Transformer): pass the path of a local "
            f"file as encoder_weights, e.g. the SegFormer ImageNet checkpoint {name}.pth, or use encoder_weights=None"
        )
    load_encoder_state_dict(encoder, read_state_dict(path), source=path)
    return encoder
