"""Logits to probabilities, probabilities to the scoring resolution, to uint8 and to masks.

One rule for every stage: the OOF that thresholds are tuned on (training) and the test probabilities
they are applied to (prediction) go through the same functions here, so a threshold means the same
on both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SCALE = 255  # a stored probability p is the uint8 round(p * 255)
DEFAULT_THRESHOLD = 0.5


def probabilities(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-pixel class probabilities: softmax over classes (multiclass) or sigmoid (binary, multilabel)."""
    return logits.float().softmax(dim=1) if mode == "multiclass" else logits.float().sigmoid()


def resize_probs(probs: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Probabilities `(N, C, h, w)` resized to `size` (height, width); a no-op when already there.

    Shrinking by 2x or more on both sides averages areas (a 4x smaller map holds the mean of each
    4x4 block; bilinear would skip pixels and alias); anything else is bilinear (align_corners=False).
    """
    height, width = int(size[0]), int(size[1])
    if tuple(probs.shape[-2:]) == (height, width):
        return probs
    if probs.shape[-2] >= 2 * height and probs.shape[-1] >= 2 * width:
        return F.interpolate(probs, size=(height, width), mode="area")
    return F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)


def to_uint8(probs: np.ndarray) -> np.ndarray:
    """Quantise probabilities in [0, 1] to uint8 `round(p * 255)` (values outside are clipped)."""
    return np.rint(np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0) * SCALE).astype(np.uint8)


def binarize(probs: np.ndarray, mode: str, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Masks from `(n, C, H, W)` probabilities (float or uint8 `round(p * 255)`): argmax for multiclass.

    A uint8 value `u` exceeds `t` when `u / 255 > t`.
    """
    probs = np.asarray(probs)
    if mode == "multiclass":
        return (probs.argmax(axis=1)[:, None] == np.arange(probs.shape[1])[None, :, None, None]).astype(np.uint8)
    if probs.dtype == np.uint8:
        return (probs.astype(np.float32) / SCALE > threshold).astype(np.uint8)
    return (probs > threshold).astype(np.uint8)
