"""Staged training and the full-data fit: the configs they run with.

`stages:` in a config runs partial overrides one after the other on each fold (`segfold.config.load.
stage_configs` makes each stage's config); `scripts/train.py --fold full` trains on every training
image (the holdout excepted) for `train.full_epochs`, else the median best epoch of the folds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from segfold.config.load import config_to_dict, deep_merge, validate_config
from segfold.errors import ConfigError
from segfold.probs import FULL_DIR

FULL = FULL_DIR  # the "fold" of a full-data fit (every training image, no validation, `outputs/<exp>/full/`)

logger = logging.getLogger(__name__)


def shifted_callback(callback: Callable[[int, dict[str, Any]], None], offset: int, epoch: int,
                     metrics: dict[str, Any]) -> None:
    """`callback` on one epoch axis over the stages: a later stage's epoch e is reported as `offset + e`."""
    callback(epoch + offset, metrics)


def full_fit_configs(configs: list[Any]) -> tuple[list[Any], list[str]]:
    """The stage configs of a full-data fit: `train.full_epochs`, else the median best epoch over the folds.

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
        overrides = {"train": {"epochs": epochs, "write_oof": False, "patience": None, "valid_every": 1,
                               "freeze_encoder_epochs": min(stage_cfg.train.freeze_encoder_epochs, epochs - 1)}}
        fitted.append(validate_config(deep_merge(config_to_dict(stage_cfg), overrides), source="--fold full"))
        sources.append(source)
    return fitted, sources
