"""A fold's output folder before a run starts: never overwritten silently, stale temporaries cleaned.

A fold that already holds a run (`best.pt` or `last.pt`) is continued with `resume=True` or started
again with `overwrite=True`; the latter moves the old folder to
`<experiment>/replaced/fold<k>-<time>/` (nothing is deleted), so a worse new run never costs the old one.
"""

from __future__ import annotations

import time
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
            return f"best.pt of epoch {state.get('epoch')}, score {float(state.get('score', float('nan'))):.4f}"
        except TrainingError:
            return "best.pt (unreadable)"
    return ", ".join(name for name in RUN_FILES if (fold_dir / name).is_file())


def check_fold_dir(fold_dir: Path, fold: int, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over a trained fold unless `overwrite`; checks only (every rank may call)."""
    if resume and overwrite:
        raise ConfigError("give --resume (continue the run) or --overwrite (start again), not both")
    held = [name for name in RUN_FILES if (fold_dir / name).is_file()]
    if overwrite or not held:
        return
    if not resume:
        raise TrainingError(
            f"{fold_dir} already holds a run of fold {fold} ({describe_run(fold_dir)}); continue it with --resume, "
            f"or start again with --overwrite (the old run is moved to {fold_dir.parent / REPLACED}/, not deleted)"
        )
    if "last.pt" not in held:
        raise TrainingError(
            f"{fold_dir} has best.pt but no last.pt to resume from; start again with --overwrite (the old run is "
            f"moved to {fold_dir.parent / REPLACED}/, not deleted)"
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
