"""Out-of-fold probabilities: the folds' validation stores gathered into one, scored against the labels.

`gather_oof(cfg)` reads `outputs/<exp>/fold<k>/oof.*` for every fold that has one, writes
`outputs/<exp>/oof/oof.*` (rows in the order of the training images), scores it with `data.metric`
at the default threshold (0.5; argmax for multiclass) and writes the per-image scores to
`outputs/<exp>/oof/oof_scores.csv` (what `scripts/visualize.py` ranks images by).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from segfold.cores import apply_threads, worker_threads
from segfold.data.dataset import SegmentationDataset
from segfold.data.folds import load_folds
from segfold.data.formats import read_train
from segfold.data.transforms import build_transforms
from segfold.errors import DataError, TrainingError
from segfold.io import atomic_path
from segfold.postprocess import apply_postprocess_batch, postprocess_for
from segfold.predict import build_tta, make_predictor, model_normalisation, predict_images
from segfold.probs import (
    AUTO_CHECKPOINT,
    DEFAULT_THRESHOLD,
    OOF_NAME,
    ProbStore,
    StoreView,
    binarize,
    check_store,
    expected_folds,
    fold_dirs,
    load_fold_models,
    missing_folds_note,
    new_record,
    open_oof,
    resize_probs,
    resolve_device,
    score_masks,
    selected_checkpoint,
    truth_masks,
    tta_label,
)

logger = logging.getLogger(__name__)

SCORES_FILE = "oof_scores.csv"


def gather_oof(cfg: Any, chunk: int = 32, allow_stale: bool = False, tta: str | None = None,
               scales: Sequence[float] | None = None) -> dict[str, Any]:
    """Gather, store and score the out-of-fold probabilities of every fold found.

    Args:
        cfg: the experiment config.
        chunk: images scored at a time.
        allow_stale: warn instead of failing when a fold's OOF no longer matches its checkpoint.
        tta: None: `infer.tta` when `infer.oof_tta` is true, else the trainer's stores ("none"). A TTA
            name other than "none", or multi-scale factors, re-predict each fold's validation images with
            that fold's `infer.checkpoint` and this TTA, as `scripts/predict.py` predicts the test images
            (the same predictor). So does "none" when `infer.checkpoint` is not the file the trainer's
            store came from (e.g. `last.pt`, or `averaged.pt`): the OOF always comes from the checkpoint
            the test gets.
        scales: multi-scale factors (1.0 is always added), as `scripts/predict.py --scales`; default
            `infer.scales` when a TTA is given or `infer.oof_tta` is true (as predict's default), else
            none (the trainer's stores).

    Returns:
        `{"score", "class_dice", "table", "folds", "missing_folds", "images", "path", "tta", "scales",
        "tta_label"}` (the TTA name with its scales, `segfold.probs.tta_label`).

    Raises:
        TrainingError: no fold has an OOF store yet (or, with TTA, a fold has no checkpoint).
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
    fold_ids = {k: list(fold_store.image_ids) for k, fold_store in zip(dirs, stores, strict=True)}
    fold_of = {image_id: k for k, ids in fold_ids.items() for image_id in ids}
    follows_test = tta is not None or cfg.infer.oof_tta  # else the trainer's stores, unless scales are given
    tta_name = tta if tta is not None else (cfg.infer.tta if cfg.infer.oof_tta else "none")
    scale_list = [float(s) for s in (scales if scales is not None else cfg.infer.scales if follows_test else [1.0])]
    plain = tta_name == "none" and all(s == 1.0 for s in scale_list)  # one copy per image, as the trainer's
    _, _, height, width = view.shape
    record = new_record("oof", cfg, inputs=view.input_entries(), folds=found, missing_folds=missing,
                        tta=tta_name, scales=scale_list)
    store = ProbStore.create(out / OOF_NAME, OOF_NAME, image_ids, view.classes, height, width, provenance=record)
    other = [k for k, fold_store in zip(dirs, stores, strict=True)
             if not _made_with(fold_store, cfg.infer.checkpoint)]
    if other and plain:
        logger.info("folds %s wrote their OOF with another checkpoint than infer.checkpoint (%s): predicting "
                    "their validation images again", other, cfg.infer.checkpoint)
    try:
        if plain and not other:
            rows = np.array([row_of[i] for i in image_ids], dtype=np.int64)
            for start in range(0, len(rows), chunk):  # copied as stored: no second rounding
                store.write_uint8(np.arange(start, min(start + chunk, len(rows))),
                                  view.read_u8(rows[start:start + chunk]))
            if view.cls is not None:
                store.write_cls(np.arange(len(rows)), view.cls[rows])
        else:
            position = {image_id: row for row, image_id in enumerate(image_ids)}
            store.provenance["checkpoints"] = predict_folds_into(cfg, store, fold_ids, position, tta_name,
                                                                 scale_list)  # written on finalize
        oof = store.finalize()
    except BaseException:
        store.abort()  # NOTE no half-written OOF: the previous one (if any) stays, marked as not the latest
        raise
    logger.info("OOF: %d images from folds %s%s, TTA '%s'", len(image_ids), found,
                f"; missing folds {missing}" if missing else "", tta_label(record))
    result = score_store(cfg, oof, chunk)
    frame = pd.DataFrame({"ImageId": image_ids, "fold": [fold_of[i] for i in image_ids],
                          "score": result.pop("image_scores")})
    for c, name in enumerate(oof.classes):
        frame[f"dice_{name}"] = result["pair_dice"][:, c]
    with atomic_path(out / OOF_NAME / SCORES_FILE) as tmp:
        frame.to_csv(tmp, index=False)
    result.pop("pair_dice")
    result.update(folds=found, missing_folds=missing, images=len(image_ids), path=str(out / OOF_NAME),
                  tta=tta_name, scales=scale_list, tta_label=tta_label(record))
    return result


def _made_with(store: ProbStore, checkpoint: str) -> bool:
    """Whether a trainer's fold store was predicted by the checkpoint file `checkpoint` (True when unknown);
    'auto' is the file the fold chose (`selected_checkpoint` of the store's fold folder)."""
    if checkpoint == AUTO_CHECKPOINT:
        checkpoint = selected_checkpoint(store.folder).name
    entries = (store.provenance or {}).get("checkpoints") or []
    return not entries or all(Path(entry["path"]).name == checkpoint for entry in entries)


def predict_folds_into(cfg: Any, store: ProbStore, fold_ids: dict[int, list[str]], position: dict[str, int],
                       tta: str, scales: Sequence[float]) -> list[dict[str, Any]]:
    """Predict each fold's validation images with that fold's model and TTA into the rows of `store`.

    The same predictor as the test images get (`segfold.predict`: TTA merged as probabilities, tiles
    above `infer.tile_size`), one fold model per image: its own validation images only.

    Returns:
        The checkpoints' provenance entries.
    """
    infer, data = cfg.infer, cfg.data
    device = resolve_device(infer.device, key="infer.device")
    height, width = store.shape[2:]
    transforms = build_tta(tta, scales)
    entries = []
    for k, ids in fold_ids.items():
        models, _, checkpoints = load_fold_models(cfg.experiment.output_dir, infer.checkpoint, [k], device)
        entries += checkpoints
        predict = make_predictor(models, transforms, data.mode, infer.forward_batch)
        mean, std, channels = model_normalisation(models)
        dataset = SegmentationDataset(data, ids, mean=mean, std=std, folder="train",
                                      transforms=build_transforms(data, "valid"), in_channels=channels)
        loader = DataLoader(dataset, batch_size=infer.batch_size, shuffle=False, num_workers=infer.num_workers,
                            worker_init_fn=worker_threads)
        apply_threads(infer.num_workers)
        logger.info("fold %d: predicting its %d validation images with TTA '%s' (%d copies)", k, len(ids),
                    tta_label({"tta": tta, "scales": list(scales)}), len(transforms))
        for batch in loader:
            with torch.no_grad():
                probs, cls_probs = predict_images(predict, batch["image"].to(device), infer)
            rows = np.array([position[i] for i in batch["image_id"]], dtype=np.int64)
            store.write(rows, resize_probs(probs.float(), (height, width)).cpu().numpy())
            if cls_probs is not None:
                store.write_cls(rows, cls_probs.float().cpu().numpy())
    return entries


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


def fold_report(cfg: Any, allow_stale: bool = False, chunk: int = 32) -> dict[str, Any]:
    """Per-fold and per-class scores of the gathered OOF, at threshold 0.5 and with the tuned rules.

    What a competitor reads before trusting a CV number: how far apart the folds are, and what the
    post-processing of `thresholds.json` (else the config's rules) adds in each fold. Each fold's
    images are its validation images (the `fold` of `folds.csv`).

    Returns:
        `{"rows": [{"rules", "fold", "images", "score", <class>: dice, ...}], "table": text, "rules": source}`.
    """
    out = Path(cfg.experiment.output_dir)
    view = open_oof(out, allow_stale=allow_stale, expected_folds=expected_folds(cfg)[0])
    fold_of = load_folds(cfg, create=False).set_index("ImageId")["fold"].astype(int).to_dict()
    params, source = postprocess_for(cfg, view.classes, allow_stale=allow_stale)
    annotations = read_train(cfg.data)
    shape, classes = view.shape[2:], view.classes
    row_of = view.row_index()

    def probs_of(ids: list[str]) -> np.ndarray:
        return view.read_u8(np.array([row_of[i] for i in ids], dtype=np.int64))

    rules = {
        f"threshold {DEFAULT_THRESHOLD}": lambda ids: binarize(probs_of(ids), cfg.data.mode, DEFAULT_THRESHOLD),
        "tuned" if source != "config" else "config rules": lambda ids: apply_postprocess_batch(
            probs_of(ids), params, view.cls[[row_of[i] for i in ids]] if view.cls is not None else None),
    }
    folds = np.array([str(fold_of.get(image_id, "?")) for image_id in view.image_ids])
    groups = {fold: folds == fold for fold in sorted(set(folds), key=lambda k: (len(k), k))}
    groups["all"] = np.ones(len(folds), dtype=bool)
    rows = []
    for name, predicted in rules.items():  # one pass over the OOF per rule set; folds are slices of it
        result = score_masks(view.image_ids, predicted,
                             lambda ids: truth_masks(annotations, ids, shape, len(classes)), classes, cfg.data, chunk)
        for fold, hit in groups.items():  # every image holds the same number of metric items
            rows.append({"rules": name, "fold": fold, "images": int(hit.sum()),
                         "score": float(result["image_scores"][hit].mean()),
                         **dict(zip(classes, result["pair_dice"][hit].mean(axis=0).tolist(), strict=True))})
    header = f"{'rules':<14} {'fold':>4} {'images':>6} " + " ".join(f"{c:>10}" for c in classes) + f" {'score':>7}"
    lines = [header] + [f"{r['rules']:<14} {r['fold']:>4} {r['images']:>6} "
                        + " ".join(f"{r[c]:10.4f}" for c in classes) + f" {r['score']:7.4f}" for r in rows]
    return {"rows": rows, "table": "\n".join(lines), "rules": source}
