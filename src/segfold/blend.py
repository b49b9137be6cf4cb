"""Blend the probability stores of several experiments: mean, weighted, geometric, rank, power (RMS), vote.

Members must hold the same images (in any order) and the same classes at the same resolution.
Probabilities are blended as floats (`u / 255`) and quantised once when written; the geometric mean
floors each probability at half a quantisation step so that a 0 does not veto the others. Weights
are searched with Optuna (TPE, seeded) on a sub-sample of the OOF: each trial blends the sample,
histograms it and scores the best grid rules (`segfold.postprocess.histograms.grid_search`), so members
are weighed by what they add once thresholds are tuned.

More modes: `rank` averages each member's mid-rank of every value among its own OOF values of the
class (a (C, 256) table per member from its OOF, applied to its OOF, test and holdout alike, so the
thresholds tuned on the OOF blend mean the same on the test blend); `power` is the weighted
root-mean-square; `vote` is the weighted share of members whose probability exceeds 0.5, so a
threshold t on it keeps a pixel when at least `floor(t * n) + 1` of n equal-weight members say so (the
threshold search chooses that k on the OOF). `auto` compares every mode on the OOF sample (weights
searched for `weighted`, equal for the rest) and keeps the best.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from segfold.config.load import config_to_dict, save_config, validate_config
from segfold.errors import DataError
from segfold.io import write_json_atomic
from segfold.postprocess.components import ComponentCache
from segfold.postprocess.histograms import PIXEL_BUDGET, collect_histograms, evaluate, grid_search
from segfold.postprocess.rules import PostprocessParams
from segfold.postprocess.tune import default_min_areas, resolve_metric, tune_thresholds
from segfold.probs import (
    HOLDOUT_NAME,
    SCALE,
    TEST_NAME,
    PackedTruth,
    ProbStore,
    StoreView,
    TruthFn,
    expected_folds,
    make_truth_reader,
    new_record,
    open_holdout,
    open_oof,
    open_test,
    to_uint8,
)

logger = logging.getLogger(__name__)

METHODS = ("mean", "weighted", "geometric", "rank", "power", "vote")
AUTO = "auto"
_FLOOR = 0.5 / SCALE


def align(members: dict[str, StoreView], kind: str = "OOF") -> list[np.ndarray]:
    """Rows of each member in the order of the first member's images.

    Raises:
        DataError: classes, resolution or image ids differ; the message names the member and the difference.
    """
    names = list(members)
    ref_name, ref = names[0], members[names[0]]
    rows = []
    for name in names:
        member = members[name]
        where = f"{kind} of member '{name}' ({member.label})"
        if member.classes != ref.classes:
            raise DataError(f"{where}: classes {member.classes} differ from '{ref_name}': {ref.classes}")
        if member.shape[2:] != ref.shape[2:]:
            raise DataError(f"{where}: masks of {tuple(member.shape[2:])}, '{ref_name}' has {tuple(ref.shape[2:])}; "
                            "write every member at the same resolution")
        index = member.row_index()
        missing = [i for i in ref.image_ids if i not in index]
        extra = sorted(set(member.image_ids) - set(ref.image_ids))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} images of '{ref_name}' (e.g. {', '.join(missing[:3])})")
            if extra:
                parts.append(f"has {len(extra)} images '{ref_name}' lacks (e.g. {', '.join(extra[:3])})")
            raise DataError(f"{where} " + " and ".join(parts) + "; blend experiments with the same folds / images")
        rows.append(np.array([index[i] for i in ref.image_ids], dtype=np.int64))
    return rows


def normalise(weights: Sequence[float]) -> np.ndarray:
    """Weights scaled to sum to 1 (all zero: equal weights)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or (w < 0).any():
        raise ValueError(f"blend weights must be non-negative numbers, got {list(weights)}")
    return np.full(len(w), 1.0 / len(w)) if w.sum() <= 0 else w / w.sum()


