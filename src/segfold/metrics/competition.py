"""Kaggle competition scores, one value per scored item, for numpy arrays and torch tensors alike.

Every function returns one score per item (per (image, class) pair or per image), so a validation
loop can concatenate batches and average at the end: the mean of the concatenation is the
competition score of the whole set. Inputs are binary masks: bool, integer or floating arrays /
tensors holding only 0 and 1 (threshold probabilities first). numpy inputs give float64 numpy
arrays, torch inputs float64 tensors on the input's device; both give the same numbers (counts are
integers and the divisions are done in float64). A numpy array paired with a tensor is moved to
the tensor's device.

- `dice_pairs`  (Severstal, Clouds, UW-Madison): Dice 2|X∩Y| / (|X| + |Y|) of every (image, class)
  pair, `empty_score` when both are empty (1 for Severstal / Clouds, 0 for UW-Madison).
- `dice_image`  (SIIM): Dice of each whole image (one class), `empty_score` when both are empty.
- `tgs_iou_precision` (TGS Salt): per image, the mean over thresholds t = 0.50, 0.55, ..., 0.95 of
  the hit IoU > t; both empty is a hit at every threshold (1), exactly one empty scores 0. The
  comparison is done on integers (100 * |X∩Y| > 100t * |X∪Y|), so an IoU of exactly 0.6 is not a
  hit at 0.60.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Array = np.ndarray | torch.Tensor
TGS_THRESHOLDS_PERCENT = tuple(range(50, 100, 5))  # 0.50, 0.55, ..., 0.95 as integer percent


def _to_common(pred: Any, truth: Any, name: str) -> tuple[Array, Array]:
    for arg, value in (("pred", pred), ("truth", truth)):
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise ValueError(f"{name}: {arg} must be a numpy array or a torch tensor, got {type(value).__name__}")
    if isinstance(pred, torch.Tensor) and not isinstance(truth, torch.Tensor):
        truth = torch.from_numpy(np.ascontiguousarray(truth)).to(pred.device)
    elif isinstance(truth, torch.Tensor) and not isinstance(pred, torch.Tensor):
        pred = torch.from_numpy(np.ascontiguousarray(pred)).to(truth.device)
    if tuple(pred.shape) != tuple(truth.shape):
        raise ValueError(f"{name}: pred shape {tuple(pred.shape)} differs from truth shape {tuple(truth.shape)}")
    return pred, truth


def _as_bool(x: Array, arg: str, name: str) -> Array:
    """Binary mask -> bool, refusing anything but 0 / 1 (probabilities, 0/255 masks, NaN)."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool:
            return x
        if x.is_complex():
            raise ValueError(f"{name}: {arg} has complex dtype {x.dtype}; expected a binary mask")
        non_binary = bool(((x != 0) & (x != 1)).any())
    else:
        if x.dtype == np.bool_:
            return x
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"{name}: {arg} has dtype {x.dtype}; expected a binary mask (bool, integer or float)")
        non_binary = bool(((x != 0) & (x != 1)).any())
    if non_binary:
        raise ValueError(
            f"{name}: {arg} must hold only 0 and 1 (a binary mask); threshold probabilities first "
            "(e.g. probs > 0.5) and divide 0/255 masks by 255"
        )
    return x != 0


def _counts(pred: Array, truth: Array, axes: tuple[int, ...]) -> tuple[Array, Array, Array]:
    """|X∩Y|, |X|, |Y| as int64 over `axes`."""
    if isinstance(pred, torch.Tensor):
        inter = (pred & truth).sum(dim=axes, dtype=torch.int64)
        return inter, pred.sum(dim=axes, dtype=torch.int64), truth.sum(dim=axes, dtype=torch.int64)
    inter = np.count_nonzero(pred & truth, axis=axes)
    return inter, np.count_nonzero(pred, axis=axes), np.count_nonzero(truth, axis=axes)


def _dice_from_counts(inter: Array, n_pred: Array, n_truth: Array, empty_score: float) -> Array:
    if isinstance(inter, torch.Tensor):
        total = (n_pred + n_truth).double()
        dice = 2.0 * inter.double() / total.clamp_min(1.0)
        return torch.where(total == 0, torch.full_like(dice, float(empty_score)), dice)
    total = (n_pred + n_truth).astype(np.float64)
    dice = 2.0 * inter / np.maximum(total, 1.0)
    return np.where(total == 0, float(empty_score), dice)


