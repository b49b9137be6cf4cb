"""Throughput of the same model and input on several runtimes, measured side by side.

Rounds alternate between the runtimes (eager, onnx, eager, onnx, ...) so that a machine whose load
changes during the run slows every runtime alike; each runtime's figure is the median of its rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

Runner = Callable[[torch.Tensor], object]


def _sync(images: torch.Tensor) -> None:
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)


def images_per_second(runners: Mapping[str, Runner], images: torch.Tensor, rounds: int = 5, warmup: int = 1,
                      repeats: int = 1) -> dict[str, float]:
    """Median images/s of each runner on ``images``.

    Args:
        runners: name -> function of a batch (its output is discarded).
        images: the one batch every runner gets.
        rounds: timed rounds per runner, interleaved.
        warmup: untimed calls per runner first.
        repeats: calls per timed round.
    """
    with torch.inference_mode():
        for run in runners.values():
            for _ in range(warmup):
                run(images)
        _sync(images)
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                for _ in range(repeats):
                    run(images)
                _sync(images)
                seconds[name].append(time.perf_counter() - start)
    return {name: repeats * len(images) / max(statistics.median(values), 1e-12) for name, values in seconds.items()}
