"""Where tuning and blending read from: an experiment's OOF / test stores, and the true masks.

The OOF of an experiment is `outputs/<exp>/oof/oof.*` once `scripts/oof.py` gathered it; before
that, the stores `outputs/<exp>/fold<k>/oof.*` that training wrote are read together as one (any
number of folds; fold 0 alone is enough).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segfold.errors import DataError
from segfold.infer.store import ProbStore, store_exists


class OofSource:
    """Several probability stores read as one, rows in store order (`image_ids`, `read_u8`, `cls`).

    Args:
        stores: stores with the same classes and resolution and distinct image ids.
        label: a name for messages (the folders read).
    """

    def __init__(self, stores: Sequence[ProbStore], label: str = "") -> None:
        if not stores:
            raise DataError(f"{label or 'OOF'}: no probability stores to read")
        first = stores[0]
        for store in stores[1:]:
            if store.classes != first.classes:
                raise DataError(f"{store.folder}/{store.name}: classes {store.classes} differ from "
                                f"{first.folder}/{first.name}: {first.classes}")
            if store.shape[2:] != first.shape[2:]:
                raise DataError(f"{store.folder}/{store.name}: masks of {store.shape[2:]} but {first.folder}/"
                                f"{first.name} has {first.shape[2:]}; predict every fold at the same resolution")
        self.stores = list(stores)
        self.label = label or ", ".join(f"{s.folder}/{s.name}" for s in stores)
        self.classes = list(first.classes)
        self.image_ids = [image_id for store in stores for image_id in store.image_ids]
        seen: dict[str, int] = {}
        for k, store in enumerate(stores):
            for image_id in store.image_ids:
                if image_id in seen:
                    other = stores[seen[image_id]]
                    raise DataError(f"image {image_id!r} is in both {other.folder}/{other.name} and "
                                    f"{store.folder}/{store.name}; each image belongs to one fold's OOF")
                seen[image_id] = k
        self._starts = np.cumsum([0] + [len(s) for s in stores])
        self.shape = (len(self.image_ids), len(self.classes), *first.shape[2:])
        if all(s.cls is not None for s in stores):
            self.cls: np.ndarray | None = np.concatenate([s.cls for s in stores]).astype(np.float32)
        else:
            self.cls = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def read_u8(self, rows: Sequence[int] | np.ndarray, channel: int | None = None) -> np.ndarray:
        """uint8 probabilities of `rows`: `(n, C, H, W)`, or `(n, H, W)` of one `channel`."""
        rows = np.asarray(rows, dtype=np.int64)
        shape = (len(rows), *self.shape[1:]) if channel is None else (len(rows), *self.shape[2:])
        out = np.empty(shape, dtype=np.uint8)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for k in np.unique(which):
            hit = which == k
            local = rows[hit] - self._starts[k]
            data = self.stores[k].probs
            out[hit] = data[local] if channel is None else data[local, channel]
        return out

    def row_index(self) -> dict[str, int]:
        """ImageId -> row."""
        return {image_id: row for row, image_id in enumerate(self.image_ids)}


def _fold_number(path: Path) -> int:
    match = re.fullmatch(r"fold(\d+)", path.name)
    return int(match.group(1)) if match else -1


def open_oof(output_dir: str | os.PathLike) -> OofSource:
    """The OOF of an experiment: the gathered `oof/oof.*`, else every `fold<k>/oof.*` found.

    Raises:
        DataError: neither exists.
    """
    output_dir = Path(output_dir)
    if store_exists(output_dir / "oof", "oof"):
        return OofSource([ProbStore.open(output_dir / "oof", "oof")], str(output_dir / "oof"))
    folds = sorted((p for p in output_dir.glob("fold*") if _fold_number(p) >= 0 and store_exists(p, "oof")),
                   key=_fold_number)
    if not folds:
        raise DataError(f"no OOF probabilities under {output_dir}: expected {output_dir}/oof/oof.json "
                        f"(scripts/oof.py) or {output_dir}/fold<k>/oof.json (scripts/train.py); train a fold first")
    return OofSource([ProbStore.open(p, "oof") for p in folds], ", ".join(str(p) for p in folds))


def open_test(output_dir: str | os.PathLike) -> OofSource:
    """The test probabilities of an experiment, `test/test.*` (DataError when missing)."""
    folder = Path(output_dir) / "test"
    if not store_exists(folder, "test"):
        raise DataError(f"no test probabilities in {folder} (expected {folder}/test.json): run scripts/predict.py")
    return OofSource([ProbStore.open(folder, "test")], str(folder))


def fit_mask(mask: np.ndarray, num_classes: int, height: int, width: int) -> np.ndarray:
    """A true mask as bool `(C, H, W)` at the store's resolution (nearest-neighbour resize).

    Args:
        mask: `(C, h, w)` binary / multilabel masks, or an `(h, w)` index map (multiclass: value c is class c).
        num_classes: C.
        height: the store's height.
        width: the store's width.
    """
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None] == np.arange(num_classes)[:, None, None]
    if mask.shape[0] != num_classes:
        raise DataError(f"a true mask has {mask.shape[0]} classes but the probability store has {num_classes}")
    mask = mask.astype(np.uint8)
    if mask.shape[1:] != (height, width):
        mask = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in mask])
    return mask.astype(bool)


def make_truth_reader(data_cfg: Any, classes: Sequence[str], height: int,
                      width: int) -> Callable[[str], np.ndarray]:
    """`image_id -> bool (C, H, W)` true masks from the training annotations, at the store's resolution."""
    from segfold.data.formats import read_train

    annotations = read_train(data_cfg)
    names = getattr(annotations, "classes", None)
    if names is not None and [str(c) for c in names] != [str(c) for c in classes]:
        raise DataError(f"the OOF store's classes {list(classes)} differ from the annotations' {list(names)} "
                        f"({data_cfg.root}); was the OOF written with another data config?")

    def truth(image_id: str) -> np.ndarray:
        return fit_mask(annotations.mask(image_id), len(classes), height, width)

    return truth


def cached_truth(truth_fn: Callable[[str], np.ndarray], image_ids: Sequence[str],
                 max_bytes: int = 512 << 20) -> Callable[[str], np.ndarray]:
    """`truth_fn` with the masks of `image_ids` kept bit-packed in memory (when they fit in `max_bytes`).

    For searches that read the same sample of true masks many times (blend weights).
    """
    packed: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}
    budget = max_bytes

    def truth(image_id: str) -> np.ndarray:
        nonlocal budget
        if image_id in packed:
            bits, shape = packed[image_id]
            return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
        mask = np.asarray(truth_fn(image_id)).astype(bool)
        if image_id in wanted and budget >= mask.size // 8 + 1:
            packed[image_id] = (np.packbits(mask.ravel()), mask.shape)
            budget -= mask.size // 8 + 1
        return mask

    wanted = set(image_ids)
    return truth
