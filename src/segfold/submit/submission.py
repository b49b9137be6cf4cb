"""Submissions: build from binary masks, validate against `sample_submission.csv`, score against labels.

The layout is read from the sample's header, never assumed:

- `ImageId,ClassId,EncodedPixels`: one row per (image, class) (Severstal re-release, CamVid-4);
- `ImageId_ClassId,EncodedPixels` / `Image_Label,EncodedPixels`: the same with the image and the
  class joined by the last `_` (`0002cc93b.jpg_1`, `0011165.jpg_Fish`);
- `ImageId,EncodedPixels`: one row per image of a one-class competition (SIIM: relative RLE, `-1`
  for an empty mask).

Rows keep the sample's order. Before a file is written every row is checked: present once, no
extra rows, the RLE inside the image, and decoding it gives back the mask it came from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segfold.data import rle
from segfold.data.formats import Annotations, read_test_labels
from segfold.errors import DataError
from segfold.io import atomic_path, write_json_atomic
from segfold.postprocess import apply_postprocess_batch, postprocess_for
from segfold.probs import input_entry, new_record, open_test, read_record, score_masks, truth_masks, tta_mismatch

logger = logging.getLogger(__name__)

ENCODED = "EncodedPixels"


@dataclass(frozen=True)
class Layout:
    """How a competition's submission names its rows.

    Attributes:
        header: the column names, in the sample's order.
        kind: "columns" (image and class in two columns), "joined" (`<image>_<class>` in one) or
            "image" (one row per image, one class).
        id_column: the column with the image id (or `<image>_<class>` for "joined").
        class_column: the class column of "columns", else None.
        relative: SIIM-style relative RLE with `-1` for an empty mask.
        order: pixel numbering, "F" (column-major, Kaggle's) or "C".
    """

    header: tuple[str, ...]
    kind: str
    id_column: str
    class_column: str | None = None
    relative: bool = False
    order: str = "F"

    @property
    def empty(self) -> str:
        """The EncodedPixels of an empty mask."""
        return "-1" if self.relative else ""

    def encode(self, mask: np.ndarray) -> str:
        return rle.encode_relative(mask, self.order) if self.relative else rle.encode(mask, self.order)

    def decode(self, text: str, shape: Sequence[int]) -> np.ndarray:
        return rle.decode_relative(text, shape, self.order) if self.relative else rle.decode(text, shape, self.order)


def read_csv_strings(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV read with every cell as a string (empty cells are `""`, never NaN)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def detect_layout(header: Sequence[str], relative: bool | None = None, encoded: Iterable[str] = (),
                  order: str = "F") -> Layout:
    """The layout named by a sample submission's header (the EncodedPixels column may be anywhere).

    Args:
        header: the column names of `sample_submission.csv`.
        relative: force relative (True) or absolute (False) RLE; None: relative when a sample cell is `-1`.
        encoded: the sample's EncodedPixels cells (for the `-1` check).
        order: RLE pixel order ("F" or "C").
    """
    header = tuple(str(c) for c in header)
    if relative is None:
        relative = any(str(cell).strip() == "-1" for cell in encoded)
    others = [c for c in header if c != ENCODED]
    if ENCODED in header and len(header) == 3 and len(others) == 2:
        image = next((c for c in others if c.lower().startswith("image")), others[0])
        return Layout(header, "columns", image, next(c for c in others if c != image), relative, order)
    if ENCODED in header and len(header) == 2:
        joined = "_" in others[0] and others[0] not in ("ImageId", "Image")
        return Layout(header, "joined" if joined else "image", others[0], None, relative, order)
    raise DataError(f"sample submission header {','.join(header)} is not a known layout: expected "
                    "ImageId,ClassId,EncodedPixels / ImageId_ClassId,EncodedPixels / Image_Label,EncodedPixels "
                    "/ ImageId,EncodedPixels (in any column order)")


def row_pairs(frame: pd.DataFrame, layout: Layout, classes: Sequence[str], source: str) -> list[tuple[str, str]]:
    """The (image id, class name) of every row of a frame in `layout`; DataError names a bad row."""
    first = frame[layout.id_column].tolist()
    if layout.kind == "columns":
        pairs = list(zip(first, frame[layout.class_column].tolist(), strict=True))
    elif layout.kind == "image":
        if len(classes) != 1:
            raise DataError(f"{source}: one row per image fits a one-class competition, but data.classes has "
                            f"{len(classes)} ({', '.join(classes)})")
        pairs = [(image_id, classes[0]) for image_id in first]
    else:
        pairs = [tuple(key.rsplit("_", 1)) if "_" in key else (key, "") for key in first]
    known = set(classes)
    for row, (_, class_name) in enumerate(pairs):
        if class_name not in known:
            raise DataError(f"{source} row {row + 2}: class {class_name!r} ({layout.id_column}={first[row]!r}) "
                            f"is not in data.classes ({', '.join(classes)})")
    return pairs  # type: ignore[return-value]


def build_submission(sample: pd.DataFrame, layout: Layout, classes: Sequence[str],
                     masks_of: Callable[[list[str]], np.ndarray], chunk: int = 64,
                     source: str = "sample_submission.csv") -> pd.DataFrame:
    """Encode the masks of every row of `sample`, in the sample's order.

    Args:
        sample: the sample submission (string cells).
        layout: from `detect_layout`.
        classes: class names, the channel order of the masks.
        masks_of: image ids -> binary masks `(n, C, H, W)` (post-processed predictions).
        chunk: images per call of `masks_of`.
        source: the name used in errors.

    Returns:
        A frame with the sample's header and rows, EncodedPixels filled in; every cell was decoded
        again and compared with its mask.
    """
    pairs = row_pairs(sample, layout, classes, source)
    channel = {name: index for index, name in enumerate(classes)}
    rows_of: dict[str, list[int]] = {}
    for row, (image_id, _) in enumerate(pairs):
        rows_of.setdefault(image_id, []).append(row)
    encoded = [layout.empty] * len(sample)
    images = list(rows_of)
    for start in range(0, len(images), chunk):
        batch = images[start:start + chunk]
        masks = np.asarray(masks_of(batch))
        if masks.shape[:2] != (len(batch), len(classes)):
            raise ValueError(f"masks_of returned shape {masks.shape} for {len(batch)} images of {len(classes)} classes")
        for image_id, image_masks in zip(batch, masks, strict=True):
            for row in rows_of[image_id]:
                mask = image_masks[channel[pairs[row][1]]] != 0
                text = layout.encode(mask)
                # round trip: what the file will say must decode to the mask it came from
                if not np.array_equal(layout.decode(text, mask.shape) != 0, mask):
                    raise DataError(f"row {row + 2} ({image_id}, class {pairs[row][1]}): the encoded mask does "
                                    "not decode to the predicted mask; the RLE settings (data.relative_rle, "
                                    "data.rle_order) disagree")
                encoded[row] = text
    frame = sample[list(layout.header)].copy()
    frame[ENCODED] = encoded
    return frame


def validate_submission(frame: pd.DataFrame, sample: pd.DataFrame, layout: Layout, shape: Sequence[int]) -> None:
    """Check a submission before it is written; DataError says what is wrong and where.

    Checks, in order: the header; every sample row present once and no extra rows; the sample's row
    order; every RLE well-formed and inside a `shape` image (`build_submission` has already checked
    that each decodes to its mask).
    """
    if not len(sample):
        raise DataError("the sample submission has no rows, so the submission would have none; check "
                        "data.sample_submission (a header-only file?)")
    if tuple(frame.columns) != layout.header:
        raise DataError(f"submission header {','.join(map(str, frame.columns))} differs from the sample's "
                        f"{','.join(layout.header)}")
    keys = _keys(frame, layout)
    sample_keys = _keys(sample, layout)
    counts = pd.Series(keys, dtype=object).value_counts()
    if (counts > 1).any():
        dup = counts.index[counts > 1][0]
        raise DataError(f"submission has duplicate rows for {_show(dup)} ({counts[dup]} rows); keep one per key")
    present, expected = set(keys), set(sample_keys)
    missing = [key for key in sample_keys if key not in present]
    if missing:
        raise DataError(f"submission lacks {len(missing)} rows of the sample, e.g. {_show(missing[0])}")
    extra = [key for key in keys if key not in expected]
    if extra:
        raise DataError(f"submission has {len(extra)} rows not in the sample, e.g. {_show(extra[0])}")
    if keys != sample_keys:
        row = next(i for i, (a, b) in enumerate(zip(keys, sample_keys, strict=True)) if a != b)
        raise DataError(f"submission row {row + 2} is {_show(keys[row])} but the sample has {_show(sample_keys[row])} "
                        "there; keep the sample's row order")
    for row, text in enumerate(frame[ENCODED].tolist()):
        try:
            rle.validate(str(text), shape, relative=layout.relative)
        except DataError as exc:
            raise DataError(f"submission row {row + 2} ({_show(keys[row])}): {exc}") from None


def _keys(frame: pd.DataFrame, layout: Layout) -> list[str]:
    columns = [c for c in layout.header if c != ENCODED]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"submission lacks column {missing[0]}; the header must be {','.join(layout.header)}")
    return frame[columns].astype(str).agg("\t".join, axis=1).tolist() if len(frame) else []


def _show(key: str) -> str:
    return "/".join(repr(part) for part in key.split("\t"))


def write_submission(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the CSV atomically (temporary name, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path




def decode_rows(frame: pd.DataFrame, layout: Layout, classes: Sequence[str], shape: Sequence[int]
                ) -> tuple[list[str], Callable[[list[str]], np.ndarray]]:
    """The images of a submission (in row order) and a function `image ids -> (n, C, H, W)` decoded masks."""
    pairs = row_pairs(frame, layout, classes, "submission")
    channel = {name: index for index, name in enumerate(classes)}
    rows_of: dict[str, list[int]] = {}
    for row, (image_id, _) in enumerate(pairs):
        rows_of.setdefault(image_id, []).append(row)
    cells = frame[ENCODED].tolist()

    def masks_of(image_ids: list[str]) -> np.ndarray:
        out = np.zeros((len(image_ids), len(classes), int(shape[0]), int(shape[1])), dtype=np.uint8)
        for i, image_id in enumerate(image_ids):
            for row in rows_of[image_id]:
                out[i, channel[pairs[row][1]]] |= layout.decode(str(cells[row]), shape)
        return out

    return list(rows_of), masks_of


def score_submission(frame: pd.DataFrame, layout: Layout, classes: Sequence[str], shape: Sequence[int],
                     annotations: Annotations, data_cfg: Any, chunk: int = 64) -> dict[str, Any]:
    """Score a validated submission against known labels (at the submission's resolution).

    Returns:
        `{"score": competition score, "class_dice": {class: mean Dice}, "table": per-class text}`.
    """
    images, predicted = decode_rows(frame, layout, classes, shape)
    known = set(annotations.image_ids)
    unknown = [image_id for image_id in images if image_id not in known]
    if unknown:
        raise DataError(f"the labels have no rows for {len(unknown)} submitted image(s), e.g. {unknown[0]!r}; "
                        "are they the labels of this test set?")
    result = score_masks(images, predicted, lambda ids: truth_masks(annotations, ids, shape, len(classes)),
                         classes, data_cfg, chunk)
    return {key: result[key] for key in ("score", "class_dice", "table")}


def make_submission(cfg: Any, labels: str | os.PathLike | None = None, allow_stale: bool = False) -> dict[str, Any]:
    """Post-process the test store, encode, validate and write `outputs/<exp>/submission.csv`.

    What it was made from (the test store, `thresholds.json`, the sample) goes to `submission.json`.

    Args:
        cfg: the experiment config (`data` says where the sample submission is and how RLE is written).
        labels: a labels file of the test images (the demo's `test_labels.csv`), in the training CSV's
            format, to score the submission with.
        allow_stale: warn instead of failing when the test store or `thresholds.json` no longer match
            the checkpoints / OOF on disk (`segfold.probs.provenance`).

    Returns:
        `{"path", "rows", "postprocess" (where the rules came from), "non_empty"}` and, with `labels`,
        the keys of `score_submission`.
    """
    data = cfg.data
    out_dir = cfg.experiment.output_dir
    view = open_test(out_dir, allow_stale=allow_stale)
    store = view.stores[0]
    if list(store.classes) != list(data.classes):
        raise DataError(f"{out_dir / 'test'}: the test store has classes {store.classes} but data.classes is "
                        f"{data.classes}; rerun scripts/predict.py")
    if data.sample_submission is None:
        raise DataError("data.sample_submission is not set: a submission takes its header and row order from it")
    sample_path = data.root_path / data.sample_submission
    sample = read_csv_strings(sample_path)
    layout = detect_layout(sample.columns, relative=data.relative_rle, order=data.rle_order)
    images = dict.fromkeys(image_id for image_id, _ in row_pairs(sample, layout, data.classes, str(sample_path)))
    in_store = set(store.image_ids)
    missing = [image_id for image_id in images if image_id not in in_store]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {sample_path.name} are not in the test store "
                        f"{out_dir / 'test'} (e.g. {missing[0]!r}); rerun scripts/predict.py")
    params, source = postprocess_for(cfg, store.classes, allow_stale=allow_stale)
    if source != "config":
        mismatch = tta_mismatch((read_record(source) or {}).get("oof_tta"), view.tta)
        if mismatch:
            logger.warning("warning: %s", mismatch)

    def masks_of(image_ids: list[str]) -> np.ndarray:
        rows = np.array([store.row_of(image_id) for image_id in image_ids], dtype=np.int64)
        cls_probs = store.cls[rows] if store.cls is not None else None
        return apply_postprocess_batch(np.asarray(store.probs[rows]), params, cls_probs)

    frame = build_submission(sample, layout, data.classes, masks_of, source=str(sample_path))
    shape = store.shape[2:]
    validate_submission(frame, sample, layout, shape)
    path = write_submission(frame, out_dir / "submission.csv")
    inputs = view.input_entries() + ([input_entry(source)] if source != "config" else [])
    write_json_atomic(out_dir / "submission.json", {"provenance": new_record(
        "make_submission", cfg, inputs=inputs, folds=view.folds, sample=str(sample_path), rows=len(frame),
        postprocess=source)})
    empty = frame[ENCODED].astype(str).str.strip().isin(["", "-1"])
    result: dict[str, Any] = {"path": str(path), "rows": len(frame), "postprocess": source,
                              "non_empty": int((~empty).sum())}
    if labels is not None:
        label_cfg = data.model_copy(update={"test_labels": str(Path(labels).resolve())})
        result.update(score_submission(frame, layout, data.classes, shape, read_test_labels(label_cfg), data))
    return result
