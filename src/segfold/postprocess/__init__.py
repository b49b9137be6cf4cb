"""segfold.postprocess: from probabilities to masks (`rules`), and the search of those rules on the OOF.

`rules` applies and saves the rules (`thresholds.json`); `histograms` scores any rule exactly from
per-image histograms and runs the grid search; `components` adds per-component areas; `optuna_search`
searches what a grid cannot cover; `tune` is the stage (`tune_thresholds`).
"""

from segfold.postprocess.rules import (
    THRESHOLDS_FILE,
    ClassRules,
    PostprocessParams,
    apply_postprocess,
    apply_postprocess_batch,
    load_thresholds,
    postprocess_for,
    save_thresholds,
)
from segfold.postprocess.tune import default_min_areas, resolve_metric, tune_thresholds

__all__ = [
    "THRESHOLDS_FILE",
    "ClassRules",
    "PostprocessParams",
    "apply_postprocess",
    "apply_postprocess_batch",
    "default_min_areas",
    "load_thresholds",
    "postprocess_for",
    "resolve_metric",
    "save_thresholds",
    "tune_thresholds",
]
