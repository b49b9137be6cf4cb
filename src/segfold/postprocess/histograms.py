"""Exact scores of post-processing rules from per-image histograms of the uint8 OOF probabilities.

One read of the OOF (`cv2.calcHist`) keeps, per image and class, two 256-bin histograms: pixels per uint8 value and
true pixels per value (`Histograms`). A pixel is positive at threshold t when `u > k = floor(255 t)`
(`segfold.postprocess.rules.u8_cutoff`), so with reversed cumulative sums the predicted area at k is
`above[k]` and the true positives are `tp_above[k]`: every threshold, total-area rule, triplet rule,
classifier gate, `one_class_per_pixel` (applied before the histograms) and `at_least_one` follows
exactly, without reading the OOF again. Only per-component areas need the pixels
(`segfold.postprocess.components`).

Scores from (predicted area, true positives, true area) per image and class:
`dice_pairs` (one Dice per image and class), `dice_image` (one Dice per image, classes pooled) and
`tgs_iou` (TGS Salt: precision averaged over IoU thresholds 0.50 ... 0.95, classes pooled).
For one class these are `segfold.metrics.competition`'s scores; that module scores `dice_image` and
`tgs_iou` on one class only, and here several classes are pooled into one mask per image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segfold.cores import threads_per_process
from segfold.errors import DataError
from segfold.postprocess.rules import ClassRules, PostprocessParams, soft_min_area, u8_cutoff
from segfold.probs import StoreView, read_truth

if TYPE_CHECKING:  # NOTE the component cache is built from these histograms' module: types only
    from segfold.postprocess.components import ComponentCache

METRICS = ("dice_pairs", "dice_image", "tgs_iou")
IOU_PERCENT = np.arange(50, 100, 5)  # TGS IoU thresholds 0.50 ... 0.95 in percent
PIXEL_BUDGET = 1 << 23  # pixels of the OOF held in memory at once while reading


def _above(hist: np.ndarray) -> np.ndarray:
    """`out[..., k]` = the count of values > k, from per-value counts `(..., 256)`."""
    at_least = np.cumsum(hist[..., ::-1], axis=-1, dtype=np.int32)[..., ::-1]  # values >= k
    out = np.zeros_like(at_least)
    out[..., :-1] = at_least[..., 1:]
    return out


@dataclass
class Histograms:
    """Per image and class: pixel counts per uint8 value, and true-pixel counts per value.

    Attributes:
        counts: `(N, C, 256)` pixels per value (after `one_class_per_pixel`, when on).
        true_counts: `(N, C, 256)` true pixels per value.
        cls: `(N, C)` classifier probabilities, or None.
    """

    counts: np.ndarray
    true_counts: np.ndarray
    cls: np.ndarray | None = None
    above: np.ndarray = field(init=False, repr=False)
    tp_above: np.ndarray = field(init=False, repr=False)
    true_area: np.ndarray = field(init=False, repr=False)
    top_value: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.above = _above(self.counts)  # (N, C, 256)
        self.tp_above = _above(self.true_counts)
        self.true_area = self.true_counts.sum(axis=-1, dtype=np.int64)  # (N, C)
        self.top_value = 255 - np.argmax(self.counts[..., ::-1] > 0, axis=-1)  # highest value present

    @property
    def num_images(self) -> int:
        return self.counts.shape[0]

    @property
    def num_classes(self) -> int:
        return self.counts.shape[1]

    def best_class(self) -> np.ndarray:
        """`(N,)` the class `at_least_one` forces: highest classifier probability, else highest pixel value."""
        scores = self.cls if self.cls is not None else self.top_value
        return np.argmax(scores, axis=1)

    def subset(self, rows: np.ndarray) -> Histograms:
        """The histograms of `rows` only."""
        return Histograms(self.counts[rows], self.true_counts[rows], None if self.cls is None else self.cls[rows])


def exclusive_u8(probs: np.ndarray) -> np.ndarray:
    """`(n, C, H, W)` probabilities with every class but each pixel's argmax set to 0 (ties: first class)."""
    winner = probs.argmax(axis=1)  # (n, H, W)
    keep = np.arange(probs.shape[1])[None, :, None, None] == winner[:, None]
    return np.where(keep, probs, 0).astype(probs.dtype)


