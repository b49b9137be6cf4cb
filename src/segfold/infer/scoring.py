"""Scoring predictions against known labels at the store's resolution, with a per-class table.

Shared by `scripts/oof.py` (the OOF store against the training labels), `make_submission.py --score`
(a submission against test labels) and `scripts/visualize.py` (best and worst images).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from segfold.data.config import DataConfig
    from segfold.data.formats import Annotations

DEFAULT_THRESHOLD = 0.5


def resize_nearest(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A `(H, W)` or `(C, H, W)` label resized to `shape` (height, width) by nearest neighbour."""
    height, width = int(shape[0]), int(shape[1])
    if mask.shape[-2:] == (height, width):
        return mask
    if mask.ndim == 2:
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in mask])


def truth_masks(annotations: Annotations, image_ids: Sequence[str], shape: Sequence[int],
                num_classes: int) -> np.ndarray:
    """Binary truth `(n, C, H, W)` uint8 of `image_ids` at `shape` (multiclass index maps one-hot encoded).

    Pixels marked ignore (multiclass `ignore_index`) belong to no class.
    """
    out = np.zeros((len(image_ids), num_classes, int(shape[0]), int(shape[1])), dtype=np.uint8)
    for i, image_id in enumerate(image_ids):
        mask = resize_nearest(annotations.mask(image_id), shape)
        if mask.ndim == 2:  # multiclass index map
            out[i] = mask[None] == np.arange(num_classes)[:, None, None]
        else:
            out[i] = mask != 0
    return out


def binarize(probs: np.ndarray, mode: str, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Masks from `(n, C, H, W)` probabilities (float or uint8 `round(p * 255)`): argmax for multiclass.

    A uint8 value `u` exceeds `t` when `u / 255 > t`.
    """
    probs = np.asarray(probs)
    if mode == "multiclass":
        return (probs.argmax(axis=1)[:, None] == np.arange(probs.shape[1])[None, :, None, None]).astype(np.uint8)
    if probs.dtype == np.uint8:
        return (probs.astype(np.float32) / 255 > threshold).astype(np.uint8)
    return (probs > threshold).astype(np.uint8)


def competition_metric(data_cfg: DataConfig):
    """`(pred, truth) -> per-item scores` for `data.metric`, with `data.empty_score` for the Dice metrics."""
    from segfold.metrics.competition import get_competition_score

    metric = get_competition_score(data_cfg.metric)
    if data_cfg.metric.startswith("dice"):
        return lambda pred, truth: metric(pred, truth, empty_score=data_cfg.empty_score)
    return metric


def pair_dice(pred: np.ndarray, truth: np.ndarray, empty_score: float = 1.0) -> np.ndarray:
    """Dice of every (image, class): `(n, C)`, `empty_score` where both masks are empty (for the table)."""
    from segfold.metrics.competition import get_competition_score

    return np.asarray(get_competition_score("dice_pairs")(pred, truth, empty_score=empty_score), dtype=np.float64)


def class_table(classes: Sequence[str], dice: np.ndarray, pred_positive: np.ndarray,
                truth_positive: np.ndarray) -> str:
    """A per-class text table: Dice, Dice where the truth is non-empty, and how often each side is non-empty.

    Args:
        classes: the class names.
        dice: `(n, C)` Dice per image and class.
        pred_positive: `(n, C)` bool, predicted mask non-empty.
        truth_positive: `(n, C)` bool, true mask non-empty.
    """
    rows = [f"{'class':<16} {'dice':>7} {'dice+':>7} {'truth>0':>8} {'pred>0':>8} {'fp_empty':>8}"]
    for c, name in enumerate(classes):
        positive = truth_positive[:, c]
        dice_pos = dice[positive, c].mean() if positive.any() else float("nan")
        false_pos = (pred_positive[:, c] & ~positive).mean()
        rows.append(f"{name:<16} {dice[:, c].mean():7.4f} {dice_pos:7.4f} {positive.mean():8.3f} "
                    f"{pred_positive[:, c].mean():8.3f} {false_pos:8.3f}")
    rows.append(f"{'mean':<16} {dice.mean():7.4f}")
    return "\n".join(rows)
