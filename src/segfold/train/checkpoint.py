"""Checkpoints that load with `torch.load(weights_only=True)`: tensors, plain containers, numbers, strings.

A checkpoint holds the resolved config as a plain dict, so a model can be rebuilt from the file alone
(`load_checkpoint_model`). Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segfold.errors import TrainingError
from segfold.io import atomic_path


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` with torch.save, atomically (a killed run never leaves a half-written file)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a missing or unreadable file is a `TrainingError`."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path} (train the fold first, or check the experiment name)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle / zip errors of many kinds)
        raise TrainingError(f"{path}: not a readable segfold checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise TrainingError(f"{path}: not a segfold checkpoint (expected the keys 'model' and 'config')")
    return state


def load_checkpoint_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Rebuild the model saved in a checkpoint, in eval mode, with the config it was trained with.

    Args:
        path: a `best.pt` / `last.pt` / top-k file written by `segfold.train.train`.
        device: where the model goes.

    Returns:
        `(model, cfg)`: the model with the checkpoint's weights and the validated `segfold.config.Config`;
        ``model.pretrained_cfg`` is the input normalisation recorded in the checkpoint (the one it was
        trained with), for checkpoints that record one.
    """
    from segfold.config import validate_config
    from segfold.models import build_model

    state = load_checkpoint(path)
    cfg = validate_config(state["config"], source=f"{path} (embedded config)")
    model = build_model(cfg.model, len(cfg.data.classes))
    # `deep_supervision` only changes what the model returns in training mode; weights are the same.
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise TrainingError(
            f"{path}: weights do not match the model its config builds "
            f"(missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]})"
        )
    if state.get("preprocessing"):
        model.preprocessing = {key: list(value) if isinstance(value, (list, tuple)) else value
                               for key, value in state["preprocessing"].items()}
    return model.to(device).eval(), cfg


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) random states as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _python_state_to_plain(random.getstate()),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by `rng_state`."""
    random.setstate(_python_state_from_plain(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_plain(plain: dict[str, Any]) -> tuple:
    return plain["version"], tuple(int(v) for v in plain["internal"].tolist()), plain["gauss"]