def _single_class(pred: Array, truth: Array, name: str) -> tuple[Array, Array]:
    pred, truth = _to_common(pred, truth, name)
    if pred.ndim == 4 and pred.shape[1] == 1:
        pred, truth = pred[:, 0], truth[:, 0]
    if pred.ndim != 3:
        raise ValueError(
            f"{name}: pred and truth must be (N, H, W) or (N, 1, H, W) masks of one class, got shape "
            f"{tuple(pred.shape)}; score several classes with dice_pairs"
        )
    return _as_bool(pred, "pred", name), _as_bool(truth, "truth", name)


def dice_pairs(pred: Array, truth: Array, empty_score: float = 1.0) -> Array:
    """Dice of every (image, class) pair.

    Args:
        pred: binary masks (N, C, H, W).
        truth: binary masks (N, C, H, W).
        empty_score: the score of a pair where both masks are empty.

    Returns:
        (N, C) float64 scores; their mean is the competition score.
    """
    pred, truth = _to_common(pred, truth, "dice_pairs")
    if pred.ndim != 4:
        raise ValueError(
            f"dice_pairs: pred and truth must be (N, C, H, W), got shape {tuple(pred.shape)}; "
            "add the class axis with x[:, None] for one class"
        )
    pred, truth = _as_bool(pred, "pred", "dice_pairs"), _as_bool(truth, "truth", "dice_pairs")
    return _dice_from_counts(*_counts(pred, truth, (2, 3)), empty_score)


def dice_image(pred: Array, truth: Array, empty_score: float = 1.0) -> Array:
    """Dice of each whole image (one class, as SIIM scores).

    Args:
        pred: binary masks (N, H, W) or (N, 1, H, W).
        truth: binary masks of the same shape.
        empty_score: the score of an image where both masks are empty.

    Returns:
        (N,) float64 scores.
    """
    pred, truth = _single_class(pred, truth, "dice_image")
    return _dice_from_counts(*_counts(pred, truth, (1, 2)), empty_score)


def tgs_iou_precision(pred: Array, truth: Array) -> Array:
    """TGS Salt score of each image: the share of IoU thresholds 0.50:0.05:0.95 that the IoU exceeds.

    Args:
        pred: binary masks (N, H, W) or (N, 1, H, W).
        truth: binary masks of the same shape.

    Returns:
        (N,) float64 scores in {0, 0.1, ..., 1}.
    """
    pred, truth = _single_class(pred, truth, "tgs_iou_precision")
    inter, n_pred, n_truth = _counts(pred, truth, (1, 2))
    union = n_pred + n_truth - inter
    if isinstance(inter, torch.Tensor):
        percent = torch.tensor(TGS_THRESHOLDS_PERCENT, device=inter.device, dtype=torch.int64)
        hits = (100 * inter[:, None] > percent[None, :] * union[:, None]).double().mean(dim=1)
        return torch.where(union == 0, torch.ones_like(hits), hits)
    percent = np.asarray(TGS_THRESHOLDS_PERCENT, dtype=np.int64)
    hits = (100 * inter[:, None].astype(np.int64) > percent[None, :] * union[:, None]).mean(axis=1)
    return np.where(union == 0, 1.0, hits)


_SCORES: dict[str, Callable[..., Array]] = {
    "dice_pairs": dice_pairs,
    "dice_image": dice_image,
    "tgs_iou": tgs_iou_precision,
}


def list_competition_scores() -> list[str]:
    """Names accepted by `get_competition_score` (the values of `data.metric`)."""
    return sorted(_SCORES)


def get_competition_score(name: str) -> Callable[..., Array]:
    """The per-item score function for `data.metric`: "dice_pairs", "dice_image" or "tgs_iou"."""
    if name not in _SCORES:
        raise ValueError(f"unknown competition score {name!r}; choose one of {list_competition_scores()}")
    return _SCORES[name]


def mean_score(name: str, pred: Array, truth: Array, **kwargs: Any) -> float:
    """The competition score of a whole prediction set: the mean of the per-item scores.

    Args:
        name: a name accepted by `get_competition_score`.
        pred: binary masks in the layout that score expects.
        truth: binary masks of the same shape.
        **kwargs: passed on (e.g. `empty_score`).
    """
    scores = get_competition_score(name)(pred, truth, **kwargs)
    if scores.shape[0] == 0:
        raise ValueError(f"mean_score({name!r}): no items to score (pred has shape {tuple(pred.shape)})")
    return float(scores.mean())
