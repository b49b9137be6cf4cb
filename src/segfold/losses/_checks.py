"""Cheap input checks shared by the losses: shapes, dtypes, label ranges and NaN.

Every check that needs the tensor values (NaN, label range) is folded into ONE host sync per call,
because these run on every training step. Messages name the argument (`y_pred`, `y_true`) and say
what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MODES = ("binary", "multiclass", "multilabel")


def check_mode(owner: str, mode: str, allowed: Sequence[str] = MODES) -> str:
    """Return `mode` if it is one of `allowed`, else raise a ValueError naming `owner`."""
    if mode not in allowed:
        raise ValueError(f"{owner}: mode={mode!r} is not supported; use one of {list(allowed)}")
    return mode


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_pair(
    owner: str, mode: str, y_pred: torch.Tensor, y_true: torch.Tensor, ignore_index: int | float | None = None
) -> torch.Tensor:
    """Validate a (prediction, target) pair for `mode` and return `y_true` shaped for it.

    - binary: `y_pred` (N, 1, ...) or (N, ...); `y_true` the same shape or without the channel axis;
      values in [0, 1] (or `ignore_index`).
    - multiclass: `y_pred` (N, C, ...); `y_true` (N, ...) integer class indices in [0, C) (or `ignore_index`).
    - multilabel: `y_pred` and `y_true` (N, C, ...); values in [0, 1] (or `ignore_index`).

    Returns:
        `y_true`, reshaped to `y_pred`'s shape in binary / multilabel mode (a view), unchanged in multiclass.

    Raises:
        ValueError: on a wrong type, dtype or shape, a label out of range, or NaN in `y_pred`.
    """
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y_true, torch.Tensor):
        raise ValueError(
            f"{owner}: y_pred and y_true must be torch tensors, got {type(y_pred).__name__} and {type(y_true).__name__}"
        )
    if not y_pred.is_floating_point():
        raise ValueError(
            f"{owner}: y_pred must be a floating-point tensor (logits or probabilities), got {y_pred.dtype}"
        )
    if y_pred.dim() < 2:
        raise ValueError(f"{owner}: y_pred must be at least (N, C), got shape {_shape(y_pred)}")
    if y_true.shape[:1] != y_pred.shape[:1]:
        raise ValueError(
            f"{owner}: y_true has batch size {y_true.shape[0] if y_true.dim() else 'none'} "
            f"but y_pred has {y_pred.shape[0]}; they must match"
        )
    no_channel = y_pred.shape[:1] + y_pred.shape[2:]
    num_classes = y_pred.shape[1]
    if mode == "multiclass":
        if y_true.shape != no_channel:
            raise ValueError(
                f"{owner}(mode='multiclass'): y_true must be class indices of shape {tuple(no_channel)} "
                f"(y_pred {_shape(y_pred)} without its class axis), got {_shape(y_true)}"
            )
        if y_true.is_floating_point() or y_true.dtype == torch.bool:
            raise ValueError(
                f"{owner}(mode='multiclass'): y_true must hold integer class indices (torch.long), got {y_true.dtype}"
            )
        bad = (y_true < 0) | (y_true >= num_classes)
    else:
        if mode == "binary" and y_pred.dim() >= 4 and num_classes != 1:
            raise ValueError(
                f"{owner}(mode='binary'): y_pred must have one channel, got shape {_shape(y_pred)}; "
                "use mode='multilabel' for several independent classes"
            )
        if y_true.shape != y_pred.shape:
            if mode == "binary" and num_classes == 1 and y_true.shape == no_channel:
                y_true = y_true.view(y_pred.shape)
            else:
                expected = f"{_shape(y_pred)}" + (f" or {tuple(no_channel)}" if mode == "binary" else "")
                raise ValueError(f"{owner}(mode={mode!r}): y_true must have shape {expected}, got {_shape(y_true)}")
        bad = None if y_true.dtype == torch.bool else (y_true < 0) | (y_true > 1)
    if bad is not None and ignore_index is not None:
        bad = bad & (y_true != ignore_index)
    _raise_on_values(owner, mode, y_pred, y_true, bad, num_classes, ignore_index)
    return y_true


def _raise_on_values(
    owner: str,
    mode: str,
    y_pred: torch.Tensor,
    y_true: torch.Tensor,
    bad: torch.Tensor | None,
    num_classes: int,
    ignore_index: int | float | None,
) -> None:
    flags = [torch.isnan(y_pred.detach()).any()]
    if bad is not None:
        flags.append(bad.any())
    values = torch.stack(flags).tolist()  # the one host sync
    if values[0]:
        raise ValueError(
            f"{owner}: y_pred contains NaN ({int(torch.isnan(y_pred).sum())} values); "
            "check the learning rate, the input normalisation and mixed precision"
        )
    if len(values) > 1 and values[1]:
        offending = y_true[bad]
        lo, hi = offending.min().item(), offending.max().item()
        ignore = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        if mode == "multiclass":
            raise ValueError(
                f"{owner}(mode='multiclass'): y_true holds class indices in [{lo}, {hi}] outside [0, {num_classes - 1}]"
                f"{ignore} (y_pred has {num_classes} classes); fix the label map or set ignore_index"
            )
        raise ValueError(
            f"{owner}(mode={mode!r}): y_true must hold values in [0, 1]{ignore}, found values in [{lo}, {hi}]; "
            "masks stored as 0/255 must be divided by 255"
        )


def check_finite_logits(owner: str, y_pred: torch.Tensor) -> None:
    """Raise a ValueError if `y_pred` is not a floating tensor or contains NaN (one sync)."""
    if not isinstance(y_pred, torch.Tensor) or not y_pred.is_floating_point():
        raise ValueError(
            f"{owner}: y_pred must be a floating-point torch tensor, got {getattr(y_pred, 'dtype', y_pred)}"
        )
    if bool(torch.isnan(y_pred.detach()).any()):
        raise ValueError(f"{owner}: y_pred contains NaN; check the learning rate and mixed precision")


def check_classes(owner: str, classes: Sequence[int] | None, mode: str) -> torch.Tensor | None:
    """Validate a class subset at construction; returns it as a long tensor (or None)."""
    if classes is None:
        return None
    if mode == "binary":
        raise ValueError(f"{owner}: classes={list(classes)} is not supported with mode='binary' (one class only)")
    values = [int(c) for c in classes]
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise ValueError(f"{owner}: classes must be a non-empty list of distinct indices >= 0, got {list(classes)}")
    return torch.tensor(values, dtype=torch.long)


def check_class_weights(owner: str, class_weights: Sequence[float] | None) -> torch.Tensor | None:
    """Validate per-class weights at construction (non-empty, >= 0, positive sum)."""
    if class_weights is None:
        return None
    values = [float(w) for w in class_weights]
    if not values or min(values) < 0 or sum(values) <= 0:
        raise ValueError(
            f"{owner}: class_weights must be a non-empty list of weights >= 0 with a positive sum, got {values}"
        )
    return torch.tensor(values)
