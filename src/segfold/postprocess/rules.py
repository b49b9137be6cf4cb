"""From probabilities to binary masks, with per-class rules, and the `thresholds.json` that stores them.

Every rule of `PostprocessConfig` (see `segfold.config.infer`) is applied per class, in this order:

1. `one_class_per_pixel`: each pixel keeps the probability of its argmax class only (others read 0;
   ties go to the first class);
2. classifier gate: the class is empty unless its aux-head (or classifier) probability exceeds
   `cls_threshold`;
3. triplet rule (SIIM-ACR, 1st place): the class is empty when fewer than `min_count` pixels exceed
   `top`; otherwise it is binarised at `threshold` (the triplet's "bottom");
4. binarisation: a pixel is positive when its probability exceeds `threshold`;
5. minimum area: `area_mode: total` empties a mask with fewer than `min_area` pixels; `component`
   removes the 8-connected components smaller than `min_area`;
6. `at_least_one` (Clouds): when every class came out empty, the best class (highest classifier
   probability, else highest pixel probability) is binarised at its threshold with no other rule; if
   that is empty too, its pixels at its highest probability are kept.

On uint8 input (`round(p * 255)`, the probability stores) "exceeds t" is `u > floor(255 t)`, which is
`u / 255 > t` in exact arithmetic; `segfold.postprocess.histograms` relies on that.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from segfold.config.base import format_validation_error
from segfold.config.infer import RULE_KEYS, PostprocessConfig
from segfold.errors import ConfigError, DataError
from segfold.io import write_json_atomic
from segfold.probs import changes, entry_folds, input_entry, oof_store_paths, read_record, source_ids, stale

THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class ClassRules:
    """The resolved rules of one class (the meaning of each field is in the module docstring)."""

    threshold: float = 0.5
    min_area: int = 0
    area_mode: str = "total"
    top: float | None = None
    min_count: int = 0
    cls_threshold: float | None = None
    cls_area_power: float | None = None

    def __post_init__(self) -> None:
        if self.cls_area_power is not None and self.area_mode != "total":
            raise ConfigError("cls_area_power (the soft classifier gate) scales the total minimum area; "
                              "use it with area_mode: total")


def soft_min_area(min_area: int | np.ndarray, cls_prob: float | np.ndarray, power: float | None) -> np.ndarray:
    """The soft classifier gate's minimum area: `min_area * (2 * (1 - p_cls)) ** power` (unchanged without power).

    At p_cls = 0.5 the area is `min_area`; a sure class (p_cls -> 1) keeps any area; an unlikely one
    (p_cls -> 0) needs up to `2 ** power` times more.
    """
    if power is None:
        return np.asarray(min_area, dtype=np.float64)
    factor = np.power(2.0 * (1.0 - np.clip(np.asarray(cls_prob, dtype=np.float64), 0.0, 1.0)), power)
    return np.asarray(min_area, dtype=np.float64) * factor


@dataclass(frozen=True)
class PostprocessParams:
    """Post-processing rules resolved for a list of classes: what `apply_postprocess` runs.

    Build one with `PostprocessParams.from_config(cfg.postprocess, classes)` or `load_thresholds`.
    """

    classes: tuple[str, ...]
    rules: tuple[ClassRules, ...]
    at_least_one: bool = False
    one_class_per_pixel: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_config(cls, config: PostprocessConfig, classes: Sequence[str]) -> PostprocessParams:
        """Resolve the defaults and `per_class` overrides of a config section for `classes`.

        Raises:
            ConfigError: a `per_class` key that is not one of `classes`.
        """
        classes = tuple(str(c) for c in classes)
        for name in config.per_class:
            if name not in classes:
                close = difflib.get_close_matches(name, classes, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"postprocess.per_class: unknown class '{name}' (the classes are "
                                  f"{', '.join(classes)}; set by data.classes){hint}")
        defaults = {key: getattr(config, key) for key in RULE_KEYS}
        rules = []
        for name in classes:
            override = config.per_class.get(name)
            values = dict(defaults)
            if override is not None:
                values.update(override.model_dump(exclude_none=True))
            rules.append(ClassRules(**values))
        return cls(classes, tuple(rules), config.at_least_one, config.one_class_per_pixel)

    def to_config(self) -> PostprocessConfig:
        """The same rules as a config section (every class written out under `per_class`)."""
        per_class = {name: asdict(rule) for name, rule in zip(self.classes, self.rules, strict=True)}
        return PostprocessConfig(per_class=per_class, at_least_one=self.at_least_one,
                                 one_class_per_pixel=self.one_class_per_pixel)

    def with_rule(self, index: int, rule: ClassRules) -> PostprocessParams:
        """A copy with the rules of class `index` replaced."""
        rules = list(self.rules)
        rules[index] = rule
        return replace(self, rules=tuple(rules))

    def total_area(self) -> PostprocessParams:
        """A copy whose minimum areas all count the whole mask (what the histogram grid can score)."""
        return replace(self, rules=tuple(replace(rule, area_mode="total") for rule in self.rules))

    def describe(self) -> str:
        """One line per class, for logs."""
        lines = []
        for name, rule in zip(self.classes, self.rules, strict=True):
            parts = [f"threshold={rule.threshold:g}", f"min_area={rule.min_area} ({rule.area_mode})"]
            if rule.top is not None:
                parts.append(f"triplet top={rule.top:g} min_count={rule.min_count}")
            if rule.cls_threshold is not None:
                parts.append(f"cls>{rule.cls_threshold:g}")
            if rule.cls_area_power is not None:
                parts.append(f"min_area x (2(1-p_cls))^{rule.cls_area_power:g}")
            lines.append(f"{name}: " + ", ".join(parts))
        return "\n".join(lines)


def u8_cutoff(threshold: float) -> int:
    """The uint8 value `k` such that `u > k` is `u / 255 > threshold` (for thresholds in [0, 1])."""
    # NOTE: the epsilon absorbs float error in 255 * t (t = k / 255 must give k, not k - 1).
    return int(np.floor(threshold * 255 + 1e-6))


def exceeds(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean map of `probs > threshold`; uint8 probabilities are compared as `u / 255`."""
    if probs.dtype == np.uint8:
        return probs > u8_cutoff(threshold)
    return probs > threshold


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop the 8-connected components of a binary `(H, W)` mask that have fewer than `min_area` pixels."""
    if min_area <= 1 or not mask.any():
        return mask.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels].astype(np.uint8)


def _as_params(params: PostprocessParams | PostprocessConfig, num_classes: int) -> PostprocessParams:
    if isinstance(params, PostprocessParams):
        if len(params.rules) != num_classes:
            raise ValueError(f"post-processing rules for {len(params.rules)} classes ({', '.join(params.classes)}) "
                             f"applied to probabilities with {num_classes} channels")
        return params
    if params.per_class:
        raise ValueError("a PostprocessConfig with per_class overrides needs the class names: pass "
                         "PostprocessParams.from_config(cfg.postprocess, classes)")
    return PostprocessParams.from_config(params, [str(i) for i in range(num_classes)])


def apply_postprocess(probs: np.ndarray, params: PostprocessParams | PostprocessConfig,
                      cls_probs: np.ndarray | None = None) -> np.ndarray:
    """Binary masks of one image from its per-class probabilities.

    Args:
        probs: `(C, H, W)` float probabilities in [0, 1] or uint8 `round(p * 255)`.
        params: resolved rules (a `PostprocessConfig` without `per_class` is accepted too).
        cls_probs: `(C,)` class probabilities of the aux head or a classifier; needed by
            `cls_threshold` and used by `at_least_one` to pick the best class.

    Returns:
        uint8 `(C, H, W)` masks of 0 and 1.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"apply_postprocess expects (C, H, W) probabilities of one image, got shape {probs.shape}")
    params = _as_params(params, probs.shape[0])
    if cls_probs is not None:
        cls_probs = np.asarray(cls_probs, dtype=np.float32).reshape(-1)
        if cls_probs.shape[0] != probs.shape[0]:
            raise ValueError(f"cls_probs has {cls_probs.shape[0]} values for {probs.shape[0]} classes")
    if params.one_class_per_pixel and probs.shape[0] > 1:
        winner = probs.argmax(axis=0)  # (H, W); ties go to the first class
        probs = np.where(np.arange(probs.shape[0])[:, None, None] == winner[None], probs, 0).astype(probs.dtype)
    masks = np.zeros(probs.shape, dtype=np.uint8)
    for c, rule in enumerate(params.rules):
        if rule.cls_threshold is not None:
            if cls_probs is None:
                raise ValueError(f"class '{params.classes[c]}' has cls_threshold={rule.cls_threshold} but no class "
                                 "probabilities were given (the store has no <name>.cls.npy: train with an aux "
                                 "head or set postprocess.cls_threshold to null)")
            if not cls_probs[c] > rule.cls_threshold:
                continue
        if rule.top is not None and int(exceeds(probs[c], rule.top).sum()) < rule.min_count:
            continue
        mask = exceeds(probs[c], rule.threshold)
        min_area: float = rule.min_area
        if rule.cls_area_power is not None:
            if cls_probs is None:
                raise ValueError(f"class '{params.classes[c]}' has cls_area_power={rule.cls_area_power} but no class "
                                 "probabilities were given (train with an aux head or set cls_area_power to null)")
            min_area = float(soft_min_area(rule.min_area, cls_probs[c], rule.cls_area_power))
        if rule.area_mode == "component":
            masks[c] = remove_small_components(mask, rule.min_area)
        elif mask.sum() >= min_area:
            masks[c] = mask
    if params.at_least_one and not masks.any():
        if cls_probs is not None:
            best = int(np.argmax(cls_probs))
        else:
            best = int(np.argmax(probs.reshape(probs.shape[0], -1).max(axis=1)))
        mask = exceeds(probs[best], params.rules[best].threshold)
        if not mask.any():
            mask = probs[best] == probs[best].max()
        masks[best] = mask
    return masks


