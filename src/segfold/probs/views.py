"""Several probability stores read as one, and an experiment's OOF and test stores opened as such views.

The OOF of an experiment is `outputs/<exp>/oof/oof.*` once `scripts/oof.py` gathered it; before
that, the stores `outputs/<exp>/fold<k>/oof.*` that training wrote are read together as one (any
number of folds; fold 0 alone is enough).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segfold.errors import DataError
from segfold.probs.outputs import OOF_NAME, TEST_NAME, fold_dirs
from segfold.probs.store import ProbStore, store_exists


class StoreView:
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

    def locate(self, row: int) -> tuple[ProbStore, int]:
        """The store holding view row `row` and the row inside it."""
        k = int(np.searchsorted(self._starts, row, side="right") - 1)
        return self.stores[k], int(row - self._starts[k])

    def row_index(self) -> dict[str, int]:
        """ImageId -> row."""
        return {image_id: row for row, image_id in enumerate(self.image_ids)}


def open_oof(output_dir: str | os.PathLike) -> StoreView:
    """The OOF of an experiment: the gathered `oof/oof.*`, else every `fold<k>/oof.*` found.

    Raises:
        DataError: neither exists.
    """
    output_dir = Path(output_dir)
    if store_exists(output_dir / OOF_NAME, OOF_NAME):
        return StoreView([ProbStore.open(output_dir / OOF_NAME, OOF_NAME)], str(output_dir / OOF_NAME))
    folds = list(fold_dirs(output_dir, with_store=OOF_NAME).values())
    if not folds:
        raise DataError(f"no OOF probabilities under {output_dir}: expected {output_dir}/oof/oof.json "
                        f"(scripts/oof.py) or {output_dir}/fold<k>/oof.json (scripts/train.py); train a fold first")
    return StoreView([ProbStore.open(p, OOF_NAME) for p in folds], ", ".join(str(p) for p in folds))


def open_test(output_dir: str | os.PathLike) -> StoreView:
    """The test probabilities of an experiment, `test/test.*` (DataError when missing)."""
    folder = Path(output_dir) / TEST_NAME
    if not store_exists(folder, TEST_NAME):
        raise DataError(f"no test probabilities in {folder} (expected {folder}/test.json): run scripts/predict.py")
    return StoreView([ProbStore.open(folder, TEST_NAME)], str(folder))