def rank_table(source: Any) -> np.ndarray:
    """`(C, 256)`: per class, the mid-rank of each uint8 value among all the store's values of that class.

    The share of values below it plus half the share equal to it, in [0, 1].
    """
    num, classes, height, width = source.shape
    counts = np.zeros((classes, 256), dtype=np.int64)
    step = max(1, PIXEL_BUDGET // (classes * height * width))
    for start in range(0, num, step):
        probs = source.read_u8(np.arange(start, min(num, start + step)))
        for c in range(classes):
            counts[c] += np.bincount(probs[:, c].ravel(), minlength=256)
    total = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    below = np.cumsum(counts, axis=1) - counts
    return ((below + counts / 2) / total).astype(np.float32)


def _ranked(probs: np.ndarray, table: np.ndarray, channel: int | None) -> np.ndarray:
    """uint8 probabilities `(n, C, H, W)` (or `(n, H, W)` of `channel`) mapped through a `(C, 256)` rank table."""
    if probs.dtype != np.uint8:
        raise ValueError("rank blending reads uint8 probabilities (the stores' own values)")
    if channel is not None:
        return table[channel][probs]
    return table[np.arange(table.shape[0])[None, :, None, None], probs]


def blend_probs(probs: Sequence[np.ndarray], weights: Sequence[float], method: str,
                tables: Sequence[np.ndarray] | None = None, channel: int | None = None) -> np.ndarray:
    """Blend members' probabilities (uint8 `round(255 p)` or floats) into float32 probabilities.

    Args:
        probs: one array per member, same shape (`(n, C, H, W)`, or `(n, H, W)` of one `channel`).
        weights: one per member (normalised here); `mean` ignores them.
        method: `mean`, `weighted` (arithmetic), `geometric` (weights are exponents), `rank` (weighted mean
            of the members' ranks, from `tables`), `power` (weighted root-mean-square) or `vote` (weighted
            share of members with p > 0.5).
        tables: `rank` only: one `rank_table` per member.
        channel: the class `probs` hold when they hold one (for the rank tables).
    """
    if method not in METHODS:
        raise ValueError(f"unknown blend method {method!r}; expected one of {', '.join(METHODS)}")
    w = normalise(np.ones(len(probs)) if method == "mean" else weights)
    if method == "rank":
        if tables is None or len(tables) != len(probs):
            raise ValueError("rank blending needs one rank table per member (rank_table of its OOF)")
        ranks = [_ranked(p, t, channel) for p, t in zip(probs, tables, strict=True)]
        return sum(np.float32(wi) * r for wi, r in zip(w, ranks, strict=True)).astype(np.float32)
    floats = [p.astype(np.float32) / SCALE if p.dtype == np.uint8 else p.astype(np.float32) for p in probs]
    if method == "power":
        return np.sqrt(sum(np.float32(wi) * p * p for wi, p in zip(w, floats, strict=True))).astype(np.float32)
    if method == "vote":
        return sum(np.float32(wi) * (p > 0.5) for wi, p in zip(w, floats, strict=True)).astype(np.float32)
    if method == "geometric":
        log = sum(np.float32(wi) * np.log(np.maximum(p, np.float32(_FLOOR))) for wi, p in zip(w, floats, strict=True))
        return np.exp(log).astype(np.float32)
    return sum(np.float32(wi) * p for wi, p in zip(w, floats, strict=True)).astype(np.float32)


class BlendView:
    """A blend computed on read, with the `StoreView` interface (`read_u8`, `shape`, `image_ids`, `cls`)."""

    def __init__(self, members: Sequence[StoreView], rows: Sequence[np.ndarray], weights: Sequence[float],
                 method: str, tables: Sequence[np.ndarray] | None = None) -> None:
        self.members, self.rows, self.weights, self.method = list(members), list(rows), list(weights), method
        self.tables = tables
        ref = self.members[0]
        self.image_ids, self.classes, self.shape = ref.image_ids, ref.classes, ref.shape
        self.label = "blend of " + ", ".join(m.label for m in self.members)
        if all(m.cls is not None for m in self.members):
            cls = [m.cls[r] for m, r in zip(self.members, self.rows, strict=True)]
            # NOTE class probabilities are averaged (rank / vote apply to the pixel maps only)
            cls_method = method if method in ("mean", "weighted", "geometric", "power") else "weighted"
            self.cls: np.ndarray | None = np.clip(blend_probs(cls, self.weights, cls_method), 0, 1)
        else:
            self.cls = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def blend(self, rows: np.ndarray, channel: int | None = None) -> np.ndarray:
        """Float32 blended probabilities of `rows` (the first member's row order)."""
        rows = np.asarray(rows, dtype=np.int64)
        parts = [m.read_u8(r[rows], channel) for m, r in zip(self.members, self.rows, strict=True)]
        return blend_probs(parts, self.weights, self.method, self.tables, channel)

    def read_u8(self, rows: Sequence[int] | np.ndarray, channel: int | None = None) -> np.ndarray:
        return to_uint8(self.blend(np.asarray(rows), channel))

    def row_index(self) -> dict[str, int]:
        return {image_id: row for row, image_id in enumerate(self.image_ids)}


def write_blend(view: BlendView, folder: str | Path, name: str, provenance: dict | None = None) -> ProbStore:
    """Write a blend as a probability store `folder/name.*` (class probabilities blended too when all have them).

    `provenance` (default: a `blend` record of the member stores) goes into the store's header.
    """
    num, classes, height, width = view.shape
    if provenance is None:
        provenance = new_record("blend", None, inputs=[e for m in view.members for e in m.input_entries()],
                                method=view.method, weights=[float(w) for w in view.weights])
    store = ProbStore.create(folder, name, view.image_ids, view.classes, height, width, provenance=provenance)
    try:
        step = max(1, PIXEL_BUDGET // (classes * height * width))
        for start in range(0, num, step):
            rows = np.arange(start, min(num, start + step))
            store.write(rows, view.blend(rows))
        if view.cls is not None:
            store.write_cls(np.arange(num), view.cls)
        return store.finalize()
    except BaseException:
        store.abort()
        raise


def search_weights(members: Sequence[StoreView], rows: Sequence[np.ndarray], truth_fn: TruthFn,
                   params: PostprocessParams, metric: str, empty_score: float, thresholds: Sequence[float],
                   min_areas: Sequence[int], method: str = "weighted", trials: int = 30, seed: int = 0,
                   max_images: int = 500, tables: Sequence[np.ndarray] | None = None
                   ) -> tuple[np.ndarray, float, optuna.Study]:
    """Blend weights that maximise the grid-tuned OOF score, by TPE over a seeded image sample.

    Each trial draws one weight in [0, 1] per member (normalised to sum 1), blends the sample,
    histograms it and scores the best grid rules; equal weights are the first trial.

    Returns:
        The best normalised weights, their score on the sample, and the study.
    """
    score = sample_scorer(members, rows, truth_fn, params, metric, empty_score, thresholds, min_areas, method,
                          seed, max_images, tables)

    def objective(trial: optuna.Trial) -> float:
        raw = [trial.suggest_float(f"w{k}", 0.0, 1.0) for k in range(len(members))]
        return score(normalise(raw))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({f"w{k}": 1.0 for k in range(len(members))})
    study.optimize(objective, n_trials=trials, n_jobs=1, show_progress_bar=False)
    best = normalise([study.best_trial.params[f"w{k}"] for k in range(len(members))])
    return best, float(study.best_value), study


def sample_scorer(members: Sequence[StoreView], rows: Sequence[np.ndarray], truth_fn: TruthFn,
                  params: PostprocessParams, metric: str, empty_score: float, thresholds: Sequence[float],
                  min_areas: Sequence[int], method: str, seed: int = 0, max_images: int = 500,
                  tables: Sequence[np.ndarray] | None = None) -> Any:
    """`weights -> grid-tuned score` of the `method` blend on a seeded sample of at most `max_images` OOF images."""
    num = len(members[0])
    sample = np.arange(num) if num <= max_images else \
        np.sort(np.random.default_rng(seed).choice(num, max_images, replace=False))
    truth_fn = PackedTruth(truth_fn, [members[0].image_ids[i] for i in sample])

    def score(weights: np.ndarray) -> float:
        hist = collect_histograms(BlendView(members, rows, weights, method, tables), truth_fn,
                                  params.one_class_per_pixel, rows=sample)
        return grid_search(hist, params, metric, thresholds, min_areas, empty_score, rounds=1).score

    return score


def score_table(sources: dict[str, Any], truth_fn: TruthFn, params: PostprocessParams,
                metric: str, empty_score: float, thresholds: Sequence[float],
                min_areas: Sequence[int]) -> list[dict[str, Any]]:
    """Per source: its OOF score with `params` and with grid-tuned rules (exact, whole OOF)."""
    table = []
    for name, source in sources.items():
        hist = collect_histograms(source, truth_fn, params.one_class_per_pixel)
        components = ComponentCache(source, truth_fn, None, params.one_class_per_pixel, hist)
        grid = grid_search(hist, params.total_area(), metric, thresholds, min_areas, empty_score)
        table.append({"name": name, "config_rules": evaluate(hist, params, metric, empty_score, components),
                      "grid_tuned": grid.score})
    return table


def format_table(table: list[dict[str, Any]], metric: str) -> str:
    """The score table as aligned text."""
    width = max(len("member"), *(len(row["name"]) for row in table))
    lines = [f"{'member':<{width}}  {metric + ' (config rules)':>26}  {metric + ' (grid-tuned)':>24}"]
    lines += [f"{row['name']:<{width}}  {row['config_rules']:>26.5f}  {row['grid_tuned']:>24.5f}" for row in table]
    return "\n".join(lines)


def _open_tests(configs: dict[str, Any], allow_stale: bool = False, split: str = TEST_NAME
                ) -> dict[str, StoreView] | None:
    """Every member's test (or holdout) store, None when no member has one (DataError when only some do)."""
    opener = open_test if split == TEST_NAME else open_holdout
    found, missing = {}, []
    for name, cfg in configs.items():
        try:
            found[name] = opener(cfg.experiment.output_dir, allow_stale=allow_stale)
        except DataError:
            missing.append(f"'{name}' ({Path(cfg.experiment.output_dir) / split})")
    if found and missing:
        flag = "" if split == TEST_NAME else f" --split {split}"
        raise DataError(f"{split} probabilities missing for {', '.join(missing)} but present for "
                        f"{', '.join(repr(n) for n in found)}: run scripts/predict.py{flag} for every member")
    return found or None


def run_blend(configs: Sequence[Any], name: str, method: str = "weighted", weights: Sequence[float] | None = None,
              trials: int = 30, max_images: int = 500, base: Any | None = None,
              truth_fn: TruthFn | None = None, tune: bool = True, allow_stale: bool = False) -> dict[str, Any]:
    """Blend experiments' OOF (and test) stores into `outputs/<name>/`, then tune thresholds on the blend.

    Args:
        configs: the members' configs (their `outputs/<exp>/` hold the stores).
        name: the blend's experiment name.
        method: one of `METHODS`, or `auto` (every mode compared on the OOF sample, the best kept).
        weights: one per member; None searches them for `weighted` and uses equal weights otherwise.
        trials: Optuna trials of the weight search.
        max_images: OOF images each weight trial scores (seeded sample).
        base: the blend's settings (data, postprocess, ...); default the first member's config.
        truth_fn: `image_id -> (C, H, W)` true masks (default: the training annotations).
        tune: run `tune_thresholds` on the blended OOF.
        allow_stale: warn instead of failing when a member's OOF or test store no longer matches its
            checkpoints (`segfold.probs.provenance`).

    Returns:
        `weights`, `table` (each member's and the blend's OOF scores), `output_dir`, and `tuning` when tuned.
    """
    members = {cfg.experiment.name: cfg for cfg in configs}
    if len(members) != len(configs) or len(configs) < 2:
        raise DataError(f"blend needs at least two experiments with distinct names, got "
                        f"{[cfg.experiment.name for cfg in configs]}")
    if name in members:
        raise DataError(f"the blend's name '{name}' is one of its members; pick another --out")
    data = config_to_dict(base if base is not None else configs[0])
    data["experiment"]["name"] = name
    cfg = validate_config(data, source=f"blend '{name}'")
    out_dir = Path(cfg.experiment.output_dir)

    oof = {n: open_oof(c.experiment.output_dir, allow_stale=allow_stale, expected_folds=expected_folds(c)[0])
           for n, c in members.items()}
    rows = align(oof, "OOF")
    tests = _open_tests(members, allow_stale)
    test_rows = align(tests, "test") if tests is not None else None
    holdouts = _open_tests(members, allow_stale, HOLDOUT_NAME)
    holdout_rows = align(holdouts, "holdout") if holdouts is not None else None
    ref = next(iter(oof.values()))
    if tests is not None and next(iter(tests.values())).classes != ref.classes:
        raise DataError(f"the test stores' classes differ from the OOF's {ref.classes}")
    _, _, height, width = ref.shape
    truth_fn = truth_fn if truth_fn is not None else make_truth_reader(cfg.data, ref.classes, height, width)
    metric, empty = resolve_metric(cfg)
    params = PostprocessParams.from_config(cfg.postprocess, ref.classes).total_area()
    thresholds = cfg.postprocess.tune.thresholds
    min_areas = cfg.postprocess.tune.min_areas or default_min_areas(height, width)

    if method != AUTO and method not in METHODS:
        raise DataError(f"unknown blend method {method!r}; expected {AUTO} or one of {', '.join(METHODS)}")
    tables = [rank_table(view) for view in oof.values()] if method in ("rank", AUTO) else None
    search, modes = None, None
    seed = cfg.experiment.seed
    if weights is not None and len(weights) != len(members):
        raise DataError(f"{len(weights)} weights for {len(members)} members ({', '.join(members)})")
    if method == AUTO:  # every mode on the same OOF sample; the best one is used
        modes = {}
        for mode in METHODS:
            if mode == "weighted" and weights is None:
                w, value, _ = search_weights(list(oof.values()), rows, truth_fn, params, metric, empty, thresholds,
                                             min_areas, mode, trials, seed, max_images, tables)
            else:
                w = normalise(weights if weights is not None and mode != "mean" else np.ones(len(members)))
                value = sample_scorer(list(oof.values()), rows, truth_fn, params, metric, empty, thresholds,
                                      min_areas, mode, seed, max_images, tables)(w)
            modes[mode] = {"score": value, "weights": w.tolist()}
            logger.info("  %-9s OOF sample score %.5f", mode, value)
        method = max(modes, key=lambda m: modes[m]["score"])
        w = np.asarray(modes[method]["weights"])
        logger.info("blend mode chosen on the OOF: %s", method)
    elif weights is not None:
        w = normalise(weights)
    elif method == "weighted":
        logger.info("searching blend weights: %d trials on up to %d OOF images", trials, max_images)
        w, value, _ = search_weights(list(oof.values()), rows, truth_fn, params, metric, empty, thresholds,
                                     min_areas, method, trials, seed, max_images, tables)
        search = {"trials": trials, "images": min(max_images, len(ref)), "sample_score": value}
    else:
        w = normalise(np.ones(len(members)))
    logger.info("weights: %s (%s)", ", ".join(f"{n}={x:.3f}" for n, x in zip(members, w, strict=True)), method)

    blended = write_blend(BlendView(list(oof.values()), rows, w, method, tables), out_dir / "oof", "oof")
    if tests is not None and test_rows is not None:
        write_blend(BlendView(list(tests.values()), test_rows, w, method, tables), out_dir / TEST_NAME, TEST_NAME)
    else:
        logger.info("no member has test probabilities (scripts/predict.py); blended the OOF only")
    if holdouts is not None and holdout_rows is not None:  # scored by tune_thresholds below
        write_blend(BlendView(list(holdouts.values()), holdout_rows, w, method, tables), out_dir / HOLDOUT_NAME,
                    HOLDOUT_NAME)
    save_config(cfg, out_dir / "config.yaml")
    blend_source = StoreView([blended], str(out_dir / "oof"))
    table = score_table({**oof, name: blend_source}, truth_fn, params, metric, empty, thresholds, min_areas)
    logger.info(format_table(table, metric))
    write_json_atomic(out_dir / "blend.json", {
        "members": {n: str(c.experiment.output_dir) for n, c in members.items()}, "method": method,
        "weights": dict(zip(members, w.tolist(), strict=True)), "search": search, "modes": modes, "scores": table,
        "test": tests is not None, "holdout": holdouts is not None})
    result: dict[str, Any] = {"weights": w, "table": table, "output_dir": out_dir, "config": cfg, "method": method,
                              "modes": modes}
    if tune:
        result["tuning"] = tune_thresholds(cfg, source=blend_source, truth_fn=truth_fn)
    logger.info("next: python scripts/make_submission.py --config %s", out_dir / "config.yaml")
    return result