def apply_postprocess_batch(probs: np.ndarray, params: PostprocessParams | PostprocessConfig,
                            cls_probs: np.ndarray | None = None) -> np.ndarray:
    """`apply_postprocess` over `(N, C, H, W)` probabilities (and `(N, C)` class probabilities)."""
    return np.stack([apply_postprocess(p, params, None if cls_probs is None else cls_probs[i])
                     for i, p in enumerate(probs)]) if len(probs) else np.zeros(np.shape(probs), np.uint8)


# ----------------------------------------------------------------------------------- thresholds.json
def save_thresholds(path: str | os.PathLike, params: PostprocessParams, provenance: dict | None = None,
                    **info: Any) -> Path:
    """Write tuned rules (and facts such as `score_before` / `score_after`) to `thresholds.json` atomically.

    `provenance` (`segfold.probs.provenance.new_record`) names the OOF stores it was tuned on.
    """
    path = Path(path)
    data = {"classes": list(params.classes), **info,
            "postprocess": params.to_config().model_dump(mode="json", exclude={"tune"}), "provenance": provenance}
    write_json_atomic(path, data)
    return path


def check_thresholds(path: Path, allow_stale: bool = False) -> None:
    """StaleError (a warning with `allow_stale`) when `thresholds.json` was tuned on other OOF stores than
    those the experiment's OOF is read from now, or one of them was rewritten since."""
    record = read_record(path)
    reasons = changes(record)
    if record is not None and record.get("stage") == "tune_thresholds":
        tuned_on = record.get("inputs", [])
        now = [input_entry(p) for p in oof_store_paths(path.parent)]
        if now and source_ids(now) != source_ids(tuned_on):
            reasons.append(f"it was tuned on another OOF than the one there now (folds {entry_folds(tuned_on)} "
                           f"then, folds {entry_folds(now)} now)")
    elif record is None:
        newer = [str(p) for p in oof_store_paths(path.parent) if p.stat().st_mtime > path.stat().st_mtime]
        if newer:
            reasons.append(f"{', '.join(newer)} were written after it")
    stale(str(path), list(dict.fromkeys(reasons)), "scripts/tune_thresholds.py", allow_stale)


