"""Probability stores: per-pixel probabilities of many images as one memory-mapped uint8 array.

A store named `oof` in `folder` is these files:

- `oof.npy`: a `.npy` array `(N, C, H, W)` uint8, each value `round(p * 255)`, written and read
  with `numpy.lib.format.open_memmap` (the file's header says its shape and dtype);
- `oof.index.csv`: one `ImageId` per row of the array, with a header line;
- `oof.json`: `{"classes": [...], "shape": [N, C, H, W], "dtype": "uint8", "scale": 255, "has_cls": bool}`;
- `oof.cls.npy` (optional): aux-head class probabilities `(N, C)` float32.

Stores written before the `.npy` format (`oof.u8`, a raw array whose shape only the JSON gives)
still open. While writing, every file has a temporary name (`.oof.npy.partial`, ...); `finalize()`
flushes and renames them, the JSON last, so a store whose JSON exists is complete. Usage::

    store = ProbStore.create(folder, "test", image_ids, classes, height, width)
    store.write([0, 1], probs)          # float (2, C, H, W) in [0, 1]
    store.finalize()
    probs = ProbStore.open(folder, "test").read([0])
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from segfold.errors import DataError
from segfold.io import ensure_dir
from segfold.probs.convert import SCALE, to_uint8

_PARTIAL = ".partial"


def store_paths(folder: str | os.PathLike, name: str) -> dict[str, Path]:
    """The final file names of the store `name` in `folder` (keys: npy, u8 (old format), index, json, cls)."""
    folder = Path(folder)
    return {
        "npy": folder / f"{name}.npy",
        "u8": folder / f"{name}.u8",
        "index": folder / f"{name}.index.csv",
        "json": folder / f"{name}.json",
        "cls": folder / f"{name}.cls.npy",
    }


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}{_PARTIAL}")


def _failed(path: Path) -> Path:
    return path.with_name(f".{path.name}.failed")


def mark_failed(folder: str | os.PathLike, name: str) -> None:
    """Leave `.<name>.json.failed` next to a store whose rewrite failed: the store there is an earlier run's
    (nothing when there is no store)."""
    folder = Path(folder)
    if store_exists(folder, name):
        _failed(store_paths(folder, name)["json"]).write_text(time.strftime("%Y-%m-%d %H:%M:%S") + "\n")


def store_exists(folder: str | os.PathLike, name: str) -> bool:
    """Whether a finalized store `name` exists in `folder`."""
    return store_paths(folder, name)["json"].is_file()


def _open_array(paths: dict[str, Path], shape: tuple[int, ...], mode: str) -> np.ndarray:
    """The uint8 array of a store: the `.npy` file, else an old raw `.u8` file of the JSON's shape."""
    if paths["npy"].is_file():
        try:
            probs = open_memmap(paths["npy"], mode=mode)
        except ValueError as exc:
            raise DataError(f"{paths['npy']}: not a readable .npy array ({exc}); the store is damaged, rewrite it") \
                from None
        if probs.dtype != np.uint8 or tuple(probs.shape) != shape:
            raise DataError(f"{paths['npy']}: {probs.dtype} array of shape {list(probs.shape)}, expected uint8 "
                            f"{list(shape)} (the shape in {paths['json'].name}); rewrite the store")
        return probs
    expected = int(np.prod(shape))
    size = paths["u8"].stat().st_size if paths["u8"].is_file() else -1
    if size != expected:
        raise DataError(f"{paths['u8']}: {size} bytes, expected {expected} for shape {list(shape)}; "
                        "the store is truncated, rewrite it")
    if not expected:
        return np.zeros(shape, dtype=np.uint8)
    return np.memmap(paths["u8"], dtype=np.uint8, mode=mode, shape=shape)


