"""Out-of-fold probabilities: the folds' validation stores gathered into one, scored against the labels.

`gather_oof(cfg)` reads `outputs/<exp>/fold<k>/oof.*` for every fold that has one, writes
`outputs/<exp>/oof/oof.*` (rows in the order of the training images), scores it with `data.metric`
at the default threshold (0.5; argmax for multiclass) and writes the per-image scores to
`outputs/<exp>/oof/oof_scores.csv` (what `scripts/visualize.py` ranks images by).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from segfold.errors import DataError, TrainingError
from segfold.infer.scoring import (
    DEFAULT_THRESHOLD,
    binarize,
    class_table,
    competition_metric,
    pair_dice,
    truth_masks,
)
from segfold.infer.store import ProbStore, store_exists
from segfold.io import atomic_path

if TYPE_CHECKING:
    from segfold.config import Config

OOF_NAME = "oof"
SCORES_FILE = "oof_scores.csv"


def expected_folds(cfg: Config) -> tuple[list[int], list[str] | None]:
    """The fold numbers of the experiment and the training image order (None when there is no folds file)."""
    from segfold.data.folds import folds_path, load_folds

    if not folds_path(cfg).is_file():  # NOTE never make new folds here: they must be the ones trained on
        return list(range(cfg.data.folds.n_folds)), None
    folds = load_folds(cfg, create=False)
    return sorted(int(k) for k in folds["fold"].unique()), folds["ImageId"].astype(str).tolist()


def gather_oof(cfg: Config, chunk: int = 32, log=print) -> dict[str, Any]:
    """Gather, store and score the out-of-fold probabilities of every fold found.

    Args:
        cfg: the experiment config.
        chunk: images copied and scored at a time.
        log: where progress lines go.

    Returns:
        `{"score", "class_dice", "table", "folds", "missing_folds", "images", "path"}`.

    Raises:
        TrainingError: no fold has an OOF store yet.
        DataError: the fold stores disagree (classes, size) or share images.
    """
    out = cfg.experiment.output_dir
    folds, order = expected_folds(cfg)
    found = sorted({k for k in folds if store_exists(out / f"fold{k}", OOF_NAME)}
                   | {int(p.name[4:]) for p in out.glob("fold*") if p.name[4:].isdigit()
                      and store_exists(p, OOF_NAME)})
    missing = [k for k in folds if k not in found]
    if not found:
        raise TrainingError(f"no fold of {out} has OOF probabilities (fold<k>/oof.json): train a fold first")
    stores = {k: ProbStore.open(out / f"fold{k}", OOF_NAME) for k in found}
    first = stores[found[0]]
    for k, store in stores.items():
        if store.shape[1:] != first.shape[1:] or store.classes != first.classes:
            raise DataError(f"{out}/fold{k}/oof: classes {store.classes} at {store.shape[2]}x{store.shape[3]} differ "
                            f"from fold {found[0]}'s {first.classes} at {first.shape[2]}x{first.shape[3]}; retrain it")
    if list(first.classes) != list(cfg.data.classes):
        raise DataError(f"the OOF stores have classes {first.classes} but data.classes is {cfg.data.classes}")
    source: dict[str, tuple[int, int]] = {}
    for k, store in stores.items():
        for row, image_id in enumerate(store.image_ids):
            if image_id in source:
                raise DataError(f"image {image_id!r} is in the OOF of fold {source[image_id][0]} and of fold {k}; "
                                "the folds must not share validation images (rebuild folds.csv and retrain)")
            source[image_id] = (k, row)
    image_ids = [i for i in order if i in source] if order is not None else []
    image_ids += [i for i in source if order is None or i not in set(image_ids)]
    height, width = first.shape[2:]
    store = ProbStore.create(out / OOF_NAME, OOF_NAME, image_ids, first.classes, height, width)
    with_cls = all(s.cls is not None for s in stores.values())
    for index, image_id in enumerate(image_ids):
        k, row = source[image_id]
        store.write_uint8(index, stores[k].probs[row])  # copied as stored: no second rounding
        if with_cls:
            store.write_cls(index, stores[k].cls[row][None])
    oof = store.finalize()
    log(f"OOF: {len(image_ids)} images from folds {found}" + (f"; missing folds {missing}" if missing else ""))
    result = score_store(cfg, oof, chunk)
    frame = pd.DataFrame({"ImageId": image_ids, "fold": [source[i][0] for i in image_ids],
                          "score": result.pop("image_scores")})
    for c, name in enumerate(oof.classes):
        frame[f"dice_{name}"] = result["pair_dice"][:, c]
    with atomic_path(out / OOF_NAME / SCORES_FILE) as tmp:
        frame.to_csv(tmp, index=False)
    result.pop("pair_dice")
    result.update(folds=found, missing_folds=missing, images=len(image_ids), path=str(out / OOF_NAME))
    return result


def score_store(cfg: Config, store: ProbStore, chunk: int = 32,
                threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Score a probability store of training images against their labels.

    Returns:
        `score` (data.metric), `class_dice` per class, `table` (text), `image_scores` `(N,)` (the
        metric's items of each image, averaged) and `pair_dice` `(N, C)`.
    """
    from segfold.data.formats import read_train

    annotations = read_train(cfg.data)
    known = set(annotations.image_ids)
    unknown = [i for i in store.image_ids if i not in known]
    if unknown:
        raise DataError(f"{len(unknown)} image(s) of the store {Path(store.folder) / store.name} have no training "
                        f"label, e.g. {unknown[0]!r}; was it written for another data.root?")
    metric = competition_metric(cfg.data)
    shape = store.shape[2:]
    items, image_scores, dice, pred_pos, truth_pos = [], [], [], [], []
    for start in range(0, len(store), chunk):
        rows = np.arange(start, min(start + chunk, len(store)))
        pred = binarize(np.asarray(store.probs[rows]), cfg.data.mode, threshold)
        truth = truth_masks(annotations, [store.image_ids[r] for r in rows], shape, len(store.classes))
        values = np.asarray(metric(pred, truth), dtype=np.float64).reshape(len(rows), -1)
        items.append(values.ravel())
        image_scores.append(values.mean(axis=1))
        dice.append(pair_dice(pred, truth, cfg.data.empty_score))
        pred_pos.append(pred.any(axis=(2, 3)))
        truth_pos.append(truth.any(axis=(2, 3)))
    dice_all = np.concatenate(dice)
    return {
        "score": float(np.concatenate(items).mean()),
        "class_dice": {name: float(dice_all[:, c].mean()) for c, name in enumerate(store.classes)},
        "table": class_table(store.classes, dice_all, np.concatenate(pred_pos), np.concatenate(truth_pos)),
        "image_scores": np.concatenate(image_scores),
        "pair_dice": dice_all,
    }