def value_counts(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels per uint8 value `(256,)` of a `(H, W)` map, only where `mask` is true when given."""
    if values.size < 1 << 24:  # cv2.calcHist counts in float32: exact below 2**24 per bin
        hist = cv2.calcHist([np.ascontiguousarray(values)], [0],
                            None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8), [256], [0, 256])
        return hist.ravel().astype(np.int64)
    return np.bincount((values if mask is None else values[mask]).ravel(), minlength=256)


class PhaseTimer:
    """Seconds spent per named phase (`with timer("read"): ...`), added up over calls; a no-op sink by default."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def plane_histograms(probs: np.ndarray, truth: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`(counts, true_counts)`, each `(n, C, 256)`, of uint8 `(n, C, H, W)` planes against bool truth.

    The true-pixel counts of a plane with an empty truth are zeros without a pass over it (most
    (image, class) pairs of a segmentation competition); the planes are shared among `threads` threads
    (OpenCV releases the GIL).
    """
    n, classes = probs.shape[:2]
    counts = np.zeros((n, classes, 256), dtype=np.int32)
    true_counts = np.zeros_like(counts)

    def one(plane: int) -> None:
        i, c = divmod(plane, classes)
        counts[i, c] = value_counts(probs[i, c])
        if truth[i, c].any():
            true_counts[i, c] = np.bincount(probs[i, c][truth[i, c]], minlength=256)

    if threads > 1 and n * classes > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(n * classes)))
    else:
        for plane in range(n * classes):
            one(plane)
    return counts, true_counts


def collect_histograms(source: StoreView, truth_fn: Callable[[str], np.ndarray], one_class_per_pixel: bool = False,
                       rows: np.ndarray | None = None, timer: PhaseTimer | None = None) -> Histograms:
    """Read the OOF once (in chunks of about `PIXEL_BUDGET` pixels) and histogram it against the truth.

    Memory stays at a chunk of pixels plus `(N, C, 256)` counts whatever the number of images.

    Args:
        source: the OOF probabilities (`segfold.probs.StoreView`).
        truth_fn: `image_id -> (C, H, W)` true masks at the store's resolution.
        one_class_per_pixel: keep only each pixel's argmax class before counting.
        rows: the rows to read (default all).
        timer: adds the seconds of the phases `read`, `truth` and `histograms`.
    """
    timer = timer if timer is not None else PhaseTimer()
    num, classes, height, width = source.shape
    rows = np.arange(num) if rows is None else np.asarray(rows, dtype=np.int64)
    counts = np.zeros((len(rows), classes, 256), dtype=np.int32)  # at most H * W per bin
    true_counts = np.zeros_like(counts)
    step = max(1, PIXEL_BUDGET // (classes * height * width))
    threads = threads_per_process()
    for start in range(0, len(rows), step):
        index = rows[start:start + step]
        with timer("read"):
            probs = source.read_u8(index)  # (n, C, H, W) uint8
        with timer("truth"):
            truth = read_truth(truth_fn, [source.image_ids[i] for i in index], (classes, height, width))
        with timer("histograms"):
            if one_class_per_pixel and classes > 1:
                probs = exclusive_u8(probs)
            chunk = slice(start, start + len(index))
            counts[chunk], true_counts[chunk] = plane_histograms(probs, truth, threads)
    cls = None if source.cls is None else np.asarray(source.cls, dtype=np.float32)[rows]
    return Histograms(counts, true_counts, cls)


# ----------------------------------------------------------------------------------- scores
def _dice(tp: np.ndarray, pred: np.ndarray, true: np.ndarray, empty_score: float) -> np.ndarray:
    total = pred + true
    return np.where(total == 0, empty_score, 2.0 * tp / np.maximum(total, 1))


def item_scores(metric: str, pred: np.ndarray, tp: np.ndarray, true: np.ndarray,
                empty_score: float = 1.0) -> np.ndarray:
    """The competition's per-item scores from predicted areas, true positives and true areas.

    Args:
        metric: `dice_pairs`, `dice_image` or `tgs_iou`.
        pred: `(N, C, ...)` predicted pixels per image and class (trailing axes: candidate rules).
        tp: true positives, same shape.
        true: true pixels, same shape (or broadcastable).
        empty_score: Dice of an empty prediction on an empty truth.

    Returns:
        `(N, C, ...)` for `dice_pairs`, `(N, ...)` otherwise.
    """
    if metric == "dice_pairs":
        return _dice(tp, pred, true, empty_score)
    pred, tp, true = np.broadcast_arrays(pred, tp, true)
    pred, tp, true = pred.sum(axis=1), tp.sum(axis=1), true.sum(axis=1)  # classes pooled per image
    if metric == "dice_image":
        return _dice(tp, pred, true, empty_score)
    if metric == "tgs_iou":
        union = (pred + true - tp).astype(np.int64)
        # hit when IoU > t, compared on integers as segfold.metrics.competition does: 100 tp > (100 t) union
        hits = (100 * tp[..., None].astype(np.int64) > IOU_PERCENT * union[..., None]).mean(axis=-1)
        return np.where(union == 0, 1.0, hits)
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def mean_score(metric: str, pred: np.ndarray, tp: np.ndarray, true: np.ndarray, empty_score: float = 1.0) -> np.ndarray:
    """Mean of `item_scores` over images (and classes): a float, or one per trailing candidate axis."""
    items = item_scores(metric, pred, tp, true, empty_score)
    axes = (0, 1) if metric == "dice_pairs" else (0,)
    return items.mean(axis=axes)


# ----------------------------------------------------------------------------------- rules on histograms
def gate(hist: Histograms, c: int, rule: ClassRules) -> np.ndarray:
    """`(N,)` whether class `c` passes the classifier gate and the triplet rule."""
    keep = np.ones(hist.num_images, dtype=bool)
    if rule.cls_threshold is not None:
        if hist.cls is None:
            raise DataError("a cls_threshold rule needs class probabilities, but the OOF store has no "
                            "<name>.cls.npy (train with an aux head, or leave cls_threshold null)")
        keep &= hist.cls[:, c] > rule.cls_threshold
    if rule.top is not None:
        keep &= hist.above[:, c, u8_cutoff(rule.top)] >= rule.min_count
    return keep


def class_stats(hist: Histograms, c: int, rule: ClassRules,
                components: ComponentCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(pred, tp)`, each `(N,)`: predicted area and true positives of class `c` under `rule`."""
    keep = gate(hist, c, rule)
    k = u8_cutoff(rule.threshold)
    if rule.area_mode == "component" and rule.min_area > 1:
        if components is None:
            raise ValueError("a per-component minimum area needs the pixels: pass a ComponentCache")
        pred, tp = components.stats(c, k, rule.min_area)
    else:
        pred, tp = hist.above[:, c, k], hist.tp_above[:, c, k]
        if rule.area_mode == "total":
            keep = keep & (pred >= _min_areas(hist, c, rule))
    return np.where(keep, pred, 0), np.where(keep, tp, 0)


def _min_areas(hist: Histograms, c: int, rule: ClassRules) -> np.ndarray | int:
    """Each image's minimum total area of class `c`: `min_area`, or the soft gate's per image."""
    if rule.cls_area_power is None:
        return rule.min_area
    if hist.cls is None:
        raise DataError("a cls_area_power rule needs class probabilities, but the OOF store has no "
                        "<name>.cls.npy (train with an aux head, or leave cls_area_power null)")
    return soft_min_area(rule.min_area, hist.cls[:, c], rule.cls_area_power)


def force_one(hist: Histograms, pred: np.ndarray, tp: np.ndarray, cutoffs: np.ndarray) -> None:
    """Apply `at_least_one` in place to `(N, C, K)` stats; `cutoffs` `(C, K)` are each class's threshold."""
    empty = pred.sum(axis=1) == 0  # (N, K)
    if not empty.any():
        return
    rows = np.arange(hist.num_images)
    best = hist.best_class()  # (N,)
    k = cutoffs[best]  # (N, K)
    forced_pred = hist.above[rows[:, None], best[:, None], k]
    forced_tp = hist.tp_above[rows[:, None], best[:, None], k]
    top = hist.top_value[rows, best]  # nothing above the threshold: the pixels at the highest value
    nothing = forced_pred == 0
    forced_pred = np.where(nothing, hist.counts[rows, best, top][:, None], forced_pred)
    forced_tp = np.where(nothing, hist.true_counts[rows, best, top][:, None], forced_tp)
    pred[rows, best] = np.where(empty, forced_pred, pred[rows, best])
    tp[rows, best] = np.where(empty, forced_tp, tp[rows, best])


def params_stats(hist: Histograms, params: PostprocessParams,
                 components: ComponentCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(pred, tp)`, each `(N, C)`, of every class under `params`, `at_least_one` included."""
    stats = [class_stats(hist, c, rule, components) for c, rule in enumerate(params.rules)]
    pred = np.stack([s[0] for s in stats], axis=1)[..., None]  # (N, C, 1)
    tp = np.stack([s[1] for s in stats], axis=1)[..., None]
    if params.at_least_one:
        cutoffs = np.array([[u8_cutoff(rule.threshold)] for rule in params.rules])
        force_one(hist, pred, tp, cutoffs)
    return pred[..., 0], tp[..., 0]


def evaluate(hist: Histograms, params: PostprocessParams, metric: str, empty_score: float = 1.0,
             components: ComponentCache | None = None) -> float:
    """The exact competition score of `params` on the histogrammed OOF."""
    pred, tp = params_stats(hist, params, components)
    return float(mean_score(metric, pred, tp, hist.true_area, empty_score))


def class_scores(hist: Histograms, params: PostprocessParams, empty_score: float = 1.0,
                 components: ComponentCache | None = None) -> np.ndarray:
    """`(C,)` mean Dice of each class over the images (the `dice_pairs` breakdown)."""
    pred, tp = params_stats(hist, params, components)
    return item_scores("dice_pairs", pred, tp, hist.true_area, empty_score).mean(axis=0)


# ----------------------------------------------------------------------------------- grid search
def separable(metric: str, params: PostprocessParams) -> bool:
    """Whether the score is a sum of per-class terms, so that classes can be tuned one by one exactly."""
    return metric == "dice_pairs" and not params.at_least_one


def class_table(hist: Histograms, params: PostprocessParams, c: int, thresholds: Sequence[float],
                min_areas: Sequence[int], metric: str, empty_score: float = 1.0,
                components: ComponentCache | None = None) -> np.ndarray:
    """Score of every (threshold, total minimum area) of class `c`, the other classes held at `params`.

    Class `c` keeps its gates (classifier, triplet). When the score separates by class the table is
    class `c`'s mean Dice; otherwise it is the overall score.

    Returns:
        `(len(thresholds), len(min_areas))` scores.
    """
    rule = params.rules[c]
    cutoffs = np.array([u8_cutoff(t) for t in thresholds])
    keep = gate(hist, c, rule)[:, None]  # (N, 1)
    pred_c, tp_c = hist.above[:, c, cutoffs], hist.tp_above[:, c, cutoffs]  # (N, K)
    table = np.zeros((len(cutoffs), len(min_areas)))
    if separable(metric, params):
        true = hist.true_area[:, c, None]
        for j, area in enumerate(min_areas):
            on = keep & (pred_c >= area)
            table[:, j] = _dice(np.where(on, tp_c, 0), np.where(on, pred_c, 0), true, empty_score).mean(axis=0)
        return table
    base_pred, base_tp = (s[..., None] for s in params_stats(hist, replace(params, at_least_one=False), components))
    all_cutoffs = np.repeat([[u8_cutoff(r.threshold)] for r in params.rules], len(cutoffs), axis=1)  # (C, K)
    all_cutoffs[c] = cutoffs
    for j, area in enumerate(min_areas):
        on = keep & (pred_c >= area)
        pred = np.repeat(base_pred, len(cutoffs), axis=2)  # (N, C, K)
        tp = np.repeat(base_tp, len(cutoffs), axis=2)
        pred[:, c], tp[:, c] = np.where(on, pred_c, 0), np.where(on, tp_c, 0)
        if params.at_least_one:
            force_one(hist, pred, tp, all_cutoffs)
        table[:, j] = mean_score(metric, pred, tp, hist.true_area[..., None], empty_score)
    return table


@dataclass
class GridResult:
    """The outcome of `grid_search`: best rules, their score, and each class's last score table."""

    params: PostprocessParams
    score: float
    tables: list[np.ndarray]
    thresholds: list[float]
    min_areas: list[int]
    method: str


def pick_cell(table: np.ndarray, thresholds: Sequence[float], anchor: float, tolerance: float = 0.0) -> tuple[int, int]:
    """The cell `(threshold index, area index)` chosen from a class's grid of scores.

    Every cell within `tolerance` of the best score counts as tied (exact ties always do); among them the
    threshold nearest `anchor` (the starting rule's) wins, then the smaller area. A flat stretch of the
    curve says nothing about where in it the test's best threshold lies, so the choice stays near the
    prior instead of running to the end of the grid.
    """
    tied = np.argwhere(table >= table.max() - tolerance - 1e-12)
    distance = np.abs(np.asarray(thresholds, dtype=np.float64)[tied[:, 0]] - anchor)
    best = np.lexsort((tied[:, 1], np.round(distance, 9)))[0]
    return int(tied[best, 0]), int(tied[best, 1])


def grid_search(hist: Histograms, params: PostprocessParams, metric: str, thresholds: Sequence[float],
                min_areas: Sequence[int], empty_score: float = 1.0, rounds: int = 3,
                components: ComponentCache | None = None, tolerance: float = 0.0) -> GridResult:
    """Best threshold and total minimum area per class over a grid, exactly, from the histograms.

    Under `dice_pairs` without `at_least_one` each class is tuned alone (exact joint optimum).
    Otherwise the classes are tuned coordinate-wise: one class at a time with the others held, for up
    to `rounds` passes until a pass changes nothing (a local optimum of the grid).
    Cells within `tolerance` (of the overall score) of a class's best count as tied; ties go to the
    threshold nearest the starting rule's, then the lower area (`pick_cell`).
    """
    thresholds, min_areas = [float(t) for t in thresholds], [int(a) for a in min_areas]
    exact = separable(metric, params)
    anchors = [rule.threshold for rule in params.rules]
    # `tolerance` is in units of the overall score; a separable table holds one class's mean, C times finer
    cell_tolerance = tolerance * len(params.rules) if exact else tolerance
    tables: list[np.ndarray] = [np.zeros((len(thresholds), len(min_areas)))] * len(params.rules)
    current = evaluate(hist, params, metric, empty_score, components)
    for _ in range(1 if exact else rounds):
        changed = False
        for c, rule in enumerate(params.rules):
            tables[c] = class_table(hist, params, c, thresholds, min_areas, metric, empty_score, components)
            i, j = pick_cell(tables[c], thresholds, anchors[c], cell_tolerance)
            candidate = replace(rule, threshold=thresholds[i], min_area=min_areas[j], area_mode="total")
            if candidate == rule:
                continue
            if exact:
                params = params.with_rule(c, candidate)
                changed = True
                continue
            if tables[c][i, j] > current + tolerance + 1e-12:
                params, current, changed = params.with_rule(c, candidate), float(tables[c][i, j]), True
        if not changed:
            break
    method = ("exact: dice_pairs separates by class, each class tuned alone" if exact else
              f"coordinate-wise: {metric}{' with at_least_one' if params.at_least_one else ''} does not separate "
              "by class, so each class was tuned with the others held (a local optimum)")
    score = evaluate(hist, params, metric, empty_score, components)
    return GridResult(params, score, tables, thresholds, min_areas, method)
