"""What every artefact was made from, and the one check that it still matches what is on disk.

Probability stores (in their `<name>.json` header), `thresholds.json` and `submission.json` carry a
record under the key `provenance`::

    {"id": "3f2a...", "stage": "predict", "made": "2026-12-02T03:10:00Z", "config_hash": "9c1e...",
     "folds": [0, 1, 2], "missing_folds": [], "tta": "flips", "scales": [1.0],
     "checkpoints": [{"fold": 0, "path": "outputs/x/fold0/best.pt", "epoch": 7, "size": 1234, "mtime_ns": ...}],
     "inputs": [{"path": "outputs/x/fold0/oof.json", "id": "a1b2...", "stage": "train"}]}

`check_record` compares a record with the disk: each checkpoint must be the same file (size and
modification time), each input the same artefact (its record id; for artefacts written before
records existed, not newer than the one that read them). A mismatch is a one-line `StaleError` that
names the artefact, what changed and the stage to rerun; with `allow_stale` it is a warning instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segfold.config.load import config_to_dict
from segfold.errors import StaleError

logger = logging.getLogger(__name__)

KEY = "provenance"
ALLOW_HINT = "or pass --allow-stale to use it as it is"


def config_hash(cfg: Any) -> str:
    """16 hex digits of the SHA-256 of the resolved config (sorted JSON): equal configs, equal hashes."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamp(path: str | os.PathLike) -> dict[str, int]:
    """`{"size", "mtime_ns"}` of a file: what tells a rewritten checkpoint from the one a stage read."""
    stat = Path(path).stat()
    return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def checkpoint_entry(path: str | os.PathLike, fold: int | None, epoch: int | None) -> dict[str, Any]:
    """The record of one checkpoint a stage used (its absolute path)."""
    return {"fold": fold, "path": str(Path(path).resolve()), "epoch": epoch, **file_stamp(path)}


def new_record(stage: str, cfg: Any | None = None, *, checkpoints: Sequence[dict[str, Any]] = (),
               inputs: Sequence[dict[str, Any]] = (), **facts: Any) -> dict[str, Any]:
    """A fresh record: a new id, the stage, the time, the config hash, what was read and other facts."""
    return {
        "id": uuid.uuid4().hex,
        "stage": stage,
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_hash": config_hash(cfg) if cfg is not None else None,
        **facts,
        "checkpoints": list(checkpoints),
        "inputs": list(inputs),
    }


def read_record(json_path: str | os.PathLike) -> dict[str, Any] | None:
    """The record inside a JSON artefact (a store header, thresholds.json), None without one or unreadable."""
    try:
        data = json.loads(Path(json_path).read_text())
    except (OSError, ValueError):
        return None
    record = data.get(KEY) if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


def input_entry(json_path: str | os.PathLike, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """How a stage names an artefact it read: its path, its record id and stage (None for an old artefact)."""
    record = record if record is not None else read_record(json_path)
    entry = {"path": str(Path(json_path).resolve()), "id": record.get("id") if record else None,
             "stage": record.get("stage") if record else None, "folds": record.get("folds") if record else None,
             **file_stamp(json_path)}
    if record and record.get("stage") == "oof":  # a gathered OOF: the fold stores it holds
        entry["sources"] = [source.get("id") for source in record.get("inputs", [])]
    return entry


def source_ids(entries: Sequence[dict[str, Any]]) -> set[str | None]:
    """The stores whose probabilities `entries` hold: fold stores for a gathered OOF, else the entries."""
    return {i for entry in entries for i in (entry.get("sources") or [entry.get("id")])}


def entry_folds(entries: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({int(k) for entry in entries for k in (entry.get("folds") or [])})


def changes(record: dict[str, Any] | None) -> list[str]:
    """What differs between a record and the disk now, as phrases (empty when everything matches)."""
    if not record:
        return []
    found = []
    for entry in record.get("checkpoints", []):
        path = Path(entry["path"])
        if not path.is_file():
            found.append(f"its checkpoint {path} is gone")
        elif file_stamp(path) != {"size": entry.get("size"), "mtime_ns": entry.get("mtime_ns")}:
            epoch = f" (it used epoch {entry['epoch']})" if entry.get("epoch") is not None else ""
            found.append(f"{path} was rewritten after it was made{epoch}")
    for entry in record.get("inputs", []):
        path = Path(entry["path"])
        if not path.is_file():
            found.append(f"its input {path} is gone")
            continue
        now = read_record(path)
        if entry.get("id") is not None or now is not None:
            if (now or {}).get("id") != entry.get("id"):
                found.append(f"{path} was rewritten after it was made")
        elif file_stamp(path) != {"size": entry.get("size"), "mtime_ns": entry.get("mtime_ns")}:
            found.append(f"{path} was rewritten after it was made")
    return found


def stale(what: str, reasons: Sequence[str], rerun: str, allow_stale: bool = False) -> None:
    """Refuse a stale artefact (StaleError), or warn with `allow_stale`; nothing when `reasons` is empty."""
    if not reasons:
        return
    message = f"{what} is stale: {'; '.join(reasons)}; rerun {rerun}"
    if allow_stale:
        logger.warning("warning: %s (used anyway: --allow-stale)", message)
        return
    raise StaleError(f"{message} ({ALLOW_HINT})")


def check_record(record: dict[str, Any] | None, what: str, rerun: str, allow_stale: bool = False) -> None:
    """`stale(what, changes(record), rerun, allow_stale)`."""
    stale(what, changes(record), rerun, allow_stale)


def missing_folds_note(used: Sequence[int], expected: Sequence[int]) -> str | None:
    """`"folds [1, 2] of 3 are missing"`, or None when every expected fold is used."""
    missing = [k for k in expected if k not in set(used)]
    if not missing:
        return None
    return f"fold(s) {missing} of the experiment's {len(expected)} are missing (used: {sorted(used)})"


_RERUN = {
    "train": "scripts/train.py --fold {fold} --resume (it rewrites the fold's OOF from best.pt)",
    "oof": "scripts/oof.py",
    "predict": "scripts/predict.py",
    "blend": "scripts/blend.py",
    "tune_thresholds": "scripts/tune_thresholds.py",
}


def rerun_for(record: dict[str, Any] | None, stage: str) -> str:
    """The command that makes the artefact again: by the stage in its record, else `stage`."""
    stage = (record or {}).get("stage") or stage
    folds = (record or {}).get("folds") or ["<k>"]
    split = (record or {}).get("split")
    extra = f" --split {split}" if stage == "predict" and split not in (None, "test") else ""
    return _RERUN.get(stage, stage).format(fold=folds[0]) + extra
