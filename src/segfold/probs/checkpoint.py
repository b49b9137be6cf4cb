"""Reading checkpoints and rebuilding the models they hold: one fold's, or every fold's of an experiment.

Checkpoints load with `torch.load(weights_only=True)`: tensors, plain containers, numbers, strings.
A checkpoint holds the resolved config as a plain dict, so a model is rebuilt from the file alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segfold.config.load import validate_config
from segfold.encoders import encoder_follows_weights, get_preprocessing_params
from segfold.errors import TrainingError
from segfold.models import build_model
from segfold.probs.outputs import AUTO_CHECKPOINT, checkpoint_name, fold_checkpoints
from segfold.probs.provenance import file_stamp


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

    The encoder is built without the configured ``model.encoder_weights`` (the checkpoint's weights
    replace them: no model hub, pip package or weights file is needed), see `checkpoint_model`.

    Args:
        path: a `best.pt` / `last.pt` / top-k file written by `segfold.train.train`.
        device: where the model goes.

    Returns:
        `(model, cfg)`: the model with the checkpoint's weights and the validated `segfold.config.Config`;
        ``model.pretrained_cfg`` is the input normalisation recorded in the checkpoint (the one it was
        trained with), for checkpoints that record one.
    """
    state = load_checkpoint(path)
    cfg = validate_config(state["config"], source=f"{path} (embedded config)")
    model = checkpoint_model(state, cfg, path)
    model.checkpoint_epoch = state.get("epoch")
    return model.to(device).eval(), cfg


def checkpoint_model(state: dict[str, Any], cfg: Any, path: str | os.PathLike) -> nn.Module:
    """The network of `cfg.model` holding the weights of the checkpoint `state` (read from `path`).

    Built with random encoder weights, as the timm model that the configured weights built when it
    was trained (``encoder_timm_name`` in the checkpoint), with the input normalisation the checkpoint
    recorded. NOTE an older checkpoint that records no timm model, of an EfficientNet with pretrained
    weights, is built with those weights as before: they decided between timm's twins (``tf_`` padding
    or not), which share every tensor name and shape, so the file alone cannot tell.

    Raises:
        TrainingError: the weights do not fit the network.
    """
    built = state.get("encoder_timm_name")
    if built is None and encoder_follows_weights(cfg.model.encoder_name, cfg.model.encoder_weights):
        model = build_model(cfg.model, len(cfg.data.classes))
    else:
        model = build_model(cfg.model, len(cfg.data.classes), pretrained=False, encoder_timm_name=built)
        if not state.get("preprocessing"):  # an older checkpoint: the normalisation of the configured weights
            model.preprocessing = get_preprocessing_params(cfg.model.encoder_name, cfg.model.encoder_weights)
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
    return model


def required_fold_checkpoints(output_dir: str | os.PathLike, checkpoint: str,
                              folds: Sequence[int] | None) -> dict[int, Path]:
    """The checkpoint file of each of `folds` (every fold found when None).

    Raises:
        TrainingError: no fold has a checkpoint, or a requested fold has none.
    """
    paths, missing = fold_checkpoints(output_dir, checkpoint, folds)
    if folds is not None and missing:
        raise TrainingError(f"fold(s) {missing} have no {checkpoint_name(checkpoint)} in {output_dir}; train them or "
                            f"drop them from --folds (found: {sorted(paths)})")
    if not paths:
        what = "best.pt (or the averaged.pt a fold chose: infer.checkpoint 'auto')" if checkpoint == AUTO_CHECKPOINT \
            else f"'{checkpoint}'"
        raise TrainingError(f"no checkpoint {what} in {output_dir}/fold<k>/: train a fold first "
                            "(scripts/train.py --config ...)")
    return paths


def load_fold_models(output_dir: str | os.PathLike, checkpoint: str, folds: Sequence[int] | None,
                     device: torch.device) -> tuple[list[nn.Module], list[int], list[dict[str, Any]]]:
    """The trained models of `folds` (every fold found when None), in eval mode, the folds used, and the
    checkpoints' provenance entries (path, epoch, size and modification time as read).

    Raises:
        TrainingError: no fold has a checkpoint, or a requested fold has none.
    """
    paths = required_fold_checkpoints(output_dir, checkpoint, folds)
    models, entries = [], []
    for k, path in sorted(paths.items()):
        stamp = file_stamp(path)  # NOTE before reading: a checkpoint rewritten meanwhile shows up as changed
        models.append(load_checkpoint_model(path, device)[0])
        entries.append({"fold": k, "path": str(Path(path).resolve()), "epoch": models[-1].checkpoint_epoch, **stamp})
    return models, sorted(paths), entries
