"""Several probability stores read as one, and an experiment's OOF and test stores opened as such views.

The OOF of an experiment is `outputs/<exp>/oof/oof.*` once `scripts/oof.py` gathered it; before
that, the stores `outputs/<exp>/fold<k>/oof.*` that training wrote are read together as one (any
number of folds; fold 0 alone is enough).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segfold.errors import DataError
from segfold.probs.outputs import HOLDOUT_NAME, OOF_NAME, TEST_NAME, checkpoint_name, fold_checkpoints, fold_dirs
from segfold.probs.provenance import changes, input_entry, missing_folds_note, rerun_for, stale
from segfold.probs.store import ProbStore, store_exists, store_paths

logger = logging.getLogger(__name__)


def read_mapped_rows(data: np.memmap, local: np.ndarray, channel: int | None, out: np.ndarray,
                     positions: np.ndarray) -> None:
    """`out[positions] = data[local]` (or `data[local, channel]`) through ordinary reads of the map's file.

    NOTE: pages read through a shared memory map count in this process's resident memory until it is
    unmapped, so one pass over a 20 GB OOF would count 20 GB; pages read with `read` stay in the page cache
    only.
    """
    plane = int(np.prod(data.shape[2:]))
    row_bytes = plane * data.shape[1]
    first, size = (0, row_bytes) if channel is None else (channel * plane, plane)
    with open(data.filename, "rb", buffering=0) as handle:
        for position, row in zip(positions, local, strict=True):
            handle.seek(data.offset + int(row) * row_bytes + first)
            if handle.readinto(memoryview(out[position]).cast("B")) != size:
                raise DataError(f"{data.filename}: ended inside row {int(row)}; the store is truncated, rewrite it")


class StoreView:
    """Several probability stores read as one, rows in store order (`image_ids`, `read_u8`, `cls`).

    Args:
        stores: stores with the same classes and resolution and distinct image ids.
        label: a name for messages (the folders read).
    """

    def __init__(self, stores: Sequence[ProbStore], label: str = "") -> None:
        if not stores:
            raise DataError(f"{label or 'OOF'}: no probability stores to read")
        first = stores[0]
        for store in stores[1:]:
            if store.classes != first.classes:
                raise DataError(f"{store.folder}/{store.name}: classes {store.classes} differ from "
                                f"{first.folder}/{first.name}: {first.classes}")
            if store.shape[2:] != first.shape[2:]:
                raise DataError(f"{store.folder}/{store.name}: masks of {store.shape[2:]} but {first.folder}/"
                                f"{first.name} has {first.shape[2:]}; predict every fold at the same resolution")
        self.stores = list(stores)
        self.label = label or ", ".join(f"{s.folder}/{s.name}" for s in stores)
        self.classes = list(first.classes)
        self.image_ids = [image_id for store in stores for image_id in store.image_ids]
        seen: dict[str, int] = {}
        for k, store in enumerate(stores):
            for image_id in store.image_ids:
                if image_id in seen:
                    other = stores[seen[image_id]]
                    raise DataError(f"image {image_id!r} is in both {other.folder}/{other.name} and "
                                    f"{store.folder}/{store.name}; each image belongs to one fold's OOF")
                seen[image_id] = k
        self.folds: list[int] | None = None  # the folds whose models made it, where known
        self._starts = np.cumsum([0] + [len(s) for s in stores])
        self.shape = (len(self.image_ids), len(self.classes), *first.shape[2:])
        if all(s.cls is not None for s in stores):
            self.cls: np.ndarray | None = np.concatenate([s.cls for s in stores]).astype(np.float32)
        else:
            self.cls = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def read_u8(self, rows: Sequence[int] | np.ndarray, channel: int | None = None) -> np.ndarray:
        """uint8 probabilities of `rows`: `(n, C, H, W)`, or `(n, H, W)` of one `channel`."""
        rows = np.asarray(rows, dtype=np.int64)
        shape = (len(rows), *self.shape[1:]) if channel is None else (len(rows), *self.shape[2:])
        out = np.empty(shape, dtype=np.uint8)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for k in np.unique(which):
            hit = np.flatnonzero(which == k)
            local = rows[hit] - self._starts[k]
            data = self.stores[k].probs
            if isinstance(data, np.memmap) and data.mode == "r":
                read_mapped_rows(data, local, channel, out, hit)
            else:
                out[hit] = data[local] if channel is None else data[local, channel]
        return out

    def locate(self, row: int) -> tuple[ProbStore, int]:
        """The store holding view row `row` and the row inside it."""
        k = int(np.searchsorted(self._starts, row, side="right") - 1)
        return self.stores[k], int(row - self._starts[k])

    def row_index(self) -> dict[str, int]:
        """ImageId -> row."""
        return {image_id: row for row, image_id in enumerate(self.image_ids)}

    @property
    def tta(self) -> str | None:
        """The test-time augmentation its probabilities were predicted with ("none" for the trainer's OOF;
        e.g. "flips+scales[1,1.25]" with multi-scale copies, `tta_label`), None when unknown (old stores) or
        mixed."""
        names = {tta_label(s.provenance) for s in self.stores}
        return names.pop() if len(names) == 1 else None

    def input_entries(self) -> list[dict]:
        """The stores as inputs of what a stage makes from them (`segfold.probs.provenance.input_entry`)."""
        return [input_entry(store_paths(s.folder, s.name)["json"], s.provenance) for s in self.stores]

    def take(self, rows: Sequence[int] | np.ndarray, label: str | None = None) -> RowsView:
        """A view of `rows` only (in that order), read like this one: a search on part of the OOF."""
        return RowsView(self, rows, label)


class RowsView:
    """Some rows of a `StoreView`, with its interface (`image_ids`, `shape`, `read_u8`, `cls`, `tta`).

    Args:
        view: the whole view.
        rows: rows of `view`; row `i` here is `view` row `rows[i]`.
        label: a name for messages (default: the view's, with the row count).
    """

    def __init__(self, view: StoreView, rows: Sequence[int] | np.ndarray, label: str | None = None) -> None:
        self.view = view
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(view)):
            raise IndexError(f"rows outside the {len(view)} rows of {view.label}")
        self.classes = view.classes
        self.image_ids = [view.image_ids[i] for i in self.rows]
        self.shape = (len(self.rows), *view.shape[1:])
        self.cls = None if view.cls is None else view.cls[self.rows]
        self.folds = view.folds
        self.label = label or f"{view.label}, {len(self.rows)} of its rows"

    def __len__(self) -> int:
        return len(self.rows)

    def read_u8(self, rows: Sequence[int] | np.ndarray, channel: int | None = None) -> np.ndarray:
        """uint8 probabilities of `rows` (rows of this view)."""
        return self.view.read_u8(self.rows[np.asarray(rows, dtype=np.int64)], channel)

    @property
    def tta(self) -> str | None:
        """The TTA of the whole view."""
        return self.view.tta

    def input_entries(self) -> list[dict]:
        """The whole view's stores."""
        return self.view.input_entries()


def tta_label(record: dict | None) -> str | None:
    """The TTA a store's record names, with its multi-scale factors when it used any ("flips+scales[0.75,1,1.25]":
    sorted, 1.0 included, as `segfold.predict.build_tta` runs them); None when unknown."""
    if not record or record.get("tta") is None:
        return None
    scales = sorted({1.0, *(float(x) for x in record.get("scales") or [1.0])})
    return str(record["tta"]) + (f"+scales[{','.join(f'{x:g}' for x in scales)}]" if len(scales) > 1 else "")


def tta_mismatch(tuned_on: str | None, applied_to: str | None) -> str | None:
    """A warning when thresholds tuned on probabilities of one TTA (and scales) are applied to those of another."""
    if tuned_on is None or applied_to is None or tuned_on == applied_to:
        return None
    if tuned_on.endswith("+scales") and applied_to.startswith(tuned_on + "["):
        return None  # NOTE a record written before labels named the scales: multi-scale, factors unknown
    return (f"the thresholds were tuned on OOF probabilities predicted with TTA '{tuned_on}' but the test "
            f"probabilities use '{applied_to}': averaged copies are smoother, so the best threshold and minimum "
            f"areas shift; set infer.oof_tta: true (or run scripts/oof.py --tta/--scales with the test's TTA and "
            f"scales) and tune again")


def check_store(store: ProbStore, stage: str, allow_stale: bool = False) -> None:
    """StaleError (a warning with `allow_stale`) when the store no longer matches what it was made from:
    a checkpoint or input rewritten since, or a later run that rewrote it failed or was killed."""
    reasons = changes(store.provenance)
    unfinished = store.unfinished_run()
    if unfinished:
        reasons.insert(0, unfinished)
    stale(f"{store.folder / store.name}.*", reasons, rerun_for(store.provenance, stage), allow_stale)


def _warn_missing(what: str, used: Sequence[int] | None, expected: Sequence[int] | None) -> None:
    note = missing_folds_note(used, expected) if used is not None and expected is not None else None
    if note:
        logger.warning("warning: %s: %s", what, note)


def open_oof(output_dir: str | os.PathLike, allow_stale: bool = False,
             expected_folds: Sequence[int] | None = None) -> StoreView:
    """The OOF of an experiment: the gathered `oof/oof.*`, else every `fold<k>/oof.*` found.

    Args:
        output_dir: `outputs/<experiment>`.
        allow_stale: warn instead of failing when the OOF no longer matches its checkpoints / inputs.
        expected_folds: the experiment's folds; a warning names those the OOF lacks.

    Raises:
        DataError: neither exists.
        StaleError: a fold's checkpoint changed since its OOF was written; the gathered OOF lacks fold
            stores written since, or one of its fold stores was rewritten; a later run failed.
    """
    output_dir = Path(output_dir)
    folds = fold_dirs(output_dir, with_store=OOF_NAME)
    for folder in folds.values():
        check_store(ProbStore.open(folder, OOF_NAME), "train", allow_stale)
    if store_exists(output_dir / OOF_NAME, OOF_NAME):
        store = ProbStore.open(output_dir / OOF_NAME, OOF_NAME)
        check_store(store, "oof", allow_stale)
        stale(f"{output_dir / OOF_NAME / OOF_NAME}.*", _unread_folds(store, folds), "scripts/oof.py", allow_stale)
        view = StoreView([store], str(output_dir / OOF_NAME))
        view.folds = (store.provenance or {}).get("folds")
    else:
        if not folds:
            raise DataError(f"no OOF probabilities under {output_dir}: expected {output_dir}/oof/oof.json "
                            f"(scripts/oof.py) or {output_dir}/fold<k>/oof.json (scripts/train.py); train a fold "
                            "first")
        view = StoreView([ProbStore.open(p, OOF_NAME) for p in folds.values()],
                         ", ".join(str(p) for p in folds.values()))
        view.folds = list(folds)
    _warn_missing(f"the OOF of {output_dir}", view.folds, expected_folds)
    return view


def oof_store_paths(output_dir: str | os.PathLike) -> list[Path]:
    """The headers of the stores `open_oof` reads now: the gathered OOF's, else every fold's."""
    output_dir = Path(output_dir)
    if store_exists(output_dir / OOF_NAME, OOF_NAME):
        return [store_paths(output_dir / OOF_NAME, OOF_NAME)["json"]]
    return [store_paths(p, OOF_NAME)["json"] for p in fold_dirs(output_dir, with_store=OOF_NAME).values()]


def _unread_folds(gathered: ProbStore, folds: dict[int, Path]) -> list[str]:
    """Fold stores on disk that a gathered OOF was not made from (written after it, or left out)."""
    record = gathered.provenance
    if record is None:  # written before records: compare times
        made = store_paths(gathered.folder, gathered.name)["json"].stat().st_mtime
        newer = [k for k, p in folds.items() if store_paths(p, OOF_NAME)["json"].stat().st_mtime > made]
        return [f"fold(s) {newer} wrote their OOF after it was gathered"] if newer else []
    if record.get("stage") != "oof":
        return []
    read = {Path(entry["path"]) for entry in record.get("inputs", [])}
    unread = [k for k, p in folds.items() if store_paths(p, OOF_NAME)["json"].resolve() not in read]
    if not unread:
        return []
    return [f"fold(s) {unread} have OOF stores it does not hold (it was gathered from folds {record.get('folds')})"]


def open_test(output_dir: str | os.PathLike, allow_stale: bool = False) -> StoreView:
    """The test probabilities of an experiment, `test/test.*`.

    Raises:
        DataError: there is none.
        StaleError: (a warning with `allow_stale`) a checkpoint it was predicted with changed or is gone, a
            fold has a checkpoint now that the store, predicted with every fold, lacks, or a later
            `scripts/predict.py` failed or was killed.
    """
    output_dir = Path(output_dir)
    folder = output_dir / TEST_NAME
    if not store_exists(folder, TEST_NAME):
        raise DataError(f"no test probabilities in {folder} (expected {folder}/test.json): run scripts/predict.py")
    store = ProbStore.open(folder, TEST_NAME)
    check_store(store, "predict", allow_stale)
    record = store.provenance or {}
    if record.get("stage") == "predict" and record.get("requested") == "all":
        found, _ = fold_checkpoints(output_dir, record.get("checkpoint", "best.pt"))
        new = sorted(set(found) - set(record.get("folds", [])))
        name = checkpoint_name(record.get("checkpoint", "best.pt"))
        stale(f"{folder / TEST_NAME}.*", [f"fold(s) {new} have a {name} now but it was "
                                          f"predicted with folds {record.get('folds')} only"] if new else [],
              "scripts/predict.py", allow_stale)
    view = StoreView([store], str(folder))
    view.folds = record.get("folds")
    return view


def open_holdout(output_dir: str | os.PathLike, allow_stale: bool = False) -> StoreView:
    """The probabilities of the holdout images (`data.folds.holdout`), `holdout/holdout.*`.

    Raises:
        DataError: there is none (`scripts/predict.py --split holdout` writes it).
        StaleError: (a warning with `allow_stale`) a checkpoint or store it was made from changed since.
    """
    folder = Path(output_dir) / HOLDOUT_NAME
    if not store_exists(folder, HOLDOUT_NAME):
        raise DataError(f"no holdout probabilities in {folder}: run scripts/predict.py --split holdout")
    store = ProbStore.open(folder, HOLDOUT_NAME)
    check_store(store, "predict", allow_stale)
    view = StoreView([store], str(folder))
    view.folds = (store.provenance or {}).get("folds")
    return view