def load_thresholds(path: str | os.PathLike, classes: Sequence[str] | None = None) -> PostprocessParams:
    """Read the rules of a `thresholds.json`.

    Args:
        path: the file written by `save_thresholds` (`scripts/tune_thresholds.py`).
        classes: the classes the caller predicts; they must be those the file was tuned for.

    Raises:
        DataError: the file is missing or is not a thresholds file.
        ConfigError: its rules do not validate, or were tuned for other classes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run scripts/tune_thresholds.py --config <your config> first")
    try:
        data = json.loads(path.read_text())
        saved = [str(c) for c in data["classes"]]
        raw = data["postprocess"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a thresholds file ({exc!r}); rerun scripts/tune_thresholds.py") from None
    try:
        config = PostprocessConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, PostprocessConfig, str(path))) from None
    if classes is not None and [str(c) for c in classes] != saved:
        raise ConfigError(f"{path} was tuned for classes {saved} but the experiment has {list(classes)}; "
                          "rerun scripts/tune_thresholds.py")
    params = PostprocessParams.from_config(config, saved)
    params.extra.update({key: value for key, value in data.items()
                         if key not in ("classes", "postprocess", "provenance")})
    return params


def postprocess_for(cfg: Any, classes: Sequence[str], allow_stale: bool = False) -> tuple[PostprocessParams, str]:
    """The rules a submission should use: `outputs/<exp>/thresholds.json` when tuned, else `cfg.postprocess`.

    Args:
        cfg: the experiment config.
        classes: the classes predicted.
        allow_stale: warn instead of failing when `thresholds.json` was tuned on another OOF than the
            one on disk now (a fold retrained, the OOF gathered again).

    Returns:
        The rules and where they came from (a path or `"config"`), for the log.
    """
    path = Path(cfg.experiment.output_dir) / THRESHOLDS_FILE
    if path.is_file():
        params = load_thresholds(path, classes)
        check_thresholds(path, allow_stale)
        return params, str(path)
    return PostprocessParams.from_config(cfg.postprocess, classes), "config"
