"""Test inference: the folds' models, TTA, tiles, written to the `test` probability store.

For each batch of test images every fold's model predicts with TTA (merged as probabilities), the
folds' probabilities are averaged, resized to the store's resolution (`data.metric_size`, else the
images' own size) and written as uint8 to `outputs/<exp>/test/test.*` (with `test.cls.npy` when the
models have an aux head) through `segfold.probs.StoreWriter`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from segfold.cores import apply_threads, worker_threads
from segfold.data.dataset import SegmentationDataset
from segfold.data.formats import read_test_ids
from segfold.data.transforms import build_transforms
from segfold.errors import TrainingError
from segfold.export import load_exported_folds
from segfold.predict.tiles import needs_tiling, sliding_window
from segfold.predict.tta import Predictor, build_tta, make_predictor
from segfold.probs import (
    TEST_NAME,
    ProbStore,
    StoreWriter,
    expected_folds,
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


def predict_test(cfg: Any, folds: Sequence[int] | None = None, tta: str | None = None,
                 scales: Sequence[float] | None = None, runtime: str | None = None) -> ProbStore:
    """Predict every test image and write the `test` store in `outputs/<exp>/test/`.

    Args:
        cfg: the experiment config (`infer` section: TTA, tiles, batch sizes, device).
        folds: fold indices to average (default `infer.folds`, else every fold with a checkpoint).
        tta: override `infer.tta`.
        scales: override `infer.scales`.
        runtime: override `infer.runtime` ("torch", or "onnx" / "torchscript": the folds' exports of
            `scripts/export.py`, see `segfold.export`).

    Returns:
        The finalized store, opened read-only.
    """
    infer, data = cfg.infer, cfg.data
    device = resolve_device(infer.device, key="infer.device")
    runtime = runtime or infer.runtime
    requested = folds if folds is not None else infer.folds
    if runtime == "torch":
        models, used, checkpoints = load_fold_models(cfg.experiment.output_dir, infer.checkpoint, requested, device)
    else:  # NOTE exported models are not checked against the checkpoints (no record of their files yet)
        models, used = load_exported_folds(cfg, runtime, requested, device)
        checkpoints = []
    expected, _ = expected_folds(cfg)
    note = missing_folds_note(used, expected)
    if note:
        logger.warning("warning: the test store averages folds %s only: %s%s", used, note,
                       "" if requested is not None else f" (they have no {infer.checkpoint}: train them first)")
    tta_name, scale_list = tta or infer.tta, list(scales if scales is not None else infer.scales)
    record = new_record("predict", cfg, checkpoints=checkpoints, folds=used,
                        missing_folds=[k for k in expected if k not in used],
                        requested="all" if requested is None else sorted(int(k) for k in requested),
                        checkpoint=infer.checkpoint, runtime=runtime, tta=tta_name, scales=scale_list)
    transforms = build_tta(tta_name, scale_list)
    predict = make_predictor(models, transforms, data.mode, infer.forward_batch)
    mean, std, channels = model_normalisation(models)
    image_ids = read_test_ids(data)
    dataset = SegmentationDataset(data, image_ids, mean=mean, std=std, folder="test",
                                  transforms=build_transforms(data, "valid"), in_channels=channels)
    loader = DataLoader(dataset, batch_size=infer.batch_size, shuffle=False, num_workers=infer.num_workers,
                        worker_init_fn=worker_threads)
    apply_threads(infer.num_workers)  # the loader's workers come out of this process's share of the cores
    logger.info("predicting %d test images with folds %s, TTA '%s' (%d copies) on %s (%s)",
                len(image_ids), used, tta or infer.tta, len(transforms), device, runtime)
    autocast = torch.autocast("cuda", dtype=torch.float16) if infer.amp and device.type == "cuda" \
        else contextlib.nullcontext()
    with StoreWriter(cfg.experiment.output_dir / TEST_NAME, TEST_NAME, image_ids, data.classes,
                     data.metric_size, provenance=record) as writer:
        for batch in loader:
            images = batch["image"].to(device)
            with torch.no_grad(), autocast:
                probs, cls_probs = predict_images(predict, images, infer)
            writer.add(probs, cls_probs, sizes=batch["orig_size"].tolist(), ids=batch["image_id"])
    return writer.store
