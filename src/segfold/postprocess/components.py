"""Connected components of the OOF masks, cached per (class, threshold), for per-component minimum areas.

The histograms cannot tell how a mask splits into components, so for `area_mode: component` the
binary masks are labelled (`cv2.connectedComponentsWithStats`, 8-connected, as
`segfold.postprocess.rules.remove_small_components` does) once per class and uint8 cutoff; each
component's area and true positives are kept, and any minimum area then follows by a sum.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from segfold.cores import threads_per_process
from segfold.postprocess.histograms import PIXEL_BUDGET, Histograms, PhaseTimer, exclusive_u8
from segfold.probs import PackedTruth, StoreView, TruthFn


class ComponentCache:
    """Component areas and true positives of `rows` of an OOF, per class and uint8 cutoff.

    Args:
        source: the OOF probabilities.
        truth_fn: `image_id -> (C, H, W)` true masks at the store's resolution.
        rows: the rows scored (default all); `stats` returns one value per row, in this order.
        one_class_per_pixel: keep only each pixel's argmax class first (as the post-processing does).
        hist: the histograms of the same rows (`collect_histograms`, same `one_class_per_pixel`). With them
            a cutoff only reads and labels the images that have a pixel above it, and the truth only of
            those with true pixels: on a competition where most (image, class) pairs are empty, a small share.
        timer: adds the seconds of labelling (phase `components`).
    """

    def __init__(self, source: StoreView, truth_fn: TruthFn, rows: np.ndarray | None = None,
                 one_class_per_pixel: bool = False, hist: Histograms | None = None,
                 timer: PhaseTimer | None = None) -> None:
        self.source = source
        self.rows = np.arange(len(source)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.truth = truth_fn if isinstance(truth_fn, PackedTruth) else \
            PackedTruth(truth_fn, [source.image_ids[i] for i in self.rows])
        self.one_class_per_pixel = one_class_per_pixel
        if hist is not None and hist.num_images != len(self.rows):
            raise ValueError(f"histograms of {hist.num_images} images for a cache of {len(self.rows)} rows")
        self.hist = hist
        self.timer = timer if timer is not None else PhaseTimer()
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _truth(self, positions: np.ndarray, c: int) -> np.ndarray:
        """bool `(n, H, W)` true masks of class `c` at `positions` (indices into `rows`); with the histograms, the
        images without a true pixel of class `c` are left all-false without reading their masks."""
        shape = self.source.shape[1:]
        out = np.zeros((len(positions), *shape[1:]), dtype=bool)
        wanted = np.arange(len(positions))
        if self.hist is not None:
            wanted = wanted[self.hist.true_area[positions, c] > 0]
        if len(wanted):
            ids = [self.source.image_ids[self.rows[positions[j]]] for j in wanted]
            out[wanted] = self.truth.channel(ids, c, shape)
        return out

    def _label(self, c: int, cutoff: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Class `c` at `u > cutoff`, per (image, component area): position in `rows`, the component area,
        the pixels of all such components and their true positives."""
        _, classes, height, width = self.source.shape
        positions = np.arange(len(self.rows))
        if self.hist is not None:  # only images with a pixel above the cutoff have components
            positions = positions[self.hist.above[:, c, cutoff] > 0]
        step = max(1, PIXEL_BUDGET // (height * width * (classes if self.one_class_per_pixel else 1)))
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

        def label(item: tuple[int, np.ndarray, np.ndarray]) -> None:
            position, prob, true = item
            mask = (prob > cutoff).view(np.uint8)
            left, top, width, height = cv2.boundingRect(mask)  # of the pixels above the cutoff
            if width == 0:
                return
            # NOTE: labelled inside that box only (a defect covers a small part of a plate)
            mask, true = mask[top:top + height, left:left + width], true[top:top + height, left:left + width]
            count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
            tps = np.bincount(labels[true], minlength=count)[1:] if true.any() else np.zeros(count - 1, np.int64)
            # NOTE: components of one image with the same area pass or fail a minimum area together: one entry
            # each (a noisy mask of 50,000 one-pixel components is one entry, not 50,000)
            sizes, inverse = np.unique(areas, return_inverse=True)
            found.append((np.full(len(sizes), position, dtype=np.int64), sizes,
                          sizes * np.bincount(inverse, minlength=len(sizes)),
                          np.bincount(inverse, weights=tps, minlength=len(sizes)).astype(np.int64)))

        threads = threads_per_process()
        with self.timer("components"), ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(positions), step):
                chunk = positions[start:start + step]
                index = self.rows[chunk]
                if self.one_class_per_pixel and classes > 1:
                    probs = exclusive_u8(self.source.read_u8(index))[:, c]
                else:
                    probs = self.source.read_u8(index, channel=c)
                truth = self._truth(chunk, c)
                list(pool.map(label, zip(chunk, probs, truth, strict=True)))
        if not found:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, empty
        return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))  # type: ignore[return-value]

    def stats(self, c: int, cutoff: int, min_area: int) -> tuple[np.ndarray, np.ndarray]:
        """`(pred, tp)`, each `(len(rows),)`, of class `c` at `u > cutoff` without components under `min_area`."""
        if min_area <= 1 and self.hist is not None:  # nothing is dropped: the histograms have the answer
            return self.hist.above[:, c, cutoff].astype(np.int64), self.hist.tp_above[:, c, cutoff].astype(np.int64)
        key = (int(c), int(cutoff))
        if key not in self._cache:
            self._cache[key] = self._label(c, cutoff)
        owners, sizes, areas, tps = self._cache[key]
        keep = sizes >= min_area
        pred = np.bincount(owners[keep], weights=areas[keep], minlength=len(self.rows)).astype(np.int64)
        tp = np.bincount(owners[keep], weights=tps[keep], minlength=len(self.rows)).astype(np.int64)
        return pred, tp
