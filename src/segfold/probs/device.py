"""The one rule that turns a device setting (`train.device`, `infer.device`) into a torch device."""

from __future__ import annotations

import torch

from segfold.errors import ConfigError


def resolve_device(preference: str = "auto", local_rank: int = 0, key: str = "device") -> torch.device:
    """`auto`: CUDA (this process's `local_rank` GPU) when available, else CPU; anything else as torch names it.

    Args:
        preference: `auto`, `cpu`, `cuda`, `cuda:1`, ...
        local_rank: the GPU of a bare `cuda` / `auto` (torchrun's LOCAL_RANK).
        key: the config key named in errors.

    Raises:
        ConfigError: an unknown name, or CUDA asked for without a CUDA device.
    """
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ConfigError(f"{key} = {preference!r} is not a device: use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} = {preference!r} but no CUDA device is available; use {key}=auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
