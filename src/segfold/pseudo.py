"""Pseudo-labels: confident test predictions (one experiment's or a blend's) written as training labels.

Kaggle winners (TGS Salt, Severstal) add confidently predicted test images to training. An image is
kept when at least `data.pseudo.confident` of its pixels, over every class, have p < `low` or
p > `high`. Its masks are binarised like the submission (the tuned `thresholds.json`, else the
config's `postprocess`; the argmax class of each pixel in the multiclass mode, and one class per
pixel, the most probable of those switched on, where `png_index` maps can hold no more), resized to
the image's native size and written in the competition's own layout (`data.format`), with the rule
and the counts, to `outputs/<exp>/pseudo/` (`segfold.data.pseudo`). A training run takes them with
`data.pseudo.path`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from segfold.data.formats import image_path
from segfold.data.images import image_shapes, resize_mask
from segfold.data.pseudo import PseudoWriter
from segfold.errors import DataError
from segfold.postprocess import apply_postprocess, postprocess_for
from segfold.probs import open_test
from segfold.probs.convert import SCALE, binarize

logger = logging.getLogger(__name__)

PSEUDO_DIR = "pseudo"


def confident_share(probs_u8: np.ndarray, low: float, high: float) -> float:
    """The share of the values of `(C, H, W)` uint8 probabilities with p < `low` or p > `high`."""
    values = probs_u8.astype(np.float32) / SCALE
    return float(((values < low) | (values > high)).mean())


def pseudo_masks(probs_u8: np.ndarray, data_cfg: Any, params: Any, cls: np.ndarray | None) -> np.ndarray:
    """uint8 `(C, H, W)` 0/1 masks of one image's `(C, H, W)` uint8 probabilities, as the pseudo folder holds them."""
    if data_cfg.mode == "multiclass":
        return binarize(probs_u8[None], "multiclass")[0]
    masks = apply_postprocess(probs_u8, params, cls)
    if data_cfg.format == "png_index" and len(masks) > 1:
        # an index map holds one class per pixel: the most probable of the classes switched on
        best = np.where(masks > 0, probs_u8.astype(np.int16), -1).argmax(axis=0)
        masks = masks * (np.arange(len(masks))[:, None, None] == best[None])
    return masks.astype(np.uint8)


def make_pseudo_labels(cfg: Any, output: str | Path | None = None, allow_stale: bool = False) -> dict[str, Any]:
    """Write the pseudo-labels of the config's test store; returns the counts, the rule and the folder.

    Raises:
        DataError: no test store (`scripts/predict.py` first), or one of other classes.
        StaleError: the test store or the tuned thresholds no longer match what they were made from
            (a warning with `allow_stale`).
    """
    data, rule = cfg.data, cfg.data.pseudo
    store = open_test(cfg.experiment.output_dir, allow_stale=allow_stale)
    if list(store.classes) != list(data.classes):
        raise DataError(f"{cfg.experiment.output_dir / 'test'}: the test store has classes {store.classes} but "
                        f"data.classes is {data.classes}; rerun scripts/predict.py")
    if data.mode == "multiclass":
        params, source = None, "the argmax class of each pixel"
    else:
        params, source = postprocess_for(cfg, store.classes, allow_stale=allow_stale)
    ids = list(store.image_ids)
    shapes = image_shapes([image_path(data, i, "test") for i in ids], ids, "test images")
    folder = Path(output) if output is not None else Path(cfg.experiment.output_dir) / PSEUDO_DIR
    non_empty, shares = 0, []
    with PseudoWriter(folder, data) as writer:
        for row, image_id in enumerate(ids):
            probs = store.read_u8(np.array([row]))[0]
            share = confident_share(probs, rule.low, rule.high)
            shares.append(share)
            if share < rule.confident:
                continue
            masks = pseudo_masks(probs, data, params, store.cls[row] if store.cls is not None else None)
            native = (int(shapes[row][0]), int(shapes[row][1]))
            masks = np.stack([resize_mask(mask, native) for mask in masks])
            writer.add(image_id, masks)
            non_empty += int(masks.reshape(len(masks), -1).any(axis=1).sum())
        description = (f"an image is kept when at least {rule.confident:.1%} of its pixels (all classes) have "
                       f"p < {rule.low} or p > {rule.high}; masks from {source}")
        counts = {"test_images": len(ids), "kept": len(writer.image_ids), "non_empty_masks": non_empty,
                  "mean_confident_share": float(np.mean(shares)) if shares else 0.0}
        writer.commit({"rule": description, "low": rule.low, "high": rule.high, "confident": rule.confident,
                       "source": store.label, "postprocess": source, **counts})
    logger.info("pseudo-labels: %s", description)
    logger.info("kept %d of %d test images (%d non-empty masks, %s layout) -> %s", counts["kept"], len(ids),
                non_empty, data.format, folder)
    return {"folder": str(folder), "rule": description, "format": data.format, **counts}
