"""A fold's output folder before a run starts: never overwritten silently, stale temporaries cleaned.

A fold that already holds a run (`best.pt` or `last.pt`) is continued with `resume=True` or started
again with `overwrite=True`; the latter moves the old folder to
`<experiment>/replaced/fold<k>-<time>/` (nothing is deleted), so a worse new run never costs the old one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from segfold.errors import ConfigError, TrainingError
from segfold.io import clean_temporaries, ensure_dir
from segfold.probs import load_checkpoint

RUN_FILES = ("best.pt", "last.pt")
REPLACED = "replaced"


def describe_run(fold_dir: Path) -> str:
    """`best.pt epoch 3, score 0.6910` from the checkpoint (or just the file names when unreadable)."""
    path = fold_dir / "best.pt"
    if path.is_file():
        try:
            state = load_checkpoint(path)
            score = float(state.get("score", float("nan")))
            # NOTE a full-data fit has no validation: its checkpoints carry no score
            return f"best.pt of epoch {state.get('epoch')}" + ("" if math.isnan(score) else f", score {score:.4f}")
        except TrainingError:
            return "best.pt (unreadable)"
    return ", ".join(name for name in RUN_FILES if (fold_dir / name).is_file())


def check_fold_dir(fold_dir: Path, fold: int | str, resume: bool, overwrite: bool, inner: Sequence[str] = ()
                   ) -> None:
    """Refuse to start a fresh run over a trained fold unless `overwrite`; checks only (every rank may call).

    Args:
        inner: sub-folders of `fold_dir` that hold runs too (a staged run's earlier stages, `stage<s>`);
            they move with `fold_dir`.
    """
    if resume and overwrite:
        raise ConfigError("give --resume (continue the run) or --overwrite (start again), not both")
    if overwrite:
        return
    aside = fold_dir.parent / REPLACED
    for folder in [fold_dir, *(fold_dir / name for name in inner)]:
        held = [name for name in RUN_FILES if (folder / name).is_file()]
        if not held:
            continue
        if not resume:
            raise TrainingError(
                f"{folder} already holds a run of fold {fold} ({describe_run(folder)}); continue it with --resume, "
                f"or start again with --overwrite (the old run is moved to {aside}/, not deleted)"
            )
        if "last.pt" not in held:
            raise TrainingError(
                f"{folder} has best.pt but no last.pt to resume from; start again with --overwrite (the old run is "
                f"moved to {aside}/, not deleted)"
            )


def prepare_fold_dir(fold_dir: Path, overwrite: bool) -> Path | None:
    """Make the folder (rank 0 only): move an old run aside when `overwrite`, remove stale temporaries.

    Returns:
        Where the old run went, or None when there was nothing to move.
    """
    moved = None
    if overwrite and fold_dir.is_dir() and any(fold_dir.iterdir()):
        aside = ensure_dir(fold_dir.parent / REPLACED) / f"{fold_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while aside.exists():
            aside = aside.with_name(f"{aside.name.split('+')[0]}+{suffix}")
            suffix += 1
        fold_dir.rename(aside)
        moved = aside
    ensure_dir(fold_dir)
    clean_temporaries(fold_dir)
    return moved
