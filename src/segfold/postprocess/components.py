"""Connected components of the OOF masks, cached per (class, threshold), for per-component minimum areas.

The histograms cannot tell how a mask splits into components, so for `area_mode: component` the
binary masks are labelled (`cv2.connectedComponentsWithStats`, 8-connected, as
`segfold.postprocess.rules.remove_small_components` does) once per class and uint8 cutoff; each
component's area and true positives are kept, and any minimum area then follows by a sum.
"""

from __future__ import annotations

import cv2
import numpy as np

from segfold.postprocess.histograms import PIXEL_BUDGET, exclusive_u8
from segfold.probs import PackedTruth, StoreView, TruthFn


class ComponentCache:
    """Component areas and true positives of `rows` of an OOF, per class and uint8 cutoff.

    Args:
        source: the OOF probabilities.
        truth_fn: `image_id -> (C, H, W)` true masks at the store's resolution.
        rows: the rows scored (default all); `stats` returns one value per row, in this order.
        one_class_per_pixel: keep only each pixel's argmax class first (as the post-processing does).
    """

    def __init__(self, source: StoreView, truth_fn: TruthFn, rows: np.ndarray | None = None,
                 one_class_per_pixel: bool = False) -> None:
        self.source = source
        self.rows = np.arange(len(source)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.truth = truth_fn if isinstance(truth_fn, PackedTruth) else \
            PackedTruth(truth_fn, [source.image_ids[i] for i in self.rows])
        self.one_class_per_pixel = one_class_per_pixel
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _label(self, c: int, cutoff: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per component of class `c` at `u > cutoff`: its row (position in `rows`), area and true positives."""
        _, classes, height, width = self.source.shape
        step = max(1, PIXEL_BUDGET // (classes * height * width))
        owners, areas, tps = [], [], []
        for start in range(0, len(self.rows), step):
            index = self.rows[start:start + step]
            if self.one_class_per_pixel and classes > 1:
                probs = exclusive_u8(self.source.read_u8(index))[:, c]
            else:
                probs = self.source.read_u8(index, channel=c)
            truth = self.truth.channel([self.source.image_ids[i] for i in index], c, self.source.shape[1:])
            for i, (prob, true) in enumerate(zip(probs, truth, strict=True)):
                mask = (prob > cutoff).astype(np.uint8)
                if not mask.any():
                    continue
                count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
                owners.append(np.full(count - 1, start + i, dtype=np.int64))
                areas.append(stats[1:, cv2.CC_STAT_AREA].astype(np.int64))
                tps.append(np.bincount(labels[true], minlength=count)[1:])
        if not owners:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return np.concatenate(owners), np.concatenate(areas), np.concatenate(tps)

    def stats(self, c: int, cutoff: int, min_area: int) -> tuple[np.ndarray, np.ndarray]:
        """`(pred, tp)`, each `(len(rows),)`, of class `c` at `u > cutoff` without components under `min_area`."""
        key = (int(c), int(cutoff))
        if key not in self._cache:
            self._cache[key] = self._label(c, cutoff)
        owners, areas, tps = self._cache[key]
        keep = areas >= min_area
        pred = np.bincount(owners[keep], weights=areas[keep], minlength=len(self.rows)).astype(np.int64)
        tp = np.bincount(owners[keep], weights=tps[keep], minlength=len(self.rows)).astype(np.int64)
        return pred, tp
