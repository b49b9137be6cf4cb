"""Output heads shared by every architecture: the mask head, the image-level (aux) head, activations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

ActivationSpec = str | Callable[..., Any] | nn.Module | None

ACTIVATION_NAMES = ("identity", "sigmoid", "softmax", "softmax2d", "logsoftmax", "tanh", "argmax")


class ArgMax(nn.Module):
    """Index of the largest channel: (N, C, ...) -> (N, ...)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.argmax(x, dim=self.dim)


class Lambda(nn.Module):
    """Wrap a plain function (an activation given as a callable that is not a module class)."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def get_activation(activation: ActivationSpec) -> nn.Module:
    """An activation module from a name, a module class, a module, or a function.

    Args:
        activation: None / "identity", "sigmoid", "softmax" / "softmax2d" (over channels),
            "logsoftmax" (over channels), "tanh", "argmax" (over channels), an ``nn.Module``
            subclass (instantiated without arguments), an ``nn.Module`` or a function of a tensor.
    """
    if activation is None or activation == "identity":
        return nn.Identity()
    if isinstance(activation, str):
        named: dict[str, Callable[[], nn.Module]] = {
            "sigmoid": nn.Sigmoid,
            "softmax": lambda: nn.Softmax(dim=1),
            "softmax2d": lambda: nn.Softmax(dim=1),
            "logsoftmax": lambda: nn.LogSoftmax(dim=1),
            "tanh": nn.Tanh,
            "argmax": ArgMax,
        }
        if activation not in named:
            raise ValueError(f"activation={activation!r} is not supported; use None, a callable or one of "
                             f"{', '.join(ACTIVATION_NAMES)}")
        return named[activation]()
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    if callable(activation):
        return Lambda(activation)
    raise ValueError(f"activation={activation!r} is not supported; use None, a callable or one of "
                     f"{', '.join(ACTIVATION_NAMES)}")


class SegmentationHead(nn.Sequential):
    """Conv to ``classes`` channels, optional bilinear upsampling, activation."""

    def __init__(self, in_channels: int, classes: int, kernel_size: int = 3, upsampling: int = 1,
                 activation: ActivationSpec = None) -> None:
        conv = nn.Conv2d(in_channels, classes, kernel_size, padding=kernel_size // 2)
        upsample: nn.Module = (nn.Upsample(scale_factor=upsampling, mode="bilinear", align_corners=False)
                               if upsampling > 1 else nn.Identity())
        super().__init__(conv, upsample, get_activation(activation))


POOLINGS = ("avg", "max")
AUX_KEYS = ("classes", "pooling", "dropout", "activation")


class ClassificationHead(nn.Sequential):
    """Global pooling -> dropout -> linear -> activation, on the deepest encoder feature."""

    def __init__(self, in_channels: int, classes: int, pooling: str = "avg", dropout: float | None = 0.2,
                 activation: ActivationSpec = None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"aux_params pooling={pooling!r} is not supported; use 'avg' or 'max'")
        pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        drop: nn.Module = nn.Dropout(p=dropout) if dropout else nn.Identity()
        super().__init__(pool, nn.Flatten(), drop, nn.Linear(in_channels, classes, bias=True),
                         get_activation(activation))

    @classmethod
    def from_params(cls, in_channels: int, aux_params: dict[str, Any]) -> ClassificationHead:
        """Build from the smp-style ``aux_params`` dict (``classes`` required; unknown keys are errors)."""
        unknown = sorted(set(aux_params) - set(AUX_KEYS))
        if unknown:
            raise ValueError(f"aux_params has unknown key(s) {unknown}; valid keys: {', '.join(AUX_KEYS)}")
        if "classes" not in aux_params:
            raise ValueError("aux_params needs 'classes' (the number of image-level outputs)")
        return cls(in_channels, **aux_params)
