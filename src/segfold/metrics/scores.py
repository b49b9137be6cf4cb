"""Metrics as pure functions of the confusion counts from `get_stats`, with the reference's reductions.

Each metric is `(tp, fp, fn, tn, reduction=None, class_weights=None, zero_division=1.0)` on (N, C)
counts. Reductions:
- "micro": sum all counts, one score.
- "macro": sum over images per class, score per class, unweighted mean over classes.
- "weighted": as macro, then the mean weighted by `class_weights` (normalised to sum 1).
- "micro-imagewise": sum over classes per image, score per image, mean over images.
- "macro-imagewise": score per (image, class), mean over images per class, then unweighted mean over classes.
- "weighted-imagewise": as macro-imagewise with the class mean weighted by `class_weights`.
- "none" / None: the (N, C) scores.
A score with a zero denominator (NaN) becomes `zero_division` (`"warn"`: 0 with a warning) before any
averaging. Differences from segmentation_models_pytorch 0.5.0, where it returns an undocumented value:
"micro" applies `zero_division` too (the reference returns NaN); "macro" / "macro-imagewise" ignore
`class_weights` and "weighted-imagewise" is a weighted SUM over classes, as the reference documents
(its code multiplies by the normalised weights and then takes the mean, dividing by C).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

REDUCTIONS = ("micro", "macro", "weighted", "micro-imagewise", "macro-imagewise", "weighted-imagewise", "none")
Metric = Callable[..., torch.Tensor]


def _handle_zero_division(x: torch.Tensor, zero_division: float | str) -> torch.Tensor:
    nans = torch.isnan(x)
    if zero_division == "warn":
        if bool(nans.any()):
            warnings.warn("Zero division in metric calculation! Replaced by 0.", stacklevel=4)
        value = 0.0
    else:
        value = float(zero_division)
    return torch.where(nans, torch.full_like(x, value), x)


def _compute_metric(
    metric_fn: Metric,
    tp: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    tn: torch.Tensor,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: float | str = 1.0,
    **metric_kwargs: float,
) -> torch.Tensor:
    reduction = "none" if reduction is None else reduction
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {list(REDUCTIONS)} or None")
    if zero_division != "warn" and not isinstance(zero_division, (int, float)):
        raise ValueError(f"zero_division must be a number or 'warn', got {zero_division!r}")
    counts = (tp, fp, fn, tn)
    if any(not isinstance(c, torch.Tensor) or c.dim() != 2 or c.shape != tp.shape for c in counts):
        raise ValueError("tp, fp, fn, tn must be (N, C) tensors of the same shape, as returned by get_stats")
    if "weighted" in reduction:
        if class_weights is None:
            raise ValueError(f"reduction={reduction!r} needs class_weights (one per class)")
        weights = torch.as_tensor(class_weights, dtype=torch.float32, device=tp.device)
        if weights.shape != (tp.shape[1],) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(
                f"class_weights must be {tp.shape[1]} weights >= 0 with a positive sum, got {list(class_weights)}"
            )
        weights = weights / weights.sum()

    def score(*c: torch.Tensor) -> torch.Tensor:
        return _handle_zero_division(metric_fn(*c, **metric_kwargs), zero_division)

    if reduction == "micro":
        return score(*(c.sum() for c in counts))
    if reduction in ("macro", "weighted"):
        per_class = score(*(c.sum(dim=0) for c in counts))
        return per_class.mean() if reduction == "macro" else (per_class * weights).sum()
    if reduction == "micro-imagewise":
        return score(*(c.sum(dim=1) for c in counts)).mean()
    per_pair = score(*counts)
    if reduction == "macro-imagewise":
        return per_pair.mean(dim=0).mean()
    if reduction == "weighted-imagewise":
        return (per_pair.mean(dim=0) * weights).sum()
    return per_pair


def _fbeta(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor, beta: float = 1.0) -> Tensor:
    beta_tp = (1 + beta**2) * tp
    return beta_tp / (beta_tp + beta**2 * fn + fp)


def _iou(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return tp / (tp + fp + fn)


def _accuracy(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return (tp + tn) / (tp + fp + fn + tn)


def _sensitivity(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return tp / (tp + fn)


def _specificity(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return tn / (tn + fp)


def _balanced_accuracy(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return (_sensitivity(tp, fp, fn, tn) + _specificity(tp, fp, fn, tn)) / 2


def _ppv(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return tp / (tp + fp)


def _npv(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return tn / (tn + fn)


def _fnr(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return 1 - _sensitivity(tp, fp, fn, tn)


def _fpr(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return 1 - _specificity(tp, fp, fn, tn)


def _fdr(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return 1 - _ppv(tp, fp, fn, tn)


def _for(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return 1 - _npv(tp, fp, fn, tn)


def _lr_plus(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return _sensitivity(tp, fp, fn, tn) / _fpr(tp, fp, fn, tn)


def _lr_minus(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> Tensor:
    return _fnr(tp, fp, fn, tn) / _specificity(tp, fp, fn, tn)


def _make(kernel: Metric, name: str, formula: str) -> Metric:
    def metric(
        tp: torch.Tensor,
        fp: torch.Tensor,
        fn: torch.Tensor,
        tn: torch.Tensor,
        reduction: str | None = None,
        class_weights: Sequence[float] | None = None,
        zero_division: float | str = 1.0,
    ) -> torch.Tensor:
        return _compute_metric(kernel, tp, fp, fn, tn, reduction, class_weights, zero_division)

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = (
        f"{formula}, from (N, C) confusion counts.\n\n"
        "Args:\n"
        "    tp: true positives (N, C) from `get_stats`.\n"
        "    fp: false positives.\n"
        "    fn: false negatives.\n"
        "    tn: true negatives.\n"
        "    reduction: see the module docstring; None or 'none' returns the (N, C) scores.\n"
        "    class_weights: one weight per class, for the weighted reductions.\n"
        "    zero_division: the value of a 0/0 score, or 'warn' (0 and a warning).\n"
    )
    return metric


def fbeta_score(
    tp: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    tn: torch.Tensor,
    beta: float = 1.0,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: float | str = 1.0,
) -> torch.Tensor:
    """F-beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP); arguments as the other metrics, plus `beta`."""
    return _compute_metric(_fbeta, tp, fp, fn, tn, reduction, class_weights, zero_division, beta=beta)


def f1_score(
    tp: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    tn: torch.Tensor,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: float | str = 1.0,
) -> torch.Tensor:
    """F1 (Dice) = 2 TP / (2 TP + FN + FP); see `fbeta_score`."""
    return _compute_metric(_fbeta, tp, fp, fn, tn, reduction, class_weights, zero_division, beta=1.0)


iou_score = _make(_iou, "iou_score", "IoU (Jaccard) = TP / (TP + FP + FN)")
accuracy = _make(_accuracy, "accuracy", "Accuracy = (TP + TN) / (TP + FP + FN + TN)")
sensitivity = _make(_sensitivity, "sensitivity", "Sensitivity (recall, TPR) = TP / (TP + FN)")
recall = _make(_sensitivity, "recall", "Recall (sensitivity) = TP / (TP + FN)")
specificity = _make(_specificity, "specificity", "Specificity (TNR) = TN / (TN + FP)")
balanced_accuracy = _make(_balanced_accuracy, "balanced_accuracy", "Balanced accuracy = (TPR + TNR) / 2")
positive_predictive_value = _make(_ppv, "positive_predictive_value", "PPV (precision) = TP / (TP + FP)")
precision = _make(_ppv, "precision", "Precision (PPV) = TP / (TP + FP)")
negative_predictive_value = _make(_npv, "negative_predictive_value", "NPV = TN / (TN + FN)")
false_negative_rate = _make(_fnr, "false_negative_rate", "FNR = 1 - TPR")
false_positive_rate = _make(_fpr, "false_positive_rate", "FPR = 1 - TNR")
false_discovery_rate = _make(_fdr, "false_discovery_rate", "FDR = 1 - PPV")
false_omission_rate = _make(_for, "false_omission_rate", "FOR = 1 - NPV")
positive_likelihood_ratio = _make(_lr_plus, "positive_likelihood_ratio", "LR+ = TPR / FPR")
negative_likelihood_ratio = _make(_lr_minus, "negative_likelihood_ratio", "LR- = FNR / TNR")
