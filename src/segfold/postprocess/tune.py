"""Threshold search on the OOF: `tune_thresholds(cfg)` writes `outputs/<exp>/thresholds.json`.

1. One read of the OOF makes per-image histograms (`segfold.postprocess.histograms`).
2. Exact grid of thresholds x total minimum areas per class (`postprocess.tune.thresholds`,
   `min_areas`): separately per class under `dice_pairs`, coordinate-wise otherwise.
3. Optuna (`segfold.postprocess.optuna_search`) per class for the triplet rule, per-component minimum areas and
   the classifier gate, on a seeded sub-sample of at most `tune.max_images` images; a rule it finds is
   kept only when it also beats the current one on the whole OOF.
4. The OOF score of the config's rules (before) and of the tuned ones (after), both exact, go into
   `thresholds.json` with the rules; `threshold_curves.png` plots score against threshold per class.
5. With a holdout store (`outputs/<exp>/holdout/`, `scripts/predict.py --split holdout`), both rules
   are scored on the holdout images too, which the search never saw: the gap between the OOF gain
   and the holdout gain shows how much the search over-fitted. The scores go to `outputs/runs.csv`.
6. With `postprocess.tune.cross_fold` (`--cross-fold`), steps 2-4 run again on each fold's complement and
   the rules found are scored on the fold (`cross_fold_scores`): the same check without a holdout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from segfold.data.folds import folds_path, load_folds
from segfold.errors import DataError
from segfold.io import atomic_path
from segfold.postprocess.components import ComponentCache
from segfold.postprocess.histograms import (
    GridResult,
    Histograms,
    PhaseTimer,
    class_scores,
    collect_histograms,
    evaluate,
    grid_search,
)
from segfold.postprocess.optuna_search import refine_class
from segfold.postprocess.rules import THRESHOLDS_FILE, PostprocessParams, save_thresholds
from segfold.probs import (
    HOLDOUT_NAME,
    PackedTruth,
    RowsView,
    StoreView,
    TruthFn,
    expected_folds,
    make_truth_reader,
    new_record,
    open_holdout,
    open_oof,
    store_exists,
    tta_label,
    tta_mismatch,
)
from segfold.runs import record_run

logger = logging.getLogger(__name__)


def resolve_metric(cfg: Any) -> tuple[str, float]:
    """The score to maximise and the Dice of empty-on-empty: `postprocess.tune`, else `data`, else defaults."""
    tune = cfg.postprocess.tune
    metric = tune.metric or getattr(cfg.data, "metric", None) or "dice_pairs"
    empty = tune.empty_score if tune.empty_score is not None else getattr(cfg.data, "empty_score", 1.0)
    return str(metric), float(empty)


def default_min_areas(height: int, width: int, count: int = 20) -> list[int]:
    """0 and `count - 1` areas from 1e-4 to 5e-2 of the image, geometrically spaced (pixels, unique)."""
    sizes = np.geomspace(1e-4, 5e-2, count - 1) * height * width
    return sorted({0, *(int(round(s)) for s in sizes if round(s) >= 1)})


def plot_curves(grid: GridResult, classes: list[str], path: str | Path, ylabel: str) -> Path:
    """`threshold_curves.png`: per class, the best score over the minimum areas at each threshold."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # NOTE after choosing the non-interactive backend

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, table, rule in zip(classes, grid.tables, grid.params.rules, strict=True):
        line = ax.plot(grid.thresholds, table.max(axis=1), label=f"{name} (t={rule.threshold:g}, "
                                                                  f"min_area={rule.min_area})")[0]
        ax.axvline(rule.threshold, color=line.get_color(), linestyle=":", linewidth=0.8)
    ax.set_xlabel("probability threshold")
    ax.set_ylabel(ylabel)
    ax.set_title("OOF score against threshold (best minimum area at each)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)


def _refine(hist: Histograms, params: PostprocessParams, metric: str, empty: float, source: StoreView | RowsView,
            truth_fn: TruthFn, cfg: Any, components: ComponentCache, max_area: int,
            log: Any = logger.info) -> tuple[PostprocessParams, dict[str, Any]]:
    """Step 3: Optuna per class on a sub-sample, each winner confirmed on the whole OOF."""
    tune = cfg.postprocess.tune
    num = hist.num_images
    if num > tune.max_images:
        rows = np.sort(np.random.default_rng(cfg.experiment.seed).choice(num, tune.max_images, replace=False))
        sub_hist = hist.subset(rows)
        sub_components = ComponentCache(source, truth_fn, rows, params.one_class_per_pixel, sub_hist, components.timer)
    else:
        rows, sub_hist, sub_components = None, hist, components
    current = evaluate(hist, params, metric, empty, components)
    info: dict[str, Any] = {"trials_per_class": tune.optuna_trials, "seed": cfg.experiment.seed,
                            "images_scored": sub_hist.num_images, "sampled": rows is not None, "kept": []}
    for c, name in enumerate(params.classes):
        rule, sub_score, _ = refine_class(
            sub_hist, params, c, metric, empty, tune.optuna_trials, cfg.experiment.seed + c, max_area,
            components=sub_components if tune.component_search else None)
        sub_current = evaluate(sub_hist, params, metric, empty, sub_components)
        if rule == params.rules[c] or sub_score <= sub_current + tune.tolerance + 1e-12:
            continue
        candidate = params.with_rule(c, rule)
        score = evaluate(hist, candidate, metric, empty, components)
        if score > current + tune.tolerance + 1e-12:
            log("  optuna: %s: %s -> OOF score %.5f (was %.5f)", name, rule, score, current)
            params, current = candidate, score
            info["kept"].append(name)
        else:
            log("  optuna: %s: %s won on the sub-sample but not on the whole OOF; not kept", name, rule)
    return params, info


def holdout_scores(cfg: Any, start: PostprocessParams, params: PostprocessParams, metric: str,
                   empty: float, truth_fn: TruthFn | None = None, allow_stale: bool = False) -> dict[str, Any] | None:
    """The config's and the tuned rules scored on the holdout store (None when there is none)."""
    if not store_exists(Path(cfg.experiment.output_dir) / HOLDOUT_NAME, HOLDOUT_NAME):
        return None
    source = open_holdout(cfg.experiment.output_dir, allow_stale=allow_stale)
    _, _, height, width = source.shape
    truth_fn = truth_fn if truth_fn is not None else make_truth_reader(cfg.data, source.classes, height, width)
    truth_fn = PackedTruth(truth_fn, source.image_ids)
    hist = collect_histograms(source, truth_fn, start.one_class_per_pixel)
    components = ComponentCache(source, truth_fn, None, start.one_class_per_pixel)
    return {"images": len(source), "score_before": evaluate(hist, start, metric, empty, components),
            "score_after": evaluate(hist, params, metric, empty, components)}


def tune_thresholds(cfg: Any, source: StoreView | None = None, truth_fn: TruthFn | None = None,
                    allow_stale: bool = False, timer: PhaseTimer | None = None) -> dict[str, Any]:
    """Search the post-processing rules on the OOF and write `thresholds.json` and `threshold_curves.png`.

    Args:
        cfg: the experiment config (`postprocess` gives the starting rules and `postprocess.tune` the search).
        source: the OOF (default: `open_oof(cfg.experiment.output_dir)`).
        truth_fn: `image_id -> (C, H, W)` true masks at the OOF's resolution (default: the training annotations).
        allow_stale: warn instead of failing when the OOF no longer matches its checkpoints or fold stores.
        timer: adds the seconds of each phase (read, truth, histograms, grid, refinement, components).

    Returns:
        A summary: `params`, `score_before`, `score_after`, `metric`, `method`, `path`, `curves`.
    """
    timer = timer if timer is not None else PhaseTimer()
    out_dir = Path(cfg.experiment.output_dir)
    if source is None:
        source = open_oof(out_dir, allow_stale=allow_stale, expected_folds=expected_folds(cfg)[0])
    num, _, height, width = source.shape
    if num == 0:
        raise DataError(f"the OOF ({source.label}) holds no images; train a fold (scripts/train.py) first")
    given_truth = truth_fn
    truth_fn = truth_fn if truth_fn is not None else make_truth_reader(cfg.data, source.classes, height, width)
    truth_fn = PackedTruth(truth_fn, source.image_ids)  # read once, by the histograms, for the component search
    metric, empty = resolve_metric(cfg)
    tune = cfg.postprocess.tune
    start = PostprocessParams.from_config(cfg.postprocess, source.classes)
    logger.info("tuning post-processing of %d OOF images (%s) for %s", num, source.label, metric)
    mismatch = tta_mismatch(source.tta, tta_label({"tta": cfg.infer.tta, "scales": cfg.infer.scales}))
    if mismatch:
        logger.warning("warning: %s (infer.tta is the test's TTA)", mismatch)

    hist = collect_histograms(source, truth_fn, start.one_class_per_pixel, timer=timer)
    components = ComponentCache(source, truth_fn, None, start.one_class_per_pixel, hist, timer)
    min_areas = tune.min_areas if tune.min_areas is not None else default_min_areas(height, width)
    params, grid, optuna_info, before, after = search_rules(cfg, source, truth_fn, hist, components, start, metric,
                                                            empty, min_areas, timer)

    info: dict[str, Any] = {
        "metric": metric, "empty_score": empty, "score_before": before, "score_after": after,
        "method": grid.method, "images": num, "source": source.label, "optuna": optuna_info,
        "class_dice_before": dict(zip(source.classes, class_scores(hist, start, empty, components).tolist(),
                                      strict=True)),
        "class_dice_after": dict(zip(source.classes, class_scores(hist, params, empty, components).tolist(),
                                     strict=True)),
    }
    holdout = holdout_scores(cfg, start, params, metric, empty, given_truth, allow_stale)
    info["holdout"] = holdout
    cross = None
    if tune.cross_fold:
        with timer("cross_fold"):
            cross = cross_fold_scores(cfg, source, truth_fn, hist, start, params, metric, empty, min_areas, timer)
        info["cross_fold"] = cross
        if not cross["carries_over"]:
            fallback = tune.fallback_to_config
            logger.warning("the tuning does not carry over: on folds the search never saw, the rules tuned on the "
                           "other folds score %.5f and the config's rules %.5f; %s", cross["score"],
                           cross["means"]["config"],
                           f"{THRESHOLDS_FILE} keeps the config's rules (postprocess.tune.fallback_to_config)"
                           if fallback else
                           f"{THRESHOLDS_FILE} still holds the rules tuned on the whole OOF, which make_submission.py "
                           f"applies. To submit with the config's rules, set postprocess.tune.fallback_to_config: "
                           f"true (or move {THRESHOLDS_FILE} aside); or raise postprocess.tune.tolerance")
            if fallback:
                info["rejected"] = {"rules": params.describe().splitlines(), "score_after": after,
                                    "class_dice_after": info["class_dice_after"]}
                params, after = start, before
                info.update(score_after=before, class_dice_after=info["class_dice_before"])
    if holdout is not None:
        logger.info("holdout (%d images the search never saw): %.5f (config) -> %.5f (tuned); gain %+.5f on the "
                    "holdout vs %+.5f on the OOF", holdout["images"], holdout["score_before"],
                    holdout["score_after"], holdout["score_after"] - holdout["score_before"], after - before)
    record_run(cfg.experiment.output_root, cfg.experiment.name, oof_before=before, oof_after=after,
               holdout=holdout["score_after"] if holdout is not None else None)
    record = new_record("tune_thresholds", cfg, inputs=source.input_entries(), folds=source.folds,
                        oof_tta=source.tta)
    path = save_thresholds(out_dir / THRESHOLDS_FILE, params, provenance=record, **info)
    ylabel = "class mean Dice" if grid.method.startswith("exact") else f"{metric} (others held)"
    curves = plot_curves(grid, source.classes, out_dir / "threshold_curves.png", ylabel)
    logger.info(params.describe())
    if "rejected" in info:
        logger.info("OOF %s: %.5f (config, kept) - the tuned %.5f rejected by the cross-fold check; wrote %s and %s",
                    metric, before, info["rejected"]["score_after"], path, curves)
    else:
        logger.info("OOF %s: %.5f (config) -> %.5f (tuned); wrote %s and %s", metric, before, after, path, curves)
    return {"params": params, "score_before": before, "score_after": after, "metric": metric,
            "method": grid.method, "path": path, "curves": curves, "grid": grid, "holdout": holdout,
            "cross_fold": cross}


def search_rules(cfg: Any, source: StoreView | RowsView, truth_fn: TruthFn, hist: Histograms,
                 components: ComponentCache, start: PostprocessParams, metric: str, empty: float,
                 min_areas: list[int], timer: PhaseTimer | None = None, quiet: bool = False,
                 ) -> tuple[PostprocessParams, GridResult, dict[str, Any] | None, float, float]:
    """Steps 2-4 on the histograms of `source`: the grid, Optuna, and the config's rules kept when they win.

    Returns:
        `(params, grid, optuna_info, score_before, score_after)`.
    """
    timer = timer if timer is not None else PhaseTimer()
    tune = cfg.postprocess.tune
    log = logger.debug if quiet else logger.info
    before = evaluate(hist, start, metric, empty, components)
    log("  config rules: %.5f", before)
    with timer("grid"):
        grid = grid_search(hist, start.total_area(), metric, tune.thresholds, min_areas, empty, tune.rounds,
                           tolerance=tune.tolerance)
    log("  grid (%d thresholds x %d areas, %s): %.5f", len(tune.thresholds), len(min_areas), grid.method, grid.score)
    params, optuna_info = grid.params, None
    if tune.optuna_trials > 0:
        with timer("refinement"):
            params, optuna_info = _refine(hist, params, metric, empty, source, truth_fn, cfg, components,
                                          max(min_areas), log)
    after = evaluate(hist, params, metric, empty, components)
    if after < before + tune.tolerance:
        log("  the config's rules score within postprocess.tune.tolerance of every rule found; keeping them"
            if tune.tolerance else "  the config's rules score higher than every rule found; keeping them")
        params, after = start, before
    return params, grid, optuna_info, before, after


def cross_fold_scores(cfg: Any, source: StoreView, truth_fn: TruthFn, hist: Histograms, start: PostprocessParams,
                      params: PostprocessParams, metric: str, empty: float, min_areas: list[int],
                      timer: PhaseTimer | None = None) -> dict[str, Any]:
    """How much of the tuned OOF score is the search fitting the OOF: per fold, the rules tuned on the other folds.

    Each fold's images are scored with the config's rules, with the rules tuned on the whole OOF (which saw
    them) and with rules searched the same way on the other folds' images only (which did not). The
    image-weighted mean of the last is an honest estimate of the tuned score where no holdout can be set
    aside (e.g. group folds with few groups); the difference to the whole-OOF score is the search's optimism.

    Raises:
        DataError: no `folds.csv` (`load_folds`), OOF images it does not list, or fewer than two folds in the OOF.
    """
    folds_file = folds_path(cfg)
    fold_of = load_folds(cfg, create=False).set_index("ImageId")["fold"].astype(int).to_dict()
    missing = [image_id for image_id in source.image_ids if image_id not in fold_of]
    if missing:
        raise DataError(f"{folds_file}: {len(missing)} OOF image(s) are not listed (first: {missing[0]!r}); "
                        "the OOF and folds.csv belong to different splits: rerun scripts/oof.py")
    fold = np.array([fold_of[image_id] for image_id in source.image_ids])
    present = sorted(set(fold.tolist()))
    if len(present) < 2:
        raise DataError(f"the cross-fold check needs the OOF of at least two folds; {source.label} holds "
                        f"fold(s) {present} only: train and gather more folds, or leave postprocess.tune.cross_fold "
                        "off")
    rows_out: list[dict[str, Any]] = []
    for k in present:
        held, rest = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        part = source.take(rest, f"{source.label} without fold {k}")
        part_hist = hist.subset(rest)
        part_components = ComponentCache(part, truth_fn, None, start.one_class_per_pixel, part_hist, timer)
        rules = search_rules(cfg, part, truth_fn, part_hist, part_components, start, metric, empty, min_areas,
                             timer, quiet=True)[0]
        fold_view = source.take(held)
        fold_hist = hist.subset(held)
        fold_components = ComponentCache(fold_view, truth_fn, None, start.one_class_per_pixel, fold_hist, timer)
        named = (("config", start), ("tuned_all", params), ("tuned_other_folds", rules))
        scores = {name: evaluate(fold_hist, rule_set, metric, empty, fold_components) for name, rule_set in named}
        classes = {name: dict(zip(source.classes, class_scores(fold_hist, rule_set, empty, fold_components).tolist(),
                                  strict=True)) for name, rule_set in named}
        described = rules.describe().splitlines()
        rows_out.append({"fold": k, "images": len(held), **scores, "class_dice": classes,
                         "rules_other_folds": described})
        logger.info("  fold %d (%d images): config %.5f, tuned on the whole OOF %.5f, tuned on the other folds %.5f",
                    k, len(held), scores["config"], scores["tuned_all"], scores["tuned_other_folds"])
        logger.info("    per class (config / whole OOF / other folds): %s", ", ".join(
            f"{c} {classes['config'][c]:.3f}/{classes['tuned_all'][c]:.3f}/{classes['tuned_other_folds'][c]:.3f}"
            for c in source.classes))
        logger.info("    rules tuned on the other folds: %s", "; ".join(described))
    total = sum(r["images"] for r in rows_out)
    summary = {key: sum(r[key] * r["images"] for r in rows_out) / total
               for key in ("config", "tuned_all", "tuned_other_folds")}
    logger.info("cross-fold: %s %.5f with rules tuned on the other folds, %.5f tuned on the whole OOF "
                "(the search's optimism: %+.5f)", metric, summary["tuned_other_folds"], summary["tuned_all"],
                summary["tuned_all"] - summary["tuned_other_folds"])
    carries_over = summary["tuned_other_folds"] > summary["config"]
    return {"score": summary["tuned_other_folds"], "optimism": summary["tuned_all"] - summary["tuned_other_folds"],
            "means": summary, "carries_over": carries_over, "folds": rows_out}
