"""Cross-validation folds of the training images, written once to `folds.csv` and reused by every run.

Methods (`data.folds.method`): `kfold`; `stratified` on the set of classes present (or on bins of the
labelled area, `stratify_on: area`); `multilabel` (iterative stratification on per-class presence);
`group` and `stratified_group`, with the group from a CSV column or a regex on ImageId. All are
deterministic for a seed (`data.folds.seed`, else `experiment.seed`). `data.folds.holdout` first sets
aside a share of the images (fold -1, split by the same method) that no fold trains or validates on.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from segfold.data.formats import Annotations, read_train
from segfold.data.images import name_list
from segfold.errors import DataError
from segfold.io import atomic_path

if TYPE_CHECKING:
    from segfold.config.data import DataConfig, FoldsConfig

HOLDOUT_FOLD = -1  # the fold number of holdout images in folds.csv


def folds_path(cfg) -> Path:
    """`data.folds.path`, else `<output_root>/<experiment>/folds.csv`."""
    if cfg.data.folds.path is not None:
        return Path(cfg.data.folds.path)
    return cfg.experiment.output_dir / "folds.csv"


def image_groups(data_cfg: DataConfig, annotations: Annotations) -> np.ndarray | None:
    """The group of each image (from `group_column` or `group_regex`), or None without either."""
    folds_cfg = data_cfg.folds
    if folds_cfg.group_column:
        if folds_cfg.group_column not in annotations.metadata.columns:
            raise DataError(f"data.folds.group_column {folds_cfg.group_column!r} is not a column of "
                            f"{data_cfg.train_csv}; its other columns are {list(annotations.metadata.columns)}")
        return annotations.metadata[folds_cfg.group_column].astype(str).to_numpy()
    if folds_cfg.group_regex:
        pattern = re.compile(folds_cfg.group_regex)
        matches = [pattern.search(image_id) for image_id in annotations.image_ids]
        unmatched = [i for i, m in zip(annotations.image_ids, matches, strict=True) if m is None]
        if unmatched:
            raise DataError(f"data.folds.group_regex {folds_cfg.group_regex!r} does not match {len(unmatched)} "
                            f"ImageId(s): {name_list(unmatched)}")
        return np.array([m.group(1) if pattern.groups else m.group(0) for m in matches])
    return None


def _merge_rare(labels: np.ndarray, n_folds: int) -> np.ndarray:
    """Stratification labels with fewer members than folds merged into one 'rare' label (or the largest)."""
    labels = labels.astype(object)
    values, counts = np.unique(labels, return_counts=True)
    rare = set(values[counts < n_folds])
    if rare:
        labels = np.array(["rare" if v in rare else v for v in labels], dtype=object)
        values, counts = np.unique(labels, return_counts=True)
        if "rare" in set(values) and counts[list(values).index("rare")] < n_folds and len(values) > 1:
            largest = values[np.argmax(np.where(values == "rare", -1, counts))]
            labels[labels == "rare"] = largest
    return labels


def stratification_labels(folds_cfg: FoldsConfig, annotations: Annotations) -> np.ndarray:
    """One label per image: the set of classes present (`"0101"`), or its labelled-area bin."""
    if folds_cfg.stratify_on == "classes":
        labels = np.array(["".join("1" if p else "0" for p in row) for row in annotations.presence])
    else:
        pixels = np.maximum(annotations.shapes.prod(axis=1), 1)
        fraction = annotations.areas.sum(axis=1) / pixels
        labels = np.zeros(len(fraction), dtype=np.int64)  # bin 0: empty images
        nonzero = fraction > 0
        if nonzero.any():
            edges = np.quantile(fraction[nonzero], np.linspace(0, 1, folds_cfg.area_bins + 1)[1:-1])
            labels[nonzero] = 1 + np.searchsorted(edges, fraction[nonzero], side="right")
        labels = labels.astype(str)
    return _merge_rare(labels, folds_cfg.n_folds)


def assign_folds(folds_cfg: FoldsConfig, annotations: Annotations, groups: np.ndarray | None, seed: int) -> np.ndarray:
    """The fold (0..n_folds-1) of each image of `annotations` by `folds_cfg.method`."""
    n_folds, n_images = folds_cfg.n_folds, len(annotations)
    if n_images < n_folds:
        raise DataError(f"{n_images} training image(s) cannot make {n_folds} folds (lower data.folds.n_folds)")
    method = folds_cfg.method
    if method in ("group", "stratified_group"):
        if groups is None:
            raise DataError(f"data.folds.method {method!r} needs data.folds.group_column or group_regex")
        n_groups = len(np.unique(groups))
        if n_groups < n_folds:
            raise DataError(f"only {n_groups} group(s) ({name_list(sorted(set(groups)))}) for {n_folds} folds: "
                            f"set data.folds.n_folds <= {n_groups}")
    index = np.zeros((n_images, 1))
    if method == "kfold":
        splits = KFold(n_folds, shuffle=True, random_state=seed).split(index)
    elif method == "stratified":
        labels = stratification_labels(folds_cfg, annotations)
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(index, labels)
    elif method == "multilabel" and annotations.presence.shape[1] == 1:
        # NOTE: iterative stratification needs two or more labels; one class is plain stratification on it
        labels = _merge_rare(annotations.presence[:, 0].astype(int).astype(str), n_folds)
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(index, labels)
    elif method == "multilabel":
        presence = annotations.presence.astype(int)
        splits = MultilabelStratifiedKFold(n_folds, shuffle=True, random_state=seed).split(index, presence)
    elif method == "group":
        splits = GroupKFold(n_folds, shuffle=True, random_state=seed).split(index, groups=groups)
    else:
        labels = stratification_labels(folds_cfg, annotations)
        splits = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(index, labels, groups)
    fold = np.full(n_images, -1, dtype=np.int64)
    for k, (_, valid) in enumerate(splits):
        fold[valid] = k
    assert (fold >= 0).all(), "every image gets a fold"
    return fold


def make_folds(cfg, annotations: Annotations | None = None) -> pd.DataFrame:
    """Folds of the training images of `cfg` (a full Config): a DataFrame (ImageId, fold).

    Args:
        cfg: the experiment config (`data` section, and `experiment.seed` when `data.folds.seed` is unset).
        annotations: the training labels, when the caller has read them already.
    """
    annotations = annotations if annotations is not None else read_train(cfg.data)
    folds_cfg = cfg.data.folds
    seed = folds_cfg.seed if folds_cfg.seed is not None else cfg.experiment.seed
    groups = image_groups(cfg.data, annotations)
    all_ids = list(annotations.image_ids)
    fold = np.full(len(annotations), HOLDOUT_FOLD, dtype=np.int64)
    rows = np.arange(len(annotations))
    if folds_cfg.holdout > 0:
        # NOTE the holdout is one part of a split into round(1 / holdout) parts by the same method, so it
        # is stratified (and grouped) like the folds; its share is 1 / parts, e.g. 0.15 -> 1/7
        parts = max(2, round(1 / folds_cfg.holdout))
        try:
            split = assign_folds(folds_cfg.model_copy(update={"n_folds": parts}), annotations, groups, seed)
        except DataError as exc:
            raise DataError(f"data.folds.holdout = {folds_cfg.holdout} splits the images into {parts} parts first, "
                            f"which fails: {exc}; use a larger holdout share or set it to 0") from None
        rows = np.flatnonzero(split != 0)
        annotations = replace(annotations, image_ids=[annotations.image_ids[i] for i in rows],
                              shapes=annotations.shapes[rows], areas=annotations.areas[rows], rles=None,
                              metadata=pd.DataFrame())
        groups = groups[rows] if groups is not None else None
    fold[rows] = assign_folds(folds_cfg, annotations, groups, seed)
    return pd.DataFrame({"ImageId": all_ids, "fold": fold})


def write_folds(cfg, folds: pd.DataFrame) -> Path:
    """Write `folds.csv` atomically to `folds_path(cfg)`; returns the path."""
    path = folds_path(cfg)
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, index=False)
    return path


def load_folds(cfg, create: bool = True) -> pd.DataFrame:
    """Read `folds.csv` (made and written first when missing and `create`), checked against the config.

    Raises:
        DataError: a file with other columns, or with a fold count other than `data.folds.n_folds`.
    """
    path = folds_path(cfg)
    if not path.is_file():
        if not create:
            raise DataError(f"folds file not found: {path} (run scripts/make_folds.py --config ...)")
        folds = make_folds(cfg)
        write_folds(cfg, folds)
        return folds
    folds = pd.read_csv(path, dtype={"ImageId": str})
    if list(folds.columns[:2]) != ["ImageId", "fold"] or not pd.api.types.is_integer_dtype(folds["fold"]):
        raise DataError(f"{path}: expected integer columns ImageId,fold; got {list(folds.columns)}")
    n_folds = cfg.data.folds.n_folds
    found = sorted(folds["fold"].unique().tolist())
    holdout = cfg.data.folds.holdout > 0
    if found != [HOLDOUT_FOLD] * holdout + list(range(n_folds)):
        what = f"data.folds.n_folds is {n_folds}" + (" with a holdout (fold -1)" if holdout else " without holdout")
        raise DataError(f"{path} has folds {found} but {what}: delete the file or rerun scripts/make_folds.py")
    return folds


def holdout_ids(folds: pd.DataFrame) -> list[str]:
    """The images of the holdout (fold -1): no fold trains or validates on them."""
    return folds.loc[folds["fold"] == HOLDOUT_FOLD, "ImageId"].astype(str).tolist()


def fold_table(folds: pd.DataFrame, annotations: Annotations, groups: np.ndarray | None = None) -> pd.DataFrame:
    """Per fold: images, groups, images without any class, and images holding each class."""
    fold = folds.set_index("ImageId").loc[annotations.image_ids, "fold"].to_numpy()
    presence = annotations.presence
    rows = []
    for k in sorted(np.unique(fold)):
        rows_k = fold == k
        row = {"fold": int(k), "images": int(rows_k.sum())}
        if groups is not None:
            row["groups"] = len(np.unique(groups[rows_k]))
        row["empty"] = int((~presence[rows_k].any(axis=1)).sum())
        for c, name in enumerate(annotations.classes):
            row[f"class {name}"] = int(presence[rows_k, c].sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("fold")
