"""Pseudo-labels: confident test predictions (one experiment's or a blend's) written as training labels.

Kaggle winners (TGS Salt, Severstal) add confidently predicted test images to training. An image is
kept when at least `data.pseudo.confident` of its pixels, over every class, have p < `low` or
p > `high`; its masks are binarised like the submission (the tuned `thresholds.json`, else the
config's `postprocess`), resized to the image's native size and written, with the rule and the
counts, to `outputs/<exp>/pseudo/` (`segfold.data.pseudo`). A training run takes them with
`data.pseudo.path`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from segfold.data import rle
from segfold.data.formats import image_path
from segfold.data.images import image_shapes, resize_mask
from segfold.data.pseudo import write_pseudo
from segfold.errors import ConfigError
from segfold.postprocess import apply_postprocess, postprocess_for
from segfold.probs import open_test
from segfold.probs.convert import SCALE

logger = logging.getLogger(__name__)

PSEUDO_DIR = "pseudo"


def confident_share(probs_u8: np.ndarray, low: float, high: float) -> float:
    """The share of the values of `(C, H, W)` uint8 probabilities with p < `low` or p > `high`."""
    values = probs_u8.astype(np.float32) / SCALE
    return float(((values < low) | (values > high)).mean())


def make_pseudo_labels(cfg: Any, output: str | Path | None = None, allow_stale: bool = False) -> dict[str, Any]:
    """Write the pseudo-labels of the config's test store; returns the counts, the rule and the folder.

    Raises:
        ConfigError: a multiclass experiment (pseudo-labels are written per class).
        DataError: no test store (`scripts/predict.py` first).
        StaleError: the test store or the tuned thresholds no longer match what they were made from
            (a warning with `allow_stale`).
    """
    data, rule = cfg.data, cfg.data.pseudo
    if data.mode == "multiclass":
        raise ConfigError("pseudo-labels are written as per-class masks; data.mode=multiclass is not supported")
    store = open_test(cfg.experiment.output_dir, allow_stale=allow_stale)
    params, source = postprocess_for(cfg, store.classes, allow_stale=allow_stale)
    ids = list(store.image_ids)
    shapes = image_shapes([image_path(data, i, "test") for i in ids], ids, "test images")
    kept, rows, shares = [], [], []
    for row, image_id in enumerate(ids):
        probs = store.read_u8(np.array([row]))[0]
        share = confident_share(probs, rule.low, rule.high)
        shares.append(share)
        if share < rule.confident:
            continue
        cls = store.cls[row] if store.cls is not None else None
        masks = apply_postprocess(probs, params, cls)
        kept.append(image_id)
        height, width = (int(v) for v in shapes[row])
        for name, mask in zip(store.classes, masks, strict=True):
            if mask.any():
                native = resize_mask(mask, (height, width)) if mask.shape != (height, width) else mask
                rows.append((image_id, name, rle.encode(native, order="F")))
    folder = Path(output) if output is not None else Path(cfg.experiment.output_dir) / PSEUDO_DIR
    description = (f"an image is kept when at least {rule.confident:.1%} of its pixels (all classes) have "
                   f"p < {rule.low} or p > {rule.high}; masks from {source}")
    counts = {"test_images": len(ids), "kept": len(kept), "non_empty_masks": len(rows),
              "mean_confident_share": float(np.mean(shares)) if shares else 0.0}
    write_pseudo(folder, data, (data.root_path / data.test_images), rows, kept,
                 {"rule": description, "low": rule.low, "high": rule.high, "confident": rule.confident,
                  "source": store.label, "postprocess": source, **counts})
    logger.info("pseudo-labels: %s", description)
    logger.info("kept %d of %d test images (%d non-empty masks) -> %s", len(kept), len(ids), len(rows), folder)
    return {"folder": str(folder), "rule": description, **counts}
