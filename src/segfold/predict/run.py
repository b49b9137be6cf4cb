"""Test inference: the folds' models (and/or the full-data fit), TTA, tiles, written to the `test` store.

For each batch of test images every model (`infer.models`: the folds', the full-data fit's, or both)
predicts with TTA (merged as probabilities), the models' probabilities are averaged (the full model
weighted `infer.full_weight`), resized to the store's resolution (`data.metric_size`, else the
images' own size) and written as uint8 to `outputs/<exp>/test/test.*` (with `test.cls.npy` when the
models have an aux head) through `segfold.probs.StoreWriter`. `split="holdout"` predicts the holdout
images (`data.folds.holdout`) into `outputs/<exp>/holdout/holdout.*` instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from segfold.cores import apply_threads, worker_threads
from segfold.data.dataset import SegmentationDataset
from segfold.data.folds import holdout_ids, load_folds
from segfold.data.formats import read_test_ids
from segfold.data.transforms import build_transforms
from segfold.errors import ConfigError, DataError, TrainingError
from segfold.export import load_exported_folds
from segfold.predict.tiles import needs_tiling, sliding_window
from segfold.predict.tta import Predictor, build_tta, make_predictor
from segfold.probs import (
    AUTO_CHECKPOINT,
    FULL_DIR,
    HOLDOUT_NAME,
    TEST_NAME,
    ProbStore,
    StoreWriter,
    checkpoint_entry,
    checkpoint_name,
    expected_folds,
    full_checkpoint,
    load_checkpoint_model,
    load_fold_models,
    missing_folds_note,
    new_record,
    resolve_device,
)

logger = logging.getLogger(__name__)


def predict_images(predict: Predictor, images: torch.Tensor, infer_cfg: Any
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities of a batch, tile by tile when it is larger than `infer.tile_size`."""
    if needs_tiling(images.shape[-2], images.shape[-1], infer_cfg.tile_size):
        return sliding_window(predict, images, infer_cfg.tile_size, infer_cfg.tile_overlap, infer_cfg.forward_batch)
    return predict(images)


def model_normalisation(models: Sequence[nn.Module]) -> tuple[list[float], list[float], int]:
    """The input mean, std and channels the fold models share (recorded with their weights)."""
    stats = {(tuple(m.pretrained_cfg["mean"]), tuple(m.pretrained_cfg["std"]), int(m.config.get("in_channels", 3)))
             for m in models}
    if len(stats) != 1:
        raise TrainingError("the fold models normalise their input differently (different encoders or weights); "
                            "predict each group of folds with --folds")
    mean, std, channels = stats.pop()
    return list(mean), list(std), channels


def load_models(cfg: Any, folds: Sequence[int] | None, device: torch.device, runtime: str = "torch"
                ) -> tuple[list[Any], list[int], list[float] | None, list[dict[str, Any]]]:
    """The models `infer.models` names: the folds', the full-data fit's, or both (weighted by `infer.full_weight`).

    Args:
        folds: the folds wanted (None: every trained fold).
        runtime: "torch" (checkpoints), or "onnx" / "torchscript" (the folds' exports).

    Returns:
        `(models (the full fit last), the fold numbers used, weights or None for equal, checkpoint entries)`.

    Raises:
        TrainingError: a model that is asked for has no checkpoint.
        ConfigError: the full-data fit with an exported runtime (exports cover the fold checkpoints).
    """
    infer, out = cfg.infer, Path(cfg.experiment.output_dir)
    models: list[Any] = []
    used: list[int] = []
    checkpoints: list[dict[str, Any]] = []
    if infer.models != "folds" and runtime != "torch":
        raise ConfigError(f"infer.models={infer.models} uses the full-data fit, which runs in PyTorch only; "
                          "predict with --runtime torch, or with --models folds")
    if infer.models in ("folds", "both"):
        if runtime == "torch":
            models, used, checkpoints = load_fold_models(out, infer.checkpoint, folds, device)
            for entry in checkpoints:
                _log_checkpoint(f"fold {entry['fold']}", entry, infer.checkpoint)
        else:  # NOTE exported models are not checked against the checkpoints (no record of their files yet)
            models, used = load_exported_folds(cfg, runtime, folds, device)
    if infer.models in ("full", "both"):
        path = full_checkpoint(out, infer.checkpoint)
        if not path.is_file():
            raise TrainingError(f"infer.models={infer.models} needs the full-data fit's {path}: run "
                                "scripts/train.py --config ... --fold full first")
        entry = checkpoint_entry(path, None, None)  # NOTE stamped before it is read
        models.append(load_checkpoint_model(path, device)[0])
        entry.update(epoch=models[-1].checkpoint_epoch, model=FULL_DIR)
        checkpoints.append(entry)
        _log_checkpoint("full-data fit", entry, infer.checkpoint)
    weights = None
    if infer.models == "both":
        weights = [(1 - infer.full_weight) / len(used)] * len(used) + [infer.full_weight]
    return models, list(used), weights, checkpoints


