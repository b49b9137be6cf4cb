"""Confusion counts per (image, class): `get_stats`, with the input rules of segmentation_models_pytorch.

Rules: `target` holds integers; a floating `output` needs `threshold` (binary / multilabel only:
`output >= threshold` is positive); multiclass `output` holds class indices and needs `num_classes`;
`ignore_index` (multiclass, multilabel) removes the pixels whose TARGET equals it from all four counts.
Stricter than the reference where it would silently give a wrong number: binary inputs must have one
channel (N, 1, ...), binary / multilabel targets must be 0 / 1, multiclass labels must lie in
[0, num_classes), and NaN outputs are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MODES = ("binary", "multiclass", "multilabel")
Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check(
    output: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: int | None,
    threshold: float | Sequence[float] | None,
    num_classes: int | None,
) -> None:
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError("get_stats: output and target must be torch tensors")
    if mode not in MODES:
        raise ValueError(f"get_stats: mode={mode!r} is not one of {list(MODES)}")
    if target.is_floating_point():
        raise ValueError(f"get_stats: target must be an integer tensor (e.g. target.long()), got {target.dtype}")
    if mode == "multiclass":
        if output.is_floating_point():
            raise ValueError(
                f"get_stats(mode='multiclass'): output must hold integer class indices (argmax), got {output.dtype}"
            )
        if threshold is not None:
            raise ValueError("get_stats(mode='multiclass'): threshold is not supported; pass argmax class indices")
        if num_classes is None or num_classes < 1:
            raise ValueError(f"get_stats(mode='multiclass'): num_classes must be a positive int, got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"get_stats: ignore_index={ignore_index} must lie outside the class range 0..{num_classes - 1}"
            )
    elif output.is_floating_point() and threshold is None:
        raise ValueError(f"get_stats: a floating output ({output.dtype}) needs a threshold, or pass integer labels")
    if mode == "binary" and ignore_index is not None:
        raise ValueError("get_stats(mode='binary'): ignore_index is not supported; use mode='multilabel'")
    if output.shape != target.shape:
        raise ValueError(f"get_stats: output shape {tuple(output.shape)} must equal target shape {tuple(target.shape)}")
    if output.dim() < 2:
        raise ValueError(f"get_stats: output must be at least (N, C) or (N, ...), got shape {tuple(output.shape)}")
    if mode == "binary" and output.shape[1] != 1:
        raise ValueError(
            f"get_stats(mode='binary'): output must be (N, 1, ...), got {tuple(output.shape)}; "
            "add the channel axis with x.unsqueeze(1)"
        )


def _check_values(output: torch.Tensor, target: torch.Tensor, mode: str, ignore_index: int | None, high: int) -> None:
    """One sync: labels outside [0, high] in target (other than ignore_index) or in output."""
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    bad_target = ((target < 0) | (target > high)) & valid
    bad_output = (output < 0) | (output > high)
    if mode == "multiclass":
        bad_output = bad_output & valid  # predictions at ignored pixels are not scored
    bad_target, bad_output = torch.stack([bad_target.any(), bad_output.any()]).tolist()
    allowed = f"[0, {high}]" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
    if bad_target:
        raise ValueError(f"get_stats(mode={mode!r}): target holds values outside {allowed}")
    if bad_output:
        raise ValueError(f"get_stats(mode={mode!r}): output holds values outside [0, {high}]")


def _multiclass(output: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None) -> Stats:
    batch = output.shape[0]
    output = output.reshape(batch, -1).long()
    target = target.reshape(batch, -1).long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    offset = torch.arange(batch, device=output.device).unsqueeze(1) * num_classes  # (N, 1)
    size = batch * num_classes

    def count(index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.bincount((index + offset)[keep], minlength=size).reshape(batch, num_classes)

    tp = count(target, valid & (output == target))
    n_pred = count(output, valid)
    n_true = count(target, valid)
    fp, fn = n_pred - tp, n_true - tp
    tn = valid.sum(dim=1, keepdim=True) - tp - fp - fn
    return tp, fp, fn, tn


def _multilabel(output: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> Stats:
    batch, channels = output.shape[0], output.shape[1]
    output = output.reshape(batch, channels, -1).long()
    target = target.reshape(batch, channels, -1).long()
    if ignore_index is not None:
        valid = (target != ignore_index).long()
        output, target = output * valid, target * valid
        total = valid.sum(dim=2)
    else:
        total = torch.full((batch, channels), target.shape[2], dtype=torch.long, device=target.device)
    tp = (output * target).sum(dim=2)
    fp = output.sum(dim=2) - tp
    fn = target.sum(dim=2) - tp
    return tp, fp, fn, total - tp - fp - fn


def get_stats(
    output: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: int | None = None,
    threshold: float | Sequence[float] | None = None,
    num_classes: int | None = None,
) -> Stats:
    """True positive, false positive, false negative and true negative pixel counts per (image, class).

    Args:
        output: binary / multilabel (N, C, ...) labels or scores (with `threshold`); multiclass (N, ...)
            class indices.
        target: integer tensor of the same shape: 0 / 1 masks, or class indices for multiclass.
        mode: "binary" (C must be 1), "multiclass" or "multilabel".
        ignore_index: target value to leave out (multiclass, multilabel).
        threshold: for a floating `output`: a float, or one float per class (binary / multilabel).
        num_classes: required for multiclass.

    Returns:
        tp, fp, fn, tn: each a (N, C) long tensor.
    """
    _check(output, target, mode, ignore_index, threshold, num_classes)
    if threshold is not None:
        if isinstance(threshold, Sequence):
            if len(threshold) != output.shape[1]:
                raise ValueError(f"get_stats: {len(threshold)} thresholds for {output.shape[1]} classes")
            shape = (1, output.shape[1]) + (1,) * (output.dim() - 2)
            threshold = torch.tensor(list(threshold), dtype=output.dtype, device=output.device).reshape(shape)
        if output.is_floating_point() and bool(torch.isnan(output).any()):
            raise ValueError("get_stats: output contains NaN")
        output = (output >= threshold).long()
    high = num_classes - 1 if mode == "multiclass" else 1
    _check_values(output, target, mode, ignore_index, high)
    if mode == "multiclass":
        return _multiclass(output, target, num_classes, ignore_index)
    return _multilabel(output, target, ignore_index)
