"""Export an experiment's fold models (``scripts/export.py``) and load the exports back for prediction.

Each fold's checkpoint ``outputs/<exp>/fold<k>/<infer.checkpoint>`` is exported next to itself
(``best.pt`` -> ``best.onnx`` / ``best.torchscript.pt``) with the checkpoint's SHA-256 in the export's
metadata; ``load_exported_folds`` refuses an export whose checkpoint has changed since.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from segfold.errors import ConfigError, WeightsError
from segfold.export.exporter import DEFAULT_TOLERANCE, export_model
from segfold.export.runtime import ExportedModel, ExportMeta, exported_path, load_exported
from segfold.io import sha256_file
from segfold.probs import load_checkpoint_model, required_fold_checkpoints

if TYPE_CHECKING:
    from segfold.config import Config

logger = logging.getLogger(__name__)


@dataclass
class FoldExport:
    """One fold's export: where it went and what it holds."""

    fold: int
    path: Path
    meta: ExportMeta


def export_size(cfg: Config) -> tuple[int, int]:
    """The input size the models see at inference: ``data.image_size`` (else ``data.image_shape``), capped
    by ``infer.tile_size`` when images are tiled.

    Raises:
        ConfigError: neither size is in the config.
    """
    size = cfg.data.image_size or cfg.data.image_shape
    if size is None:
        raise ConfigError("the export size is unknown: set data.image_size (or data.image_shape) in the config, "
                          "or pass --size HEIGHT WIDTH")
    height, width = int(size[0]), int(size[1])
    if cfg.infer.tile_size is not None:
        height, width = min(height, cfg.infer.tile_size[0]), min(width, cfg.infer.tile_size[1])
    return height, width


def fold_checkpoint_paths(cfg: Config, folds: Sequence[int] | None) -> dict[int, Path]:
    """The checkpoint of each wanted fold (every trained fold when None); a missing one is a TrainingError."""
    return required_fold_checkpoints(cfg.experiment.output_dir, cfg.infer.checkpoint, folds)


def export_folds(cfg: Config, fmt: str, folds: Sequence[int] | None = None, size: Sequence[int] | None = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> list[FoldExport]:
    """Export the checkpoints of ``folds`` (default ``infer.folds``, else every trained fold) in ``fmt``.

    Args:
        cfg: the experiment config.
        fmt: "onnx" or "torchscript".
        folds: fold numbers; None for ``infer.folds`` or every fold with a checkpoint.
        size: ``(height, width)`` of the example input (default ``export_size(cfg)``).
        tolerance: parity tolerance (see ``export_model``).
    """
    size = tuple(size) if size is not None else export_size(cfg)
    results = []
    for fold, checkpoint in fold_checkpoint_paths(cfg, folds if folds is not None else cfg.infer.folds).items():
        model, _ = load_checkpoint_model(checkpoint)
        path = exported_path(checkpoint, fmt)
        meta = export_model(model, path, fmt, size, tolerance=tolerance, source=str(checkpoint),
                            source_sha256=sha256_file(checkpoint))
        logger.info("fold %d: %s", fold, path)
        results.append(FoldExport(fold, path, meta))
    return results


def load_exported_folds(cfg: Config, fmt: str, folds: Sequence[int] | None, device: torch.device
                        ) -> tuple[list[ExportedModel], list[int]]:
    """The exported models of ``folds`` (every trained fold when None) for ``predict --runtime``, and the folds.

    Raises:
        WeightsError: a fold has no export, or its checkpoint changed after the export.
    """
    paths = fold_checkpoint_paths(cfg, folds)
    models = []
    for fold, checkpoint in paths.items():
        path = exported_path(checkpoint, fmt)
        if not path.is_file():
            raise WeightsError(f"fold {fold}: no {path.name} next to {checkpoint}; export it first: "
                               f"python scripts/export.py --config <config> --format {fmt} --folds {fold}")
        model = load_exported(path, device)
        if model.meta.source_sha256 and model.meta.source_sha256 != sha256_file(checkpoint):
            raise WeightsError(f"{path} was exported from an earlier {checkpoint.name} (the checkpoint changed since); "
                               f"re-export it: python scripts/export.py --config <config> --format {fmt} "
                               f"--folds {fold}")
        logger.info("fold %d: %s (exported from %s) %s", fold, path.name, checkpoint.name, path)
        models.append(model)
    return models, sorted(paths)
