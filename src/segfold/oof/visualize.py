"""PNG overlays of OOF predictions: the image, the truth and the prediction of every class.

`visualize_oof(cfg, count)` ranks the OOF images by their score in `oof/oof_scores.csv` (written by
`scripts/oof.py`) and draws the `count` worst and best to `outputs/<exp>/viz/`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segfold.data.formats import image_path, read_train
from segfold.data.images import read_image, resize_image
from segfold.errors import DataError
from segfold.io import atomic_path
from segfold.oof.gather import SCORES_FILE
from segfold.probs import OOF_NAME, ProbStore, binarize, check_store, truth_masks

TRUTH_COLOR = np.array([0.1, 0.9, 0.2])
PRED_COLOR = np.array([1.0, 0.2, 0.1])


def overlay(image: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """`image` (H, W, 3) float in [0, 1] with `mask` (H, W) painted in `color`."""
    out = image.copy()
    on = mask.astype(bool)
    out[on] = (1 - alpha) * out[on] + alpha * color
    return out


def render_panels(path: str | Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, probs: np.ndarray,
                  classes: Sequence[str], title: str) -> Path:
    """Write one PNG: a row per class with the image, the truth overlay, the prediction overlay and probabilities.

    Args:
        path: the PNG to write (atomically).
        image: uint8 (H, W, 3) or (H, W, 1).
        truth: (C, H, W) binary.
        pred: (C, H, W) binary.
        probs: (C, H, W) float in [0, 1].
        classes: class names (row labels).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = image.astype(np.float32) / 255.0
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
    height, width = rgb.shape[:2]
    cell = 3.2 * min(1.0, width / max(height, 1)) + 0.8
    fig, axes = plt.subplots(len(classes), 4, figsize=(4 * cell, len(classes) * cell * height / width + 0.6),
                             squeeze=False)
    for c, name in enumerate(classes):
        panels = [(rgb, f"{name}: image"),
                  (overlay(rgb, truth[c], TRUTH_COLOR), f"truth ({int(truth[c].sum())} px)"),
                  (overlay(rgb, pred[c], PRED_COLOR), f"prediction ({int(pred[c].sum())} px)"),
                  (probs[c], "probability")]
        for ax, (picture, label) in zip(axes[c], panels, strict=True):
            ax.imshow(picture, vmin=0.0, vmax=1.0, cmap="magma" if picture.ndim == 2 else None)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(path)


def _file_name(prefix: str, rank: int, image_id: str) -> str:
    return f"{prefix}_{rank:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(image_id).stem)}.png"


def visualize_oof(cfg: Any, count: int = 4, out_dir: str | Path | None = None) -> list[Path]:
    """Draw the `count` worst and `count` best OOF images (by `oof_scores.csv`) as PNG overlays.

    Returns:
        The PNG paths, worst first.
    """
    out = cfg.experiment.output_dir
    scores_path = out / OOF_NAME / SCORES_FILE
    if not scores_path.is_file():
        raise DataError(f"{scores_path} not found: run scripts/oof.py --config <your config> first")
    scores = pd.read_csv(scores_path, dtype={"ImageId": str}, keep_default_na=False)
    store = ProbStore.open(out / OOF_NAME, OOF_NAME)
    check_store(store, "oof", allow_stale=True)  # a picture of a stale OOF is still a picture: warn only
    ranked = scores.sort_values("score", kind="stable")
    picks = [("worst", ranked.head(count)), ("best", ranked.tail(count).iloc[::-1])]
    annotations = read_train(cfg.data)
    shape = store.shape[2:]
    in_channels = int(cfg.model.in_channels) if int(cfg.model.in_channels) in (1, 3) else 3
    folder = Path(out_dir) if out_dir is not None else out / "viz"
    written = []
    for prefix, frame in picks:
        for rank, (image_id, score) in enumerate(zip(frame["ImageId"], frame["score"], strict=True), start=1):
            row = store.row_of(image_id)
            probs = store.read(row)
            pred = binarize(store.probs[row][None], cfg.data.mode)[0]
            truth = truth_masks(annotations, [image_id], shape, len(store.classes))[0]
            image = read_image(image_path(cfg.data, image_id, "train"), in_channels)
            image = resize_image(image, tuple(shape)) if image.shape[:2] != tuple(shape) else image
            title = f"{image_id}  score {score:.4f}  ({prefix} {rank} of {len(scores)} OOF images)"
            written.append(render_panels(folder / _file_name(prefix, rank, image_id), image, truth, pred, probs,
                                         store.classes, title))
    return written