class ProbStore:
    """A memory-mapped uint8 probability array with its ImageId index and class names.

    Build one with `ProbStore.create` (writable) or `ProbStore.open` (read-only); do not call the
    constructor directly.
    """

    def __init__(self, folder: Path, name: str, image_ids: list[str], classes: list[str],
                 probs: np.ndarray, cls: np.ndarray | None, writable: bool) -> None:
        self.folder = folder
        self.name = name
        self.image_ids = image_ids
        self.classes = classes
        self.probs = probs
        self.cls = cls
        self.writable = writable
        self._shape: tuple[int, int, int, int] = tuple(int(s) for s in probs.shape)  # type: ignore[assignment]
        self._written = np.zeros(len(image_ids), dtype=bool) if writable else None
        self._row_of: dict[str, int] | None = None
        self.provenance: dict | None = None  # what the store was made from (segfold.probs.provenance)

    # ----------------------------------------------------------------- creation and opening
    @classmethod
    def create(cls, folder: str | os.PathLike, name: str, image_ids: Sequence[str], classes: Sequence[str],
               height: int, width: int, provenance: dict | None = None) -> ProbStore:
        """A writable store of `len(image_ids)` rows of `(len(classes), height, width)` probabilities.

        Args:
            folder: where the files go (created if missing).
            name: the file stem (`oof`, `test`).
            image_ids: one id per row, unique.
            classes: class names, one per channel.
            height: mask height (the metric / submission resolution).
            width: mask width.
            provenance: the record of what it is made from, kept in the header (`segfold.probs.provenance`).
        """
        image_ids = [str(i) for i in image_ids]
        classes = [str(c) for c in classes]
        if len(set(image_ids)) != len(image_ids):
            dup = pd.Series(image_ids)[pd.Series(image_ids).duplicated()].iloc[0]
            raise DataError(f"ProbStore '{name}': ImageId {dup!r} appears more than once; ids must be unique")
        if not classes or height < 1 or width < 1:
            raise DataError(f"ProbStore '{name}': need at least one class and a positive size, "
                            f"got classes={classes}, height={height}, width={width}")
        folder = Path(folder)
        ensure_dir(folder)
        shape = (len(image_ids), len(classes), int(height), int(width))
        probs = open_memmap(_partial(store_paths(folder, name)["npy"]), mode="w+", dtype=np.uint8, shape=shape)
        store = cls(folder, name, image_ids, classes, probs, None, writable=True)
        store.provenance = provenance
        return store

    @classmethod
    def open(cls, folder: str | os.PathLike, name: str, mode: str = "r") -> ProbStore:
        """Open a finalized store read-only (`mode="r"`) or for in-place edits (`mode="r+"`).

        Raises:
            DataError: the store is missing, partial or its files disagree.
        """
        paths = store_paths(folder, name)
        if not paths["json"].is_file():
            partial = _partial(paths["npy"]).exists() or _partial(paths["u8"]).exists()
            hint = " (a partial one exists: the run that wrote it did not finish)" if partial else ""
            raise DataError(f"no probability store '{name}' in {folder}: {paths['json']} not found{hint}")
        try:
            meta = json.loads(paths["json"].read_text())
            shape = tuple(int(s) for s in meta["shape"])
            classes = [str(c) for c in meta["classes"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{paths['json']}: not a probability-store header ({exc}); rewrite the store") from None
        index = pd.read_csv(paths["index"], dtype={"ImageId": str}, keep_default_na=False)
        if "ImageId" not in index.columns or len(index) != shape[0]:
            raise DataError(f"{paths['index']}: expected an ImageId column with {shape[0]} rows "
                            f"(the shape in {paths['json'].name}), got {len(index)}; rewrite the store")
        probs = _open_array(paths, shape, mode)
        cls_probs = None
        if meta.get("has_cls") or paths["cls"].is_file():
            cls_probs = np.load(paths["cls"], allow_pickle=False).astype(np.float32)
            if cls_probs.shape != shape[:2]:
                raise DataError(f"{paths['cls']}: shape {cls_probs.shape}, expected {shape[:2]}; rewrite the store")
        store = cls(Path(folder), name, index["ImageId"].tolist(), classes, probs, cls_probs, writable=False)
        store.provenance = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else None
        return store

    # ----------------------------------------------------------------- reading
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """`(N, C, H, W)`."""
        return self._shape

    def __len__(self) -> int:
        return len(self.image_ids)

    def row_of(self, image_id: str) -> int:
        """The row of `image_id` (DataError when the store has no such image)."""
        if self._row_of is None:
            self._row_of = {image_id: row for row, image_id in enumerate(self.image_ids)}
        try:
            return self._row_of[str(image_id)]
        except KeyError:
            raise DataError(f"probability store '{self.name}' in {self.folder} has no ImageId {image_id!r}") from None

    def read(self, rows: int | Sequence[int] | slice | np.ndarray) -> np.ndarray:
        """Probabilities of `rows` as float32 in [0, 1]: `(C, H, W)` for one int row, else `(n, C, H, W)`."""
        if isinstance(rows, (list, tuple)):
            rows = np.asarray(rows, dtype=np.int64)
        return np.asarray(self.probs[rows], dtype=np.float32) / SCALE

    # ----------------------------------------------------------------- writing
    def write(self, rows: int | Sequence[int] | np.ndarray, probs: np.ndarray) -> None:
        """Store float probabilities `(n, C, H, W)` (or `(C, H, W)` for one int row) at `rows`."""
        probs = np.asarray(probs)
        self._put(rows, to_uint8(probs[None] if np.ndim(rows) == 0 else probs), "write")

    def write_uint8(self, rows: int | Sequence[int] | np.ndarray, values: np.ndarray) -> None:
        """Store already quantised probabilities (uint8 `round(p * 255)`, e.g. rows of another store)."""
        values = np.asarray(values)
        if values.dtype != np.uint8:
            raise ValueError(f"write_uint8 takes uint8 values, got {values.dtype}; use write() for probabilities")
        self._put(rows, values[None] if np.ndim(rows) == 0 else values, "write_uint8")

    def _put(self, rows: int | Sequence[int] | np.ndarray, values: np.ndarray, caller: str) -> None:
        self._check_writable()
        index = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        expected = (len(index), *self.shape[1:])
        if values.shape != expected:
            raise ValueError(f"ProbStore.{caller}: probabilities of shape {values.shape}, expected {expected} "
                             "(resize to the store's height and width first)")
        self.probs[index] = values
        self._written[index] = True

    def write_cls(self, rows: int | Sequence[int] | np.ndarray, probs: np.ndarray) -> None:
        """Store aux-head class probabilities `(n, C)` at `rows` (creates `<name>.cls.npy` on finalize)."""
        self._check_writable()
        if self.cls is None:
            self.cls = np.zeros(self.shape[:2], dtype=np.float32)
        index = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        self.cls[index] = np.asarray(probs, dtype=np.float32).reshape(len(index), self.shape[1])

    def _check_writable(self) -> None:
        if not self.writable:
            raise ValueError(f"probability store '{self.name}' is open read-only (or already finalized)")

    def finalize(self, allow_missing: bool = False) -> ProbStore:
        """Flush, write the index and header, and rename the files to their final names.

        Args:
            allow_missing: accept rows that were never written (they stay 0); by default that is an error.

        Returns:
            The store re-opened read-only.
        """
        self._check_writable()
        missing = np.flatnonzero(~self._written)
        if len(missing) and not allow_missing:
            first = ", ".join(self.image_ids[i] for i in missing[:3])
            raise ValueError(f"ProbStore '{self.name}': {len(missing)} rows were never written (e.g. {first})")
        paths = store_paths(self.folder, self.name)
        if isinstance(self.probs, np.memmap):
            self.probs.flush()
        del self.probs
        pd.DataFrame({"ImageId": self.image_ids}).to_csv(_partial(paths["index"]), index=False)
        if self.cls is not None:
            with open(_partial(paths["cls"]), "wb") as handle:
                np.save(handle, self.cls.astype(np.float32), allow_pickle=False)
        meta = {"classes": self.classes, "shape": list(self._shape), "dtype": "uint8",
                "scale": SCALE, "has_cls": self.cls is not None, "provenance": self.provenance}
        _partial(paths["json"]).write_text(json.dumps(meta, indent=2) + "\n")
        # NOTE: the header goes away first and comes back last, so a reader never pairs an old header
        # with new data; an old-format array of the same name goes too.
        paths["json"].unlink(missing_ok=True)
        paths["u8"].unlink(missing_ok=True)
        os.replace(_partial(paths["npy"]), paths["npy"])
        os.replace(_partial(paths["index"]), paths["index"])
        if self.cls is not None:
            os.replace(_partial(paths["cls"]), paths["cls"])
        else:
            paths["cls"].unlink(missing_ok=True)
        os.replace(_partial(paths["json"]), paths["json"])
        _failed(paths["json"]).unlink(missing_ok=True)
        self.writable = False
        return ProbStore.open(self.folder, self.name)

    def abort(self) -> None:
        """Drop a writable store's temporary files (the final files, if any, are untouched).

        A marker `.<name>.json.failed` says that the store on disk (if any) is not from the latest run.
        """
        if not self.writable:
            return
        del self.probs
        for path in store_paths(self.folder, self.name).values():
            _partial(path).unlink(missing_ok=True)
        mark_failed(self.folder, self.name)
        self.writable = False

    def unfinished_run(self) -> str | None:
        """Why the store may not be from the latest run that wrote it (failed or killed), else None."""
        paths = store_paths(self.folder, self.name)
        header = paths["json"].stat().st_mtime if paths["json"].is_file() else 0.0
        failed = _failed(paths["json"])
        if failed.is_file() and failed.stat().st_mtime >= header:
            return f"a later run that rewrote it failed (at {failed.read_text().strip()}), so it is an earlier run's"
        partial = [_partial(paths[key]) for key in ("npy", "u8")]
        if any(p.is_file() and p.stat().st_mtime >= header for p in partial):
            return "a later run that rewrote it did not finish (killed, or still running), so it is an earlier run's"
        return None
