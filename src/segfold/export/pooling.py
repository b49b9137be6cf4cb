"""Adaptive average pooling of one fixed input size as two averaging matrices, for ONNX export.

``AdaptiveAvgPool2d(b)`` averages, for output row ``i`` of an input with ``n`` rows, the rows
``floor(i * n / b)`` to ``ceil((i + 1) * n / b) - 1`` (and likewise for columns). For a known input
size that is ``P_h @ x @ P_w.T`` with ``P`` holding ``1 / window`` over each window: exactly what
PyTorch computes, in operators every ONNX exporter takes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from segfold.export.plan import _bins


def pooling_matrix(length: int, bins: int) -> torch.Tensor:
    """``(bins, length)`` averaging matrix of 1-D adaptive average pooling.

    Example: length 5, bins 2 -> windows rows 0-2 and 2-4: ``[[1/3, 1/3, 1/3, 0, 0], [0, 0, 1/3, 1/3, 1/3]]``.
    """
    matrix = torch.zeros(bins, length)
    for i in range(bins):
        start, end = (i * length) // bins, -((-(i + 1) * length) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class FixedAveragePool(nn.Module):
    """``AdaptiveAvgPool2d`` for inputs of one height and width."""

    def __init__(self, in_size: tuple[int, int], bins: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", pooling_matrix(in_size[0], bins[0]))  # (bins_h, H)
        self.register_buffer("cols", pooling_matrix(in_size[1], bins[1]).t().contiguous())  # (W, bins_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols)  # (N, C, bins_h, bins_w)


@contextlib.contextmanager
def fixed_pyramid_pooling(model: nn.Module, example: torch.Tensor) -> Iterator[int]:
    """Within the block, the model's non-global ``AdaptiveAvgPool2d`` layers are ``FixedAveragePool``s of
    the sizes they see for ``example``; yields how many were replaced. The model is restored afterwards."""
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        sizes[module] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d) and _bins(m.output_size) != (1, 1)]
    hooks = [pool.register_forward_pre_hook(record) for pool in pools]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if child in sizes:
                bins = tuple(b if b is not None else s for b, s in zip(_bins(child.output_size), sizes[child],
                                                                       strict=True))
                replacement = FixedAveragePool(sizes[child], bins).to(example.device)
                setattr(parent, name, replacement)
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
