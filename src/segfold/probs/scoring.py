"""Scoring probabilities or masks against the truth with the competition metric, and a per-class table.

`score_masks` is the one chunked score-and-table loop (the OOF store against the training labels,
a submission against test labels); `batch_scores` scores a validation batch in torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segfold.metrics.competition import get_competition_score

MasksOf = Callable[[list[str]], np.ndarray]


def competition_metric(data_cfg: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`(pred, truth) -> per-item scores` for `data.metric`, with `data.empty_score` for the Dice metrics."""
    metric = get_competition_score(data_cfg.metric)
    if data_cfg.metric.startswith("dice"):
        return lambda pred, truth: metric(pred, truth, empty_score=data_cfg.empty_score)
    return metric


def pair_dice(pred: np.ndarray, truth: np.ndarray, empty_score: float = 1.0) -> np.ndarray:
    """Dice of every (image, class): `(n, C)`, `empty_score` where both masks are empty (for the table)."""
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


def score_masks(image_ids: Sequence[str], predicted: MasksOf, truth: MasksOf, classes: Sequence[str],
                data_cfg: Any, chunk: int = 64) -> dict[str, Any]:
    """Score predicted masks against true ones, `chunk` images at a time.

    Args:
        image_ids: the images scored, in order.
        predicted: image ids -> binary masks `(n, C, H, W)`.
        truth: image ids -> binary true masks `(n, C, H, W)`, same size.
        classes: class names (the channel order).
        data_cfg: the `data` section (`metric`, `empty_score`).
        chunk: images per call.

    Returns:
        `score` (data.metric, the mean over its items), `class_dice` per class, `table` (text),
        `image_scores` `(N,)` (the metric's items of each image, averaged) and `pair_dice` `(N, C)`.
    """
    metric = competition_metric(data_cfg)
    items, dice, pred_pos, truth_pos = [], [], [], []
    for start in range(0, len(image_ids), chunk):
        batch = list(image_ids[start:start + chunk])
        pred, true = predicted(batch), truth(batch)
        items.append(np.asarray(metric(pred, true), dtype=np.float64).reshape(len(batch), -1))
        dice.append(pair_dice(pred, true, data_cfg.empty_score))
        pred_pos.append(pred.any(axis=(2, 3)))
        truth_pos.append(true.any(axis=(2, 3)))
    dice_all = np.concatenate(dice)
    values = np.concatenate(items)
    return {
        "score": float(values.ravel().mean()),
        "class_dice": {name: float(dice_all[:, c].mean()) for c, name in enumerate(classes)},
        "table": class_table(classes, dice_all, np.concatenate(pred_pos), np.concatenate(truth_pos)),
        "image_scores": values.mean(axis=1),
        "pair_dice": dice_all,
    }


def batch_scores(probs: torch.Tensor, truth: torch.Tensor, data_cfg: Any, threshold: float) -> torch.Tensor:
    """Per-item competition scores (`data.metric`) of probabilities against binary truth, same size.

    Binary / multilabel pixels are positive when their probability exceeds `threshold`; multiclass
    pixels take their argmax class (pixels without any truth class, the ignored ones, count for none).
    `dice_pairs` scores every (image, class); the one-class scores (`dice_image`, `tgs_iou`) score
    each class map of each image as one item.
    """
    metric = get_competition_score(data_cfg.metric)
    if data_cfg.mode == "multiclass":
        pred = F.one_hot(probs.argmax(1), probs.shape[1]).permute(0, 3, 1, 2).bool()
        pred &= truth.any(dim=1, keepdim=True)
    else:
        pred = probs > threshold
    if data_cfg.metric == "dice_pairs":
        return metric(pred, truth, empty_score=data_cfg.empty_score)
    pred, truth = pred.flatten(0, 1), truth.flatten(0, 1)  # (N * C, H, W)
    if data_cfg.metric == "dice_image":
        return metric(pred, truth, empty_score=data_cfg.empty_score)
    return metric(pred, truth)
