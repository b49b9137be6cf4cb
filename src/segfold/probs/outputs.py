"""Where an experiment's outputs are: its fold folders, their checkpoints and probability stores.

`outputs/<experiment>/fold<k>/` holds a fold's checkpoints and its OOF store (`oof.*`);
`outputs/<experiment>/oof/oof.*` is the gathered OOF, `outputs/<experiment>/test/test.*` the test store.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from segfold.data.folds import folds_path, load_folds
from segfold.probs.store import store_exists

OOF_NAME = "oof"  # the store name and the folder of the gathered OOF
TEST_NAME = "test"  # the store name and folder of the test probabilities
HOLDOUT_NAME = "holdout"  # the store name and folder of the holdout images' probabilities (data.folds.holdout)
FULL_DIR = "full"  # the folder of the full-data fit (scripts/train.py --fold full)
AUTO_CHECKPOINT = "auto"  # the checkpoint each fold chose: averaged.pt when its average won, else best.pt


def checkpoint_name(checkpoint: str) -> str:
    """`infer.checkpoint` as messages name it: `best.pt` for 'auto' (every fold has one; `averaged.pt` only
    when its average won)."""
    return "best.pt" if checkpoint == AUTO_CHECKPOINT else checkpoint


def selected_checkpoint(fold_dir: str | os.PathLike) -> Path:
    """The checkpoint a trained fold chose for its OOF: `averaged.pt` when its average won, else `best.pt`.

    Read from the fold's `result.json` (`checkpoint`); a fold without one (an older run, or one still
    training) gives `best.pt`.
    """
    fold_dir = Path(fold_dir)
    result = fold_dir / "result.json"
    if result.is_file():
        name = json.loads(result.read_text()).get("checkpoint")
        if name and (fold_dir / name).is_file():
            return fold_dir / name
    return fold_dir / "best.pt"


def full_checkpoint(output_dir: str | os.PathLike, checkpoint: str = "best.pt") -> Path:
    """The full-data fit's checkpoint in `output_dir/full/`: `infer.checkpoint`, or the one it chose for 'auto'."""
    full = Path(output_dir) / FULL_DIR
    return selected_checkpoint(full) if checkpoint == AUTO_CHECKPOINT else full / checkpoint


def expected_folds(cfg) -> tuple[list[int], list[str] | None]:
    """The fold numbers of the experiment and the training image order (None when there is no folds file)."""
    if not folds_path(cfg).is_file():  # NOTE never make new folds here: they must be the ones trained on
        return list(range(cfg.data.folds.n_folds)), None
    folds = load_folds(cfg, create=False)
    folds = folds[folds["fold"] >= 0]  # the holdout (fold -1) has no OOF
    return sorted(int(k) for k in folds["fold"].unique()), folds["ImageId"].astype(str).tolist()


def fold_number(path: str | os.PathLike) -> int | None:
    """k of a folder named `fold<k>`, else None."""
    match = re.fullmatch(r"fold(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def fold_dirs(output_dir: str | os.PathLike, with_store: str | None = None) -> dict[int, Path]:
    """The `fold<k>` folders of an experiment by k, in order; only those holding store `with_store` when given."""
    found = {}
    for path in Path(output_dir).glob("fold*"):
        k = fold_number(path)
        if k is not None and path.is_dir() and (with_store is None or store_exists(path, with_store)):
            found[k] = path
    return dict(sorted(found.items()))


def fold_checkpoints(output_dir: str | os.PathLike, checkpoint: str = "best.pt",
                     folds: Sequence[int] | None = None) -> tuple[dict[int, Path], list[int]]:
    """The checkpoint of each fold in `output_dir/fold<k>/`, and the requested folds that have none.

    Args:
        output_dir: `outputs/<experiment>`.
        checkpoint: file name inside each fold folder, or `auto` (`selected_checkpoint`).
        folds: the folds wanted; None: every `fold<k>` folder found.
    """
    output_dir = Path(output_dir)
    folds = list(fold_dirs(output_dir)) if folds is None else folds
    paths = {int(k): selected_checkpoint(output_dir / f"fold{k}") if checkpoint == AUTO_CHECKPOINT
             else output_dir / f"fold{k}" / checkpoint for k in folds}
    missing = [k for k, path in paths.items() if not path.is_file()]
    return {k: p for k, p in paths.items() if k not in missing}, missing
