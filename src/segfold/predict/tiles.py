"""Sliding-window inference: overlapping tiles blended by weights that fall off towards tile borders.

Tiles are spread evenly so that the first starts at 0 and the last ends at the image border, with at
least `overlap` shared pixels between neighbours. Each tile's probabilities are weighted by a
separable window that rises from near 0 to 1 over `overlap` pixels (a half Hann ramp) on every side
that lies inside the image, and stays 1 on sides at the image border; the blended map is
`sum(w * p) / sum(w)`. A model whose output is the same everywhere thus gives the same map, and the
border pixels of a tile, which see zero padding instead of their real neighbours, count for little.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from segfold.predict.tta import Predictor


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length` with at least `overlap` shared pixels.

    Example: length 100, tile 40, overlap 10 -> stride at most 30 -> 3 tiles at 0, 30, 60.
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def ramp_weights(length: int, ramp: int, rise_start: bool, fall_end: bool) -> np.ndarray:
    """1-D tile weights: a half Hann rise over `ramp` pixels at a start inside the image, a fall at the end.

    Every weight is > 0 (the smallest is sin^2(pi / (4 * ramp))), so a pixel covered by one tile only
    keeps that tile's value.
    """
    weights = np.ones(length, dtype=np.float64)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rise = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp) ** 2
        if rise_start:
            weights[:ramp] = rise
        if fall_end:
            weights[length - ramp:] = rise[::-1]
    return weights


def needs_tiling(height: int, width: int, tile_size: list[int] | tuple[int, int] | None) -> bool:
    """Whether an image of this size is larger than the tile in either side."""
    return tile_size is not None and (height > tile_size[0] or width > tile_size[1])


@torch.no_grad()
def sliding_window(predict: Predictor, images: torch.Tensor, tile_size: list[int] | tuple[int, int],
                   overlap: int, tiles_per_pass: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities of `images` predicted tile by tile and blended.

    Args:
        predict: `images -> (probs, cls_probs | None)`, e.g. from `segfold.predict.tta.make_predictor`.
        images: `(N, 3, H, W)`.
        tile_size: `[height, width]` of a tile (an image side below it is used whole).
        overlap: pixels shared by neighbouring tiles; also the length of the weight ramp.
        tiles_per_pass: most tiles (of all N images) handed to `predict` at once; None: all.

    Returns:
        `(N, C, H, W)` blended probabilities and `(N, C)` class probabilities (the maximum over the
        tiles: a class seen in any tile is in the image) or None.
    """
    batch, _, height, width = images.shape
    tile_h, tile_w = min(tile_size[0], height), min(tile_size[1], width)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    windows = [(y, x) for y in ys for x in xs]
    acc: torch.Tensor | None = None
    norm = torch.zeros(height, width, dtype=torch.float32, device=images.device)
    cls_max: torch.Tensor | None = None
    per_pass = max(1, (tiles_per_pass or len(windows) * batch) // batch)
    for first in range(0, len(windows), per_pass):
        chunk = windows[first:first + per_pass]
        crops = torch.cat([images[:, :, y:y + tile_h, x:x + tile_w] for y, x in chunk])  # (len(chunk) * N, 3, h, w)
        probs, cls_probs = predict(crops)
        for slot, (y, x) in enumerate(chunk):
            weight_y = ramp_weights(tile_h, overlap, rise_start=y > 0, fall_end=y + tile_h < height)
            weight_x = ramp_weights(tile_w, overlap, rise_start=x > 0, fall_end=x + tile_w < width)
            weight = torch.from_numpy(np.outer(weight_y, weight_x)).to(probs)  # (h, w)
            part = probs[slot * batch:(slot + 1) * batch]
            if acc is None:
                acc = torch.zeros(batch, part.shape[1], height, width, dtype=torch.float32, device=images.device)
            acc[:, :, y:y + tile_h, x:x + tile_w] += part * weight
            norm[y:y + tile_h, x:x + tile_w] += weight
            if cls_probs is not None:
                part_cls = cls_probs[slot * batch:(slot + 1) * batch]
                cls_max = part_cls if cls_max is None else torch.maximum(cls_max, part_cls)
    assert acc is not None and bool((norm > 0).all()), "tiles must cover the image"
    return acc / norm, cls_max
