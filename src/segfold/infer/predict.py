"""Test inference: the folds' models, TTA, tiles, resizing, written to the `test` probability store.

For each batch of test images every fold's model predicts with TTA (merged as probabilities), the
folds' probabilities are averaged, resized to the store's resolution (`data.metric_size`, else the
images' own size) and written as uint8 to `outputs/<exp>/test/test.*` (with `test.cls.npy` when the
models have an aux head).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segfold.errors import DataError, TrainingError
from segfold.infer.store import ProbStore
from segfold.infer.tiles import needs_tiling, sliding_window
from segfold.infer.tta import Predictor, build_tta, make_predictor

if TYPE_CHECKING:
    from segfold.config import Config
    from segfold.infer.config import InferConfig


def resize_probs(probs: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Probabilities `(N, C, h, w)` resized to `size` (height, width).

    Shrinking by 2x or more on both sides averages areas (a 4x smaller map holds the mean of each
    4x4 block; bilinear would skip pixels and alias); anything else is bilinear (align_corners=False),
    which is what the trainer uses for the OOF at a nearby size.
    """
    height, width = int(size[0]), int(size[1])
    if tuple(probs.shape[-2:]) == (height, width):
        return probs
    if probs.shape[-2] >= 2 * height and probs.shape[-1] >= 2 * width:
        return F.interpolate(probs, size=(height, width), mode="area")
    return F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)


def resolve_device(name: str = "auto") -> torch.device:
    """`"auto"`: CUDA when available, else CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fold_checkpoints(output_dir: str | Path, checkpoint: str = "best.pt",
                     folds: Sequence[int] | None = None) -> tuple[dict[int, Path], list[int]]:
    """The checkpoint of each fold in `output_dir/fold<k>/`, and the requested folds that have none.

    Args:
        output_dir: `outputs/<experiment>`.
        checkpoint: file name inside each fold folder.
        folds: the folds wanted; None: every `fold<k>` folder found.
    """
    output_dir = Path(output_dir)
    if folds is None:
        found = sorted(int(m.group(1)) for p in output_dir.glob("fold*")
                       if (m := re.fullmatch(r"fold(\d+)", p.name)) and p.is_dir())
        folds = found
    paths = {int(k): output_dir / f"fold{k}" / checkpoint for k in folds}
    missing = [k for k, path in paths.items() if not path.is_file()]
    return {k: p for k, p in paths.items() if k not in missing}, missing


def load_fold_models(cfg: Config, folds: Sequence[int] | None, device: torch.device
                     ) -> tuple[list[nn.Module], list[int]]:
    """The trained models of `folds` (all found when None), in eval mode, and the folds that lack one.

    Raises:
        TrainingError: no fold has a checkpoint, or a requested fold has none.
    """
    from segfold.train import load_checkpoint_model

    out = cfg.experiment.output_dir
    paths, missing = fold_checkpoints(out, cfg.infer.checkpoint, folds)
    if not paths:
        raise TrainingError(f"no checkpoint '{cfg.infer.checkpoint}' in {out}/fold<k>/: train a fold first "
                            "(scripts/train.py --config ...)")
    if folds is not None and missing:
        raise TrainingError(f"fold(s) {missing} have no {cfg.infer.checkpoint} in {out}; train them or drop them "
                            f"from --folds (found: {sorted(paths)})")
    models = [load_checkpoint_model(path, device)[0] for path in paths.values()]
    return models, sorted(paths)


def predict_images(predict: Predictor, images: torch.Tensor, infer_cfg: InferConfig
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities of a batch, tile by tile when it is larger than `infer.tile_size`."""
    if needs_tiling(images.shape[-2], images.shape[-1], infer_cfg.tile_size):
        return sliding_window(predict, images, infer_cfg.tile_size, infer_cfg.tile_overlap, infer_cfg.forward_batch)
    return predict(images)


def _normalisation(models: Sequence[nn.Module]) -> tuple[list[float], list[float], int]:
    stats = {(tuple(m.pretrained_cfg["mean"]), tuple(m.pretrained_cfg["std"]), int(m.config.get("in_channels", 3)))
             for m in models}
    if len(stats) != 1:
        raise TrainingError("the fold models normalise their input differently (different encoders or weights); "
                            "predict each group of folds with --folds")
    mean, std, channels = stats.pop()
    return list(mean), list(std), channels


def predict_test(cfg: Config, folds: Sequence[int] | None = None, tta: str | None = None,
                 scales: Sequence[float] | None = None, log=print) -> ProbStore:
    """Predict every test image and write the `test` store in `outputs/<exp>/test/`.

    Args:
        cfg: the experiment config (`infer` section: TTA, tiles, batch sizes, device).
        folds: fold indices to average (default `infer.folds`, else every fold with a checkpoint).
        tta: override `infer.tta`.
        scales: override `infer.scales`.
        log: where progress lines go.

    Returns:
        The finalized store, opened read-only.
    """
    from torch.utils.data import DataLoader

    from segfold.data.dataset import SegmentationDataset
    from segfold.data.formats import read_test_ids
    from segfold.data.transforms import build_transforms

    infer, data = cfg.infer, cfg.data
    device = resolve_device(infer.device)
    models, used = load_fold_models(cfg, folds if folds is not None else infer.folds, device)
    transforms = build_tta(tta or infer.tta, scales if scales is not None else infer.scales)
    predict = make_predictor(models, transforms, data.mode, infer.forward_batch)
    mean, std, channels = _normalisation(models)
    image_ids = read_test_ids(data)
    dataset = SegmentationDataset(data, image_ids, mean=mean, std=std, folder="test",
                                  transforms=build_transforms(data, "valid"), in_channels=channels)
    loader = DataLoader(dataset, batch_size=infer.batch_size, shuffle=False, num_workers=infer.num_workers)
    log(f"predicting {len(image_ids)} test images with folds {used}, TTA '{tta or infer.tta}' "
        f"({len(transforms)} copies) on {device}")
    autocast = torch.autocast("cuda", dtype=torch.float16) if infer.amp and device.type == "cuda" \
        else contextlib.nullcontext()
    store: ProbStore | None = None
    folder = cfg.experiment.output_dir / "test"
    row = 0
    try:
        for batch in loader:
            images = batch["image"].to(device)
            with torch.no_grad(), autocast:
                probs, cls_probs = predict_images(predict, images, infer)
            sizes = batch["orig_size"].tolist()
            if store is None:
                height, width = data.metric_size or sizes[0]
                store = ProbStore.create(folder, "test", image_ids, data.classes, height, width)
                store_size = (height, width)
            if data.metric_size is None and any(tuple(s) != store_size for s in sizes):
                bad = next(i for i, s in enumerate(sizes) if tuple(s) != store_size)
                raise DataError(f"test image {batch['image_id'][bad]} is {sizes[bad][0]}x{sizes[bad][1]} but the "
                                f"first one is {store_size[0]}x{store_size[1]}; set data.metric_size to the "
                                "submission resolution")
            probs = resize_probs(probs.float(), store_size).cpu().numpy()
            rows = np.arange(row, row + len(probs))
            store.write(rows, probs)
            if cls_probs is not None:
                store.write_cls(rows, cls_probs.float().cpu().numpy())
            row += len(probs)
    except BaseException:
        if store is not None:
            store.abort()
        raise
    if store is None:
        raise DataError("no test images to predict")
    return store.finalize()
