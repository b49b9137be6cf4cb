"""Optuna (TPE, seeded) search of the rules a grid cannot cover, scored exactly on the OOF.

Per class, one study searches the threshold, the minimum area counted over the whole mask or per
connected component, the triplet rule (`top`, `min_count`; its bottom is the threshold) and, when
the OOF has class probabilities, the classifier gate. The other classes are held at their current
rules, so the search is coordinate-wise. Each trial is scored exactly from the histograms (and the
component cache); the grid's best rule is the first trial, so a study never ends below it. On a
large OOF the trials are scored on a seeded sub-sample of images (`postprocess.tune.max_images`)
and a rule is only kept when it also wins on the whole OOF (see `segfold.postprocess.tune`).
"""

from __future__ import annotations

from dataclasses import replace

import optuna

from segfold.postprocess.components import ComponentCache
from segfold.postprocess.histograms import Histograms, evaluate
from segfold.postprocess.rules import ClassRules, PostprocessParams

_STEP = 0.01


def _on_grid(value: float, low: float, high: float) -> bool:
    return low - 1e-9 <= value <= high + 1e-9 and abs(value / _STEP - round(value / _STEP)) < 1e-6


def suggest_rule(trial: optuna.Trial, max_area: int, max_count: int, components: bool, gate: bool) -> ClassRules:
    """One class's rules drawn from the search space (min_area 1 means no minimum and is stored as 0)."""
    threshold = round(trial.suggest_float("threshold", 0.01, 0.99, step=_STEP), 4)
    area_mode = trial.suggest_categorical("area_mode", ["total", "component"]) if components else "total"
    min_area = trial.suggest_int("min_area", 1, max(2, max_area), log=True)
    top, min_count = None, 0
    if trial.suggest_categorical("triplet", [False, True]):
        top = round(trial.suggest_float("top", 0.05, 0.99, step=_STEP), 4)
        min_count = trial.suggest_int("min_count", 1, max(2, max_count), log=True)
    cls_threshold, power = None, None
    if gate and trial.suggest_categorical("gate", [False, True]):
        cls_threshold = round(trial.suggest_float("cls_threshold", 0.01, 0.99, step=_STEP), 4)
    elif gate and area_mode == "total" and trial.suggest_categorical("soft_gate", [False, True]):
        # the soft gate: min_area * (2 (1 - p_cls)) ** power
        power = round(trial.suggest_float("cls_area_power", 0.25, 4.0, log=True), 4)
    return ClassRules(threshold=threshold, min_area=0 if min_area <= 1 else min_area, area_mode=area_mode,
                      top=top, min_count=min_count, cls_threshold=cls_threshold, cls_area_power=power)


def _trial_params(rule: ClassRules, max_area: int, max_count: int, components: bool,
                  gate: bool) -> dict[str, object] | None:
    """`rule` as the parameters of a trial to enqueue, or None when it lies outside the space."""
    params: dict[str, object] = {"threshold": rule.threshold, "min_area": max(1, rule.min_area),
                                 "triplet": rule.top is not None}
    if not _on_grid(rule.threshold, 0.01, 0.99) or rule.min_area > max(2, max_area):
        return None
    if components:
        params["area_mode"] = rule.area_mode
    elif rule.area_mode != "total":
        return None
    if rule.top is not None:
        if not _on_grid(rule.top, 0.05, 0.99) or not 1 <= rule.min_count <= max(2, max_count):
            return None
        params.update(top=rule.top, min_count=rule.min_count)
    if rule.cls_threshold is not None and not (gate and _on_grid(rule.cls_threshold, 0.01, 0.99)):
        return None
    if rule.cls_area_power is not None and not (gate and 0.25 - 1e-9 <= rule.cls_area_power <= 4.0 + 1e-9):
        return None
    if gate:
        params["gate"] = rule.cls_threshold is not None
        if rule.cls_threshold is not None:
            params["cls_threshold"] = rule.cls_threshold
        elif rule.area_mode == "total":
            params["soft_gate"] = rule.cls_area_power is not None
            if rule.cls_area_power is not None:
                params["cls_area_power"] = rule.cls_area_power
    return params


def refine_class(hist: Histograms, params: PostprocessParams, c: int, metric: str, empty_score: float,
                 trials: int, seed: int, max_area: int, max_count: int | None = None,
                 components: ComponentCache | None = None) -> tuple[ClassRules, float, optuna.Study]:
    """Search class `c`'s rules with TPE; the other classes stay at `params`.

    Args:
        hist: histograms of the images scored (a sub-sample of the OOF, or all of it).
        params: the current rules of every class (class `c`'s is the first trial).
        c: the class searched.
        metric: `dice_pairs`, `dice_image` or `tgs_iou`.
        empty_score: Dice of empty on empty.
        trials: TPE trials (the first is the current rule).
        seed: sampler seed; the same seed and inputs give the same result.
        max_area: upper bound of the minimum areas tried (log-uniform from 1).
        max_count: upper bound of the triplet's `min_count` (default `max_area`).
        components: component cache of the same images; None leaves per-component areas out.

    Returns:
        The best rule, its score on `hist`, and the study.
    """
    max_count = max_area if max_count is None else max_count
    use_gate = hist.cls is not None
    use_components = components is not None

    def objective(trial: optuna.Trial) -> float:
        rule = suggest_rule(trial, max_area, max_count, use_components, use_gate)
        return evaluate(hist, params.with_rule(c, rule), metric, empty_score, components)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, trials // 3)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    start = _trial_params(params.rules[c], max_area, max_count, use_components, use_gate)
    if start is not None:
        study.enqueue_trial(start)
    study.optimize(objective, n_trials=trials, n_jobs=1, show_progress_bar=False)
    best = _rule_from(study.best_trial.params)
    return best, float(study.best_value), study


def _rule_from(values: dict[str, object]) -> ClassRules:
    """The `ClassRules` of a finished trial's parameters."""
    min_area = int(values["min_area"])
    rule = ClassRules(threshold=round(float(values["threshold"]), 4), min_area=0 if min_area <= 1 else min_area,
                      area_mode=str(values.get("area_mode", "total")))
    if values.get("triplet"):
        rule = replace(rule, top=round(float(values["top"]), 4), min_count=int(values["min_count"]))
    if values.get("gate"):
        rule = replace(rule, cls_threshold=round(float(values["cls_threshold"]), 4))
    elif values.get("soft_gate"):
        rule = replace(rule, cls_area_power=round(float(values["cls_area_power"]), 4))
    return rule
