"""DistributedDataParallel helpers: process-group set-up from torchrun's environment, sharding, gathering.

`torchrun --nproc_per_node N scripts/train.py ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without them
everything here degrades to a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from segfold.probs import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the number of processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), or run as one process.

    Safe to call twice: an existing process group is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank, key="train.device")
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-item list in a single process)."""
    if not info.distributed:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sum_across(values: Sequence[float], info: DistInfo) -> list[float]:
    """Element-wise sum of a short list of numbers over ranks (float64)."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if info.distributed:
        if dist.get_backend() == "nccl":
            tensor = tensor.to(info.device)
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def shard_indices(count: int, info: DistInfo) -> list[int]:
    """Disjoint, unpadded shares of `range(count)` for evaluation (every item scored exactly once)."""
    return list(range(info.rank, count, info.world_size))
