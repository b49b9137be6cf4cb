"""Labels written in a competition's own layout: the inverse of `formats.read_train`.

`LabelWriter(data_cfg)` takes the masks of one image at a time, at the image's native size, and
writes under `data_cfg.root` what `read_train(data_cfg)` reads back:

- `csv_long`: `<image_column>,<class_column>,<rle_column>`, one row per non-empty (image, class);
  an image without a row is empty (its file in `train_images` says it exists);
- `csv_combined`: `<combined_column>,<rle_column>`, one row per image and class (`<image>_<class>`),
  an empty cell for an empty mask;
- `csv_instances`: `<image_column>,<rle_column>`, one row per image with its whole mask (`-1` for an
  empty one with `relative_rle`, else an empty cell);
- `png_binary`: a 0/255 PNG per image (and class: `mask_pattern` with `{class}`);
- `png_index`: one index-map PNG per image; class c is written as its `class_values` entry (the
  first of a list), a pixel of no class as the smallest value that names no class and is not
  `ignore_label`.

The RLE cells are written by the encoders the submission uses (`segfold.data.rle`, with
`data.rle_order` and `data.relative_rle`). Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from segfold.data import rle
from segfold.data.formats import CSV_FORMATS, mask_path
from segfold.io import atomic_path

if TYPE_CHECKING:
    from segfold.config.data import DataConfig

PNG_POSITIVE = 255


def encode_cell(data_cfg: DataConfig, mask: np.ndarray) -> str:
    """One mask as the EncodedPixels cell of this data's CSV (relative or absolute RLE, its pixel order)."""
    if data_cfg.relative_rle:
        return rle.encode_relative(mask, data_cfg.rle_order)
    return rle.encode(mask, data_cfg.rle_order)


def index_values(data_cfg: DataConfig) -> tuple[list[int], int]:
    """The index-map value of each class, and the value of a pixel of no class (`png_index`)."""
    listed = data_cfg.class_values if data_cfg.class_values is not None else list(range(len(data_cfg.classes)))
    values = [int(np.atleast_1d(v)[0]) for v in listed]
    taken = {int(v) for entry in listed for v in np.atleast_1d(entry)} | {data_cfg.ignore_label}
    none = next(v for v in range(len(taken) + 1) if v not in taken)
    return values, none


class LabelWriter:
    """Write the labels of images one at a time in the layout of `data_cfg` (see the module docstring).

    Example:
        writer = LabelWriter(cfg)                     # cfg.root: the folder to write
        writer.add("0002cc93b.jpg", masks)            # uint8 (C, H, W) of 0/1 at the native size
        writer.close()                                # the CSV formats write their file here
    """

    def __init__(self, data_cfg: DataConfig) -> None:
        self.cfg = data_cfg
        self.rows: list[tuple[str, ...]] = []
        self.files: list[Path] = []

    def add(self, image_id: str, masks: np.ndarray) -> None:
        """Add the masks of one image.

        Args:
            image_id: the image's id (its file name in `train_images`, less `image_suffix`).
            masks: uint8 `(C, H, W)` of 0/1, one channel per class of `data.classes`; in the
                multiclass mode exactly one class per pixel.

        Raises:
            ValueError: masks of the wrong number of classes, or pixels that the layout cannot hold
                (several classes in one index map, or none in a multiclass one without `ignore_label`).
        """
        cfg = self.cfg
        masks = np.asarray(masks) != 0
        if masks.ndim != 3 or masks.shape[0] != len(cfg.classes):
            raise ValueError(f"{image_id}: masks must be (C, H, W) with C = {len(cfg.classes)} classes, "
                             f"got shape {masks.shape}")
        if cfg.mode == "multiclass" and cfg.format != "png_index":
            covered = masks.sum(axis=0)
            if (covered != 1).any():
                raise ValueError(f"{image_id}: a multiclass mask holds exactly one class per pixel; "
                                 f"{int((covered != 1).sum())} pixel(s) hold none or several")
        if cfg.format == "csv_long":
            self.rows += [(image_id, name, encode_cell(cfg, m)) for name, m in zip(cfg.classes, masks, strict=True)
                          if m.any()]
        elif cfg.format == "csv_combined":
            self.rows += [(f"{image_id}_{name}", encode_cell(cfg, m)) for name, m in zip(cfg.classes, masks,
                                                                                           strict=True)]
        elif cfg.format == "csv_instances":
            self.rows.append((image_id, encode_cell(cfg, masks.any(axis=0))))
        elif cfg.format == "png_binary":
            names: list[str | None] = list(cfg.classes) if "{class}" in cfg.mask_pattern else [None]
            for c, name in enumerate(names):
                self._write_png(mask_path(cfg, image_id, name), masks[c].astype(np.uint8) * PNG_POSITIVE)
        else:
            self._write_png(mask_path(cfg, image_id), self._index_map(image_id, masks))

    def _index_map(self, image_id: str, masks: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        values, none = index_values(cfg)
        covered = masks.sum(axis=0)
        if (covered > 1).any():
            raise ValueError(f"{image_id}: an index map holds one class per pixel, but {int((covered > 1).sum())} "
                             "pixel(s) hold several (keep one class per pixel first)")
        if cfg.mode == "multiclass" and (covered == 0).any():
            if cfg.ignore_label is None:
                raise ValueError(f"{image_id}: {int((covered == 0).sum())} pixel(s) hold no class; a multiclass "
                                 "index map needs one class per pixel (or data.ignore_label)")
            none = cfg.ignore_label
        out = np.full(masks.shape[1:], none, dtype=np.int64)
        for c, value in enumerate(values):
            out[masks[c]] = value
        return out.astype(np.uint8 if out.max(initial=0) < 256 else np.uint16)

    def _write_png(self, path: Path, values: np.ndarray) -> None:
        with atomic_path(path) as tmp:
            Image.fromarray(values).save(tmp)
        self.files.append(path)

    def close(self) -> list[Path]:
        """Write the CSV of the CSV formats; returns every file written."""
        cfg = self.cfg
        if cfg.format in CSV_FORMATS:
            if cfg.format == "csv_long":
                columns = [cfg.image_column, cfg.class_column, cfg.rle_column]
            elif cfg.format == "csv_combined":
                columns = [cfg.combined_column, cfg.rle_column]
            else:
                columns = [cfg.image_column, cfg.rle_column]
            path = cfg.root_path / str(cfg.train_csv)
            with atomic_path(path) as tmp:
                pd.DataFrame(self.rows, columns=columns).to_csv(tmp, index=False)
            self.files.append(path)
        return self.files
