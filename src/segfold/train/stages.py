"""Staged training and the full-data fit: the configs they run with.

`stages:` in a config runs partial overrides one after the other on each fold (`segfold.config.load.
stage_configs` makes each stage's config); `scripts/train.py --fold full` trains on every training
image (the holdout excepted) for `train.full_epochs`, else `train.steps`, else the median best epoch
of the folds. With `train.steps` each of them derives its epochs from its own training loader
(`steps_config`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from segfold.config.load import config_to_dict, deep_merge, validate_config
from segfold.errors import ConfigError
from segfold.probs import FULL_DIR
from segfold.train.checks import check_training_config

FULL = FULL_DIR  # the "fold" of a full-data fit (every training image, no validation, `outputs/<exp>/full/`)

logger = logging.getLogger(__name__)


def shifted_callback(callback: Callable[[int, dict[str, Any]], None], offset: int, epoch: int,
                     metrics: dict[str, Any]) -> None:
    """`callback` on one epoch axis over the stages: a later stage's epoch e is reported as `offset + e`."""
    callback(epoch + offset, metrics)


def steps_config(cfg: Any, label: str, num_batches: int) -> tuple[Any, dict[str, int] | None]:
    """The config a fold (stage, full fit) trains with under `train.steps`: its epochs derived, steps cleared.

    `epochs = max(1, round(steps / ceil(num_batches / accumulate_steps)))`, halves rounded up, with
    `num_batches` this rank's training batches per epoch (after `train.max_train_batches`). The copy is
    validated again, so every epoch-based check runs on the derived count. Without `train.steps`:
    `(cfg, None)`.

    Returns:
        The config, and `{steps, epochs, batches_per_epoch, optimizer_steps_per_epoch}` (for the records).

    Raises:
        ConfigError: the derived epoch count conflicts with another key (both named, with the fold).
    """
    steps = cfg.train.steps
    if steps is None:
        return cfg, None
    per_epoch = math.ceil(num_batches / cfg.train.accumulate_steps)
    epochs = max(1, math.floor(steps / per_epoch + 0.5))
    derivation = {"steps": steps, "epochs": epochs, "batches_per_epoch": num_batches,
                  "optimizer_steps_per_epoch": per_epoch}
    try:
        derived = validate_config(deep_merge(config_to_dict(cfg), {"train": {"epochs": epochs, "steps": None}}),
                                  source="train.steps")
        check_training_config(derived)
    except ConfigError as exc:
        raise ConfigError(
            f"{label}: train.steps = {steps} derives {epochs} epoch(s) ({per_epoch} optimizer steps per epoch from "
            f"{num_batches} batches / train.accumulate_steps = {cfg.train.accumulate_steps}), which conflicts "
            f"with another key: {exc}. Raise train.steps or change that key"
        ) from None
    return derived, derivation


def full_fit_configs(configs: list[Any]) -> tuple[list[Any], list[str]]:
    """The stage configs of a full-data fit: `train.full_epochs`, else `train.steps` (the fit derives its
    epochs from its own loader), else the median best epoch over the folds.

    The folds' best epochs are read from `fold<k>/result.json` (`fold<k>/stage<s>/result.json` for
    the earlier stages of a staged run). A full fit has no validation, so it writes no OOF.

    Returns:
        The configs, and per stage where its epoch count came from (for `outputs/runs.csv`).

    Raises:
        ConfigError: no fold has a result to take the epoch count from, or a plateau schedule
            (it needs a validation score).
    """
    out = Path(configs[0].experiment.output_dir)
    fitted, sources = [], []
    for number, stage_cfg in enumerate(configs, 1):
        if stage_cfg.scheduler.name == "plateau":
            raise ConfigError("--fold full has no validation score for scheduler.name=plateau; use cosine, poly, "
                              "onecycle or constant")
        epochs, source = stage_cfg.train.full_epochs, "train.full_epochs"
        if epochs is None and stage_cfg.train.steps is not None:
            # NOTE the fit counts its own batches (every training image): its epochs come in FoldRun
            overrides = {"train": {"write_oof": False, "patience": None, "valid_every": 1}}
            fitted.append(validate_config(deep_merge(config_to_dict(stage_cfg), overrides), source="--fold full"))
            sources.append(f"train.steps {stage_cfg.train.steps}")
            continue
        if epochs is None:
            inner = f"stage{number}/" if number < len(configs) else ""
            found = sorted(out.glob(f"fold[0-9]*/{inner}result.json"))
            chosen = {int(p.relative_to(out).parts[0][4:]): json.loads(p.read_text())["best_epoch"] for p in found}
            chosen = {fold: int(b) for fold, b in sorted(chosen.items()) if b}
            best = list(chosen.values())
            if not best:
                raise ConfigError(f"--fold full takes its epoch count from the folds' best epochs, but no "
                                  f"{out}/fold<k>/{inner}result.json exists: train the folds first or set "
                                  "train.full_epochs")
            epochs = max(1, int(round(float(np.median(best)))))
            source = f"median best epoch of folds {list(chosen)} ({best})"
            logger.info("full fit%s: %d epochs, the median best epoch of %d fold(s) %s",
                        f" stage {number}" if len(configs) > 1 else "", epochs, len(best), best)
        # NOTE nothing to validate: every epoch takes the same path (its weights become best.pt)
        overrides = {"train": {"epochs": epochs, "steps": None, "write_oof": False, "patience": None, "valid_every": 1,
                               "freeze_encoder_epochs": min(stage_cfg.train.freeze_encoder_epochs, epochs - 1)}}
        fitted.append(validate_config(deep_merge(config_to_dict(stage_cfg), overrides), source="--fold full"))
        sources.append(source)
    return fitted, sources
