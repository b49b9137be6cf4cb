"""segfold.train: the training loop, its optimizers, schedules, checkpoints and run records.

`train(cfg, fold)` trains one fold, `train_folds(cfg, folds)` several, and
`load_checkpoint_model(path, device)` rebuilds a trained model for inference.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "train": "segfold.train.loop",
    "train_folds": "segfold.train.loop",
    "load_checkpoint_model": "segfold.probs.checkpoint",
    "load_checkpoint": "segfold.probs.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # NOTE imported lazily: segfold.config.schema imports segfold.train.config, and the loop imports
    # torch and the data layer, which must not load whenever a config is validated.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segfold.train' has no attribute {name!r}")
