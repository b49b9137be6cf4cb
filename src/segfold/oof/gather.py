"""Out-of-fold probabilities: the folds' validation stores gathered into one, scored against the labels.

`gather_oof(cfg)` reads `outputs/<exp>/fold<k>/oof.*` for every fold that has one, writes
`outputs/<exp>/oof/oof.*` (rows in the order of the training images), scores it with `data.metric`
at the default threshold (0.5; argmax for multiclass) and writes the per-image scores to
`outputs/<exp>/oof/oof_scores.csv` (what `scripts/visualize.py` ranks images by).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segfold.data.formats import read_train
from segfold.errors import DataError, TrainingError
from segfold.io import atomic_path
from segfold.probs import (
    DEFAULT_THRESHOLD,
    OOF_NAME,
    ProbStore,
    StoreView,
    binarize,
    check_store,
    expected_folds,
    fold_dirs,
    missing_folds_note,
    new_record,
    score_masks,
    truth_masks,
)

logger = logging.getLogger(__name__)

SCORES_FILE = "oof_scores.csv"


def gather_oof(cfg: Any, chunk: int = 32, allow_stale: bool = False) -> dict[str, Any]:
    """Gather, store and score the out-of-fold probabilities of every fold found.

    Args:
        cfg: the experiment config.
        chunk: images scored at a time.
        allow_stale: warn instead of failing when a fold's OOF no longer matches its checkpoint.

    Returns:
        `{"score", "class_dice", "table", "folds", "missing_folds", "images", "path"}`.

    Raises:
        TrainingError: no fold has an OOF store yet.
        DataError: the fold stores disagree (classes, size) or share images.
    """
    out = Path(cfg.experiment.output_dir)
    folds, order = expected_folds(cfg)
    dirs = fold_dirs(out, with_store=OOF_NAME)
    found = list(dirs)
    missing = [k for k in folds if k not in dirs]
    if not found:
        raise TrainingError(f"no fold of {out} has OOF probabilities (fold<k>/oof.json): train a fold first")
    stores = [ProbStore.open(path, OOF_NAME) for path in dirs.values()]
    for fold_store in stores:
        check_store(fold_store, "train", allow_stale)
    if missing:
        logger.warning("warning: gathering the OOF of folds %s: %s", found, missing_folds_note(found, folds))
    view = StoreView(stores, ", ".join(map(str, dirs.values())))
    if list(view.classes) != list(cfg.data.classes):
        raise DataError(f"the OOF stores have classes {view.classes} but data.classes is {cfg.data.classes}")
    row_of = view.row_index()
    image_ids = [i for i in order if i in row_of] if order is not None else []
    listed = set(image_ids)
    image_ids += [i for i in view.image_ids if i not in listed]
    fold_of = {image_id: k for k, path in dirs.items() for image_id in ProbStore.open(path, OOF_NAME).image_ids}
    _, _, height, width = view.shape
    record = new_record("oof", cfg, inputs=view.input_entries(), folds=found, missing_folds=missing)
    store = ProbStore.create(out / OOF_NAME, OOF_NAME, image_ids, view.classes, height, width, provenance=record)
    rows = np.array([row_of[i] for i in image_ids], dtype=np.int64)
    for start in range(0, len(rows), chunk):  # copied as stored: no second rounding
        store.write_uint8(np.arange(start, min(start + chunk, len(rows))), view.read_u8(rows[start:start + chunk]))
    if view.cls is not None:
        store.write_cls(np.arange(len(rows)), view.cls[rows])
    oof = store.finalize()
    logger.info("OOF: %d images from folds %s%s", len(image_ids), found,
                f"; missing folds {missing}" if missing else "")
    result = score_store(cfg, oof, chunk)
    frame = pd.DataFrame({"ImageId": image_ids, "fold": [fold_of[i] for i in image_ids],
                          "score": result.pop("image_scores")})
    for c, name in enumerate(oof.classes):
        frame[f"dice_{name}"] = result["pair_dice"][:, c]
    with atomic_path(out / OOF_NAME / SCORES_FILE) as tmp:
        frame.to_csv(tmp, index=False)
    result.pop("pair_dice")
    result.update(folds=found, missing_folds=missing, images=len(image_ids), path=str(out / OOF_NAME))
    return result


def score_store(cfg: Any, store: ProbStore, chunk: int = 32, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Score a probability store of training images against their labels (`segfold.probs.score_masks`)."""
    annotations = read_train(cfg.data)
    known = set(annotations.image_ids)
    unknown = [i for i in store.image_ids if i not in known]
    if unknown:
        raise DataError(f"{len(unknown)} image(s) of the store {Path(store.folder) / store.name} have no training "
                        f"label, e.g. {unknown[0]!r}; was it written for another data.root?")
    shape, classes = store.shape[2:], store.classes

    def predicted(ids: list[str]) -> np.ndarray:
        rows = np.array([store.row_of(i) for i in ids], dtype=np.int64)
        return binarize(np.asarray(store.probs[rows]), cfg.data.mode, threshold)

    def truth(ids: list[str]) -> np.ndarray:
        return truth_masks(annotations, ids, shape, len(classes))

    return score_masks(store.image_ids, predicted, truth, classes, cfg.data, chunk)