def _log_checkpoint(model: str, entry: dict[str, Any], setting: str) -> None:
    """One line naming the checkpoint file a model predicts with (the one chosen, for infer.checkpoint 'auto')."""
    chosen = f"; infer.checkpoint '{AUTO_CHECKPOINT}': the file it chose" if setting == AUTO_CHECKPOINT else ""
    logger.info("%s: %s (epoch %s%s) %s", model, Path(entry["path"]).name, entry["epoch"], chosen, entry["path"])


def predict_test(cfg: Any, folds: Sequence[int] | None = None, tta: str | None = None,
                 scales: Sequence[float] | None = None, runtime: str | None = None, split: str = TEST_NAME
                 ) -> ProbStore:
    """Predict every test image (or the holdout images) and write the `test` (`holdout`) store.

    The store goes to `outputs/<exp>/test/` or, with `split="holdout"`, `outputs/<exp>/holdout/`
    (the training images of `data.folds.holdout`, which no fold trained on). `infer.models` picks the
    fold models, the full-data fit (`outputs/<exp>/full/`) or both (`infer.full_weight`).

    Args:
        cfg: the experiment config (`infer` section: TTA, tiles, batch sizes, device).
        folds: fold indices to average (default `infer.folds`, else every fold with a checkpoint).
        tta: override `infer.tta`.
        scales: override `infer.scales`.
        runtime: override `infer.runtime` ("torch", or "onnx" / "torchscript": the folds' exports of
            `scripts/export.py`, see `segfold.export`).
        split: `test` or `holdout`.

    Returns:
        The finalized store, opened read-only.
    """
    infer, data = cfg.infer, cfg.data
    device = resolve_device(infer.device, key="infer.device")
    runtime = runtime or infer.runtime
    requested = folds if folds is not None else infer.folds
    models, used, weights, checkpoints = load_models(cfg, requested, device, runtime)
    expected, _ = expected_folds(cfg)
    note = missing_folds_note(used, expected) if infer.models != "full" else None
    if note:
        hint = "" if requested is not None else f" (they have no {checkpoint_name(infer.checkpoint)}: train them first)"
        logger.warning("warning: the %s store averages folds %s only: %s%s", split, used, note, hint)
    tta_name, scale_list = tta or infer.tta, list(scales if scales is not None else infer.scales)
    record = new_record("predict", cfg, checkpoints=checkpoints, folds=used,
                        missing_folds=[k for k in expected if k not in used] if infer.models != "full" else [],
                        requested="all" if requested is None else sorted(int(k) for k in requested),
                        checkpoint=infer.checkpoint, runtime=runtime, tta=tta_name, scales=scale_list,
                        models=infer.models, weights=weights, split=split)
    transforms = build_tta(tta_name, scale_list)
    predict = make_predictor(models, transforms, data.mode, infer.forward_batch, weights)
    mean, std, channels = model_normalisation(models)
    if split == HOLDOUT_NAME:
        image_ids, folder = holdout_ids(load_folds(cfg, create=False)), "train"
        if not image_ids:
            raise DataError("there is no holdout: set data.folds.holdout (e.g. 0.1) before making the folds")
    elif split == TEST_NAME:
        image_ids, folder = read_test_ids(data), "test"
    else:
        raise ValueError(f"split must be '{TEST_NAME}' or '{HOLDOUT_NAME}', got {split!r}")
    dataset = SegmentationDataset(data, image_ids, mean=mean, std=std, folder=folder,
                                  transforms=build_transforms(data, "valid"), in_channels=channels)
    loader = DataLoader(dataset, batch_size=infer.batch_size, shuffle=False, num_workers=infer.num_workers,
                        worker_init_fn=worker_threads)
    apply_threads(infer.num_workers)  # the loader's workers come out of this process's share of the cores
    what = ([f"folds {used}"] if used else []) + ([FULL_DIR] if infer.models != "folds" else [])
    shares = "" if weights is None else " weighted " + ", ".join(f"{w:.3f}" for w in weights)
    logger.info("predicting %d %s images with %s%s, TTA '%s' (%d copies) on %s (%s)", len(image_ids), split,
                " + ".join(what), shares, tta_name, len(transforms), device, runtime)
    autocast = torch.autocast("cuda", dtype=torch.float16) if infer.amp and device.type == "cuda" \
        else contextlib.nullcontext()
    with StoreWriter(cfg.experiment.output_dir / split, split, image_ids, data.classes,
                     data.metric_size, provenance=record) as writer:
        for batch in loader:
            images = batch["image"].to(device)
            with torch.no_grad(), autocast:
                probs, cls_probs = predict_images(predict, images, infer)
            writer.add(probs, cls_probs, sizes=batch["orig_size"].tolist(), ids=batch["image_id"])
    return writer.store
