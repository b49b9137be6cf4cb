"""The predict-and-write loop's end: batches of probabilities resized to the store and written as uint8.

Training writes a fold's OOF and prediction writes the test store through `StoreWriter`, so both are
resized (`resize_probs`) and quantised alike::

    with StoreWriter(folder, "test", image_ids, classes, size=None) as writer:
        for batch in loader:
            writer.add(probs, cls_probs, sizes=batch["orig_size"].tolist(), ids=batch["image_id"])
    store = writer.store
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from segfold.errors import DataError
from segfold.probs.convert import resize_probs
from segfold.probs.store import ProbStore, mark_failed


class StoreWriter:
    """Write probabilities batch by batch, in image order, into a new store (finalized on a clean exit).

    Args:
        folder: where the store goes.
        name: the store name (`oof`, `test`).
        image_ids: every image, in the order the batches come.
        classes: class names.
        size: the store's `(height, width)`; None: the first image's own size (`sizes` of `add`),
            which every image must then share.
        provenance: what the store is made from (`segfold.probs.provenance.new_record`), kept in its header.
    """

    def __init__(self, folder: str | os.PathLike, name: str, image_ids: Sequence[str], classes: Sequence[str],
                 size: Sequence[int] | None = None, provenance: dict | None = None) -> None:
        self.folder, self.name = Path(folder), name
        self.image_ids, self.classes = list(image_ids), list(classes)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.fixed = size is not None
        self.provenance = provenance
        self.row = 0
        self._store: ProbStore | None = None
        self.store: ProbStore | None = None  # the finalized store, read-only

    def add(self, probs: torch.Tensor, cls_probs: torch.Tensor | None = None,
            sizes: Sequence[Sequence[int]] | None = None, ids: Sequence[str] | None = None) -> None:
        """Resize `(n, C, h, w)` probabilities to the store and write the next `n` rows.

        Args:
            probs: mask probabilities.
            cls_probs: aux-head class probabilities `(n, C)`, or None.
            sizes: the images' native `(height, width)`; needed when the store size comes from them.
            ids: the batch's image ids (named in the error when sizes differ).
        """
        if self._store is None:
            if self.size is None:
                if not sizes:
                    raise ValueError("StoreWriter without a size needs the images' sizes")
                self.size = (int(sizes[0][0]), int(sizes[0][1]))
            self._store = ProbStore.create(self.folder, self.name, self.image_ids, self.classes, *self.size,
                                           provenance=self.provenance)
        if not self.fixed and sizes is not None:
            bad = next((i for i, s in enumerate(sizes) if tuple(int(v) for v in s) != self.size), None)
            if bad is not None:
                name = ids[bad] if ids is not None else f"row {self.row + bad}"
                raise DataError(f"{self.name} image {name} is {sizes[bad][0]}x{sizes[bad][1]} but the first one "
                                f"is {self.size[0]}x{self.size[1]}; set data.metric_size to the submission resolution")
        probs = resize_probs(probs.float(), self.size).cpu().numpy()
        rows = np.arange(self.row, self.row + len(probs))
        self._store.write(rows, probs)
        if cls_probs is not None:
            self._store.write_cls(rows, cls_probs.float().cpu().numpy())
        self.row += len(probs)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            if self._store is not None:
                self._store.abort()
            else:
                mark_failed(self.folder, self.name)
            return
        if self._store is None:
            raise DataError(f"no images to write into the '{self.name}' store in {self.folder}")
        self.store = self._store.finalize()
