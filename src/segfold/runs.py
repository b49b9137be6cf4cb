"""`outputs/runs.csv`: one row per experiment and stage, so final submissions can be chosen by CV, not by LB.

Columns: `experiment`, `stage` (`final` for the last or only stage, `stage<s>` for earlier stages),
`config_hash` (of the resolved config), `fold<k>` (each fold's best validation score), `cv_mean`,
`cv_std`, `oof_before` / `oof_after` (the OOF score at the default threshold and after
tune_thresholds), `holdout` (the tuned rules on the holdout images), `test_score` (when the test
labels are known), `public_lb` (typed in by hand: `scripts/log_lb.py EXP SCORE`) and `updated`.
A full-data fit (`train.py --fold full`) has its own row, stage `full` (`full_stage<s>` for the
earlier stages of a staged run), with the `config_hash` of the folds' settings, `epochs` (the
epochs it trained) and `epochs_from` (`train.full_epochs`, or the folds whose median best epoch
it took); it has no validation, so its CV cells stay empty.
Each writer updates its own cells of one row; the file is locked while it is rewritten (several
processes, e.g. Optuna workers, may finish at once) and replaced atomically.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segfold.io import atomic_path

RUNS_FILE = "runs.csv"
FINAL_STAGE = "final"
FULL_STAGE = "full"
FIXED_COLUMNS = ("experiment", "stage", "config_hash")
RESULT_COLUMNS = ("cv_mean", "cv_std", "oof_before", "oof_after", "holdout", "test_score", "public_lb", "updated")


def runs_path(output_root: str | os.PathLike) -> Path:
    """`<output_root>/runs.csv`."""
    return Path(output_root) / RUNS_FILE


def settings_hash(config_dict: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of a config mapping as sorted JSON (the same settings give the same hash).

    NOTE not `segfold.probs.config_hash` (a provenance stamp of the whole config, name included): the
    trainer hashes the settings without `experiment.name`, so a renamed copy of a run shows up as such.
    """
    text = json.dumps(config_dict, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stage_name(number: int, count: int) -> str:
    """`final` for the last (or only) stage, else `stage<number>`."""
    return FINAL_STAGE if number == count else f"stage{number}"


def full_stage_name(number: int, count: int) -> str:
    """The stage cell of a full-data fit: `full` for its last (or only) stage, else `full_stage<number>`."""
    return FULL_STAGE if number == count else f"{FULL_STAGE}_stage{number}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_runs(output_root: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of `runs.csv` (empty when there is none)."""
    path = runs_path(output_root)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _columns(rows: list[dict[str, str]]) -> list[str]:
    folds = sorted({key for row in rows for key in row if re.fullmatch(r"fold\d+", key)}, key=lambda k: int(k[4:]))
    known = {*FIXED_COLUMNS, *folds, *RESULT_COLUMNS}
    extra = sorted({key for row in rows for key in row} - known)
    return [*FIXED_COLUMNS, *folds, *RESULT_COLUMNS[:-1], *extra, RESULT_COLUMNS[-1]]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def record_run(output_root: str | os.PathLike, experiment: str, stage: str = FINAL_STAGE, *,
               require_existing: bool = False, **values: Any) -> dict[str, str]:
    """Set cells of the row (experiment, stage), creating it unless `require_existing`; returns the row.

    `fold<k>` values refresh `cv_mean` / `cv_std` over the row's fold columns.

    Raises:
        KeyError: `require_existing` and there is no such row (the message lists the experiments).
    """
    path = runs_path(output_root)
    with _locked(path):
        rows = read_runs(output_root)
        row = next((r for r in rows if r["experiment"] == experiment and r["stage"] == stage), None)
        if row is None:
            if require_existing:
                known = sorted({f"{r['experiment']} ({r['stage']})" for r in rows})
                raise KeyError(f"{path} has no row for experiment {experiment!r}, stage {stage!r}; it has "
                               f"{', '.join(known) or 'no rows'}")
            row = {"experiment": experiment, "stage": stage}
            rows.append(row)
        row.update({key: _cell(value) for key, value in values.items()})
        scores = [float(v) for k, v in row.items() if re.fullmatch(r"fold\d+", k) and v not in ("", None)]
        if scores:
            mean = sum(scores) / len(scores)
            row["cv_mean"] = _cell(mean)
            row["cv_std"] = _cell(math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores)))
        row["updated"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        columns = _columns(rows)
        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
    return {key: str(value) for key, value in row.items()}
