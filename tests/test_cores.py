"""Sharing the machine's cores: threads per process, DataLoader workers, progress output."""

from __future__ import annotations

import io

import pytest
import torch

from segfold import cores
from segfold.config import ConfigError, validate_config
from segfold.train.loop import show_progress

ENV = ("SEGFOLD_THREADS", "SEGFOLD_LOCAL_PROCESSES", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")


@pytest.fixture
def machine(monkeypatch):
    """A clean environment on a pretend machine of `machine(n)` cores."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)

    def set_cores(count: int) -> None:
        monkeypatch.setattr(cores, "machine_cores", lambda: count)

    return set_cores


def test_processes_come_from_the_launcher(machine, monkeypatch):
    machine(8)
    assert (cores.local_processes(), cores.core_share()) == (1, 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc_per_node 4
    assert (cores.local_processes(), cores.core_share()) == (4, 2)
    monkeypatch.setenv("SEGFOLD_LOCAL_PROCESSES", "3")  # tune_hparams --workers 3
    assert (cores.local_processes(), cores.core_share()) == (3, 2)  # 8 // 3
    machine(2)
    assert cores.core_share() == 1  # never below one


def test_threads_add_up_to_the_cores(machine, monkeypatch):
    machine(8)
    monkeypatch.setenv("SEGFOLD_LOCAL_PROCESSES", "2")
    # two processes of 4 cores; one with 1 loader worker keeps 3 threads: 2 * (3 + 1) = 8
    assert cores.threads_per_process(loader_workers=1) == 3
    assert cores.threads_per_process(loader_workers=0) == 4
    assert cores.threads_per_process(loader_workers=9) == 1


def test_explicit_threads_win_except_torchruns_own_default(machine, monkeypatch):
    machine(8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cores.threads_per_process(loader_workers=2) == 3
    monkeypatch.setenv("SEGFOLD_THREADS", "5")
    assert cores.threads_per_process() == 5
    monkeypatch.delenv("SEGFOLD_THREADS")
    # torchrun sets OMP_NUM_THREADS=1 for its ranks when it is unset: not taken as a choice
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cores.threads_per_process() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert cores.threads_per_process() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert cores.threads_per_process() == 8


@pytest.mark.parametrize(
    ("count", "processes", "device", "batch", "expected"),
    [
        (16, 1, "cuda", 32, 15),  # GPU: every core but the main process's
        (16, 2, "cuda", 32, 7),  # two ranks: 8 cores each
        (16, 1, "cuda", 4, 4),  # not more than the batch holds
        (16, 1, "cpu", 32, 4),  # CPU: a quarter of the share
        (2, 1, "cpu", 16, 0),  # a 2-core machine trains on the CPU without workers
        (2, 1, "cuda", 16, 1),
    ],
)
def test_default_loader_workers(machine, monkeypatch, count, processes, device, batch, expected):
    machine(count)
    monkeypatch.setenv("SEGFOLD_LOCAL_PROCESSES", str(processes))
    assert cores.default_loader_workers(batch, device) == expected
    assert cores.resolve_loader_workers("auto", batch, device) == expected
    assert cores.resolve_loader_workers(3, batch, device) == 3


def test_apply_threads_sets_torch(machine, monkeypatch):
    machine(4)
    monkeypatch.setenv("SEGFOLD_LOCAL_PROCESSES", "2")
    before = torch.get_num_threads()
    try:
        assert cores.apply_threads(loader_workers=1) == 1 and torch.get_num_threads() == 1
        assert cores.apply_threads(loader_workers=0) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_machine_cores_is_within_the_affinity():
    import os

    assert 1 <= cores.machine_cores() <= len(os.sched_getaffinity(0))


def test_num_workers_setting():
    assert validate_config({}).train.num_workers == "auto"
    assert validate_config({"train": {"num_workers": 2}}).train.num_workers == 2
    with pytest.raises(ConfigError, match="train.num_workers"):
        validate_config({"train": {"num_workers": -1}})
    with pytest.raises(ConfigError, match="train.num_workers"):
        validate_config({"train": {"num_workers": "many"}})


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    assert show_progress(True, _Terminal()) is True
    assert show_progress(False, _Terminal()) is False
    assert show_progress(True, io.StringIO()) is False  # a log file gets the epoch lines only
