"""Sharing one machine's cores between the processes segfold starts on it.

Several processes run on one machine: Optuna workers (`tune_hparams.py --workers N`), torchrun's ranks,
DataLoader workers. Left alone, each process's torch (and OpenCV) takes a thread per core, and on a
2-core machine two trainings then run four times slower than one instead of twice (measured: 19 s alone,
82 s for two at once, 24 s for two with one thread each). The rule here: the processes of one machine
split its cores evenly, and inside one process the DataLoader workers (one thread each) come out of that
share, so that all threads add up to the cores.

Explicit settings win: `SEGFOLD_THREADS` (threads per process), else `OMP_NUM_THREADS` when set by the
user. The number of processes on the machine comes from `SEGFOLD_LOCAL_PROCESSES` (set by
`tune_hparams.py --workers N` for its workers) or torchrun's `LOCAL_WORLD_SIZE`.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import torch

THREADS_VAR = "SEGFOLD_THREADS"
PROCESSES_VAR = "SEGFOLD_LOCAL_PROCESSES"


def machine_cores() -> int:
    """Cores this process may use: its CPU affinity, lowered by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _positive_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


def local_processes() -> int:
    """How many processes of this kind share the machine (1 unless a launcher said otherwise)."""
    return _positive_int(PROCESSES_VAR) or _positive_int("LOCAL_WORLD_SIZE") or 1


def core_share() -> int:
    """This process's share of the machine's cores (at least 1)."""
    return max(1, machine_cores() // local_processes())


def explicit_threads() -> int | None:
    """Threads per process set by the user (`SEGFOLD_THREADS`, else `OMP_NUM_THREADS`), or None.

    NOTE: torchrun sets OMP_NUM_THREADS=1 for every rank when it is unset; that value under torchrun is
    taken as torchrun's default, not the user's choice (set SEGFOLD_THREADS=1 to insist on it).
    """
    threads = _positive_int(THREADS_VAR)
    if threads is not None:
        return threads
    omp = _positive_int("OMP_NUM_THREADS")
    if omp == 1 and _positive_int("LOCAL_WORLD_SIZE") not in (None, 1):
        return None
    return omp


def default_loader_workers(batch_size: int, device_type: str) -> int:
    """DataLoader workers chosen from the machine for `num_workers: auto`.

    On CUDA the model runs on the GPU, so every core of this process's share but one (for the main
    process) decodes and augments. On the CPU the model competes with loading for the same cores: a
    worker only pays when the share is large (a quarter of it loads). Never more than the batch holds.
    """
    share = core_share()
    workers = share - 1 if device_type == "cuda" else share // 4
    return max(0, min(workers, batch_size))


def resolve_loader_workers(setting: int | str, batch_size: int, device_type: str) -> int:
    """`train.num_workers` as a number: `auto` is `default_loader_workers`."""
    if setting == "auto":
        return default_loader_workers(batch_size, device_type)
    return int(setting)


def threads_per_process(loader_workers: int = 0) -> int:
    """Torch threads for this process: the explicit setting, else its core share less its loader workers."""
    explicit = explicit_threads()
    if explicit is not None:
        return explicit
    return max(1, core_share() - loader_workers)


def apply_threads(loader_workers: int = 0) -> int:
    """Set torch's (and OpenCV's) threads for this process from `threads_per_process`; returns the number."""
    threads = threads_per_process(loader_workers)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads


def worker_threads(worker_id: int | None = None) -> None:
    """In a DataLoader worker (usable as its `worker_init_fn`): one thread (torch sets its own; OpenCV does not)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
