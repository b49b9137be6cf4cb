"""Checkpoint averaging (`train.average`): SWA over the last epochs or the mean of the top-k checkpoints.

Averaging weights leaves BatchNorm running statistics that belong to no network (the mean of the
stored means is not the mean of the averaged network's activations), so they are recomputed by
forwarding training batches through the averaged model (torch's `update_bn`, a cumulative average).

Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization" (2018):
https://arxiv.org/abs/1803.05407
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

SWA_PREFIX = "swa_epoch"
AVERAGED_FILE = "averaged.pt"


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (computed in float64); other tensors from the last state.

    Args:
        states: state dicts with the same keys and shapes.

    Raises:
        ValueError: no states, or states with different keys.
    """
    if not states:
        raise ValueError("nothing to average: no state dicts given")
    keys = list(states[-1])
    for index, state in enumerate(states):
        if list(state) != keys:
            raise ValueError(f"state dict {index} has other keys than the last one; they come from different models")
    averaged = {}
    for key in keys:
        last = states[-1][key]
        if last.is_floating_point():
            total = torch.stack([s[key].double() for s in states]).mean(dim=0)
            averaged[key] = total.to(last.dtype)
        else:  # e.g. BatchNorm's num_batches_tracked: recomputed afterwards anyway
            averaged[key] = last.clone()
    return averaged


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any module keeps BatchNorm running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def recompute_batchnorm(model: nn.Module, images: Iterable[torch.Tensor], max_batches: int | None = None) -> int:
    """Reset every BatchNorm's running statistics and recompute them over `images` (equal-weight batches).

    After the call each running mean is the average of the batch means (and each running variance
    the average of the unbiased batch variances) of the batches seen; the model's train/eval mode
    is restored.

    Args:
        model: the model (plain, not DDP-wrapped).
        images: input batches already on the model's device.
        max_batches: stop after this many batches (None: all).

    Returns:
        The number of batches forwarded (0 when the model has no BatchNorm: nothing is done).
    """
    if not has_batchnorm(model):
        return 0
    counted = [0]

    def counting() -> Iterable[torch.Tensor]:
        for batch in itertools.islice(images, max_batches):
            counted[0] += 1
            yield batch

    update_bn(counting(), model)
    return counted[0]


def swa_file(epoch: int) -> str:
    """Name of the per-epoch weights SWA keeps (`swa_epoch007.pt`)."""
    return f"{SWA_PREFIX}{epoch:03d}.pt"


def swa_window(folder: Path, last_epoch: int, epochs: int) -> tuple[list[str], list[str]]:
    """The SWA files to keep (epochs `last_epoch - epochs + 1 .. last_epoch`) and those to delete.

    Returns:
        `(kept names, oldest first; stale names)`.
    """
    first = last_epoch - epochs + 1
    present = sorted(p.name for p in folder.glob(f"{SWA_PREFIX}[0-9][0-9][0-9].pt"))
    kept = [name for name in present if first <= int(name[len(SWA_PREFIX):-3]) <= last_epoch]
    return kept, [name for name in present if name not in kept]


def epochs_of(names: Sequence[str]) -> list[int]:
    """Epoch numbers of `swa_epochNNN.pt` / `epochNNN.pt` file names."""
    return [int(Path(name).stem[-3:]) for name in names]
