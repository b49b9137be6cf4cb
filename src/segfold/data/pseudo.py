"""Pseudo-labelled test images: their folder layout, and reading them as training data.

`outputs/<exp>/pseudo/` holds `train.csv` in the `csv_long` layout (ImageId, ClassId,
EncodedPixels; one row per non-empty image and class, column-major RLE) and `pseudo.json` (the
chosen `image_ids`, empty ones included, the folder of the test images, the rule that chose them
and the counts). The images stay where they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from segfold.data.formats import Annotations, read_labels_of
from segfold.errors import ConfigError, DataError
from segfold.io import atomic_path, write_json_atomic

if TYPE_CHECKING:
    from segfold.config.data import DataConfig

PSEUDO_CSV = "train.csv"
PSEUDO_INFO = "pseudo.json"


def pseudo_folder(data_cfg: DataConfig) -> Path:
    """`data.pseudo.path` (relative paths from the working directory, like `outputs/`)."""
    if data_cfg.pseudo.path is None:
        raise ConfigError("data.pseudo.path is not set")
    return Path(data_cfg.pseudo.path)


def pseudo_data_config(data_cfg: DataConfig, folder: Path, images: str) -> DataConfig:
    """The data config that reads a pseudo folder: `csv_long` labels there, images in `images`."""
    return data_cfg.model_copy(update={
        "root": str(folder.resolve()), "format": "csv_long", "train_csv": PSEUDO_CSV,
        "train_images": str(Path(images).resolve()), "image_column": "ImageId", "class_column": "ClassId",
        "rle_column": "EncodedPixels", "rle_order": "F", "relative_rle": False, "image_shape": None,
        "sample_submission": None, "test_labels": None,
    })


def read_pseudo(data_cfg: DataConfig) -> tuple[DataConfig, Annotations]:
    """The pseudo-label data config and labels named by `data.pseudo.path`.

    Raises:
        DataError: the folder is not one `scripts/pseudo_label.py` wrote, or holds no image.
    """
    folder = pseudo_folder(data_cfg)
    info_path = folder / PSEUDO_INFO
    if not info_path.is_file():
        raise DataError(f"data.pseudo.path = {folder}: no {PSEUDO_INFO} there; write it with "
                        "scripts/pseudo_label.py --config ... (or fix the path)")
    info: dict[str, Any] = json.loads(info_path.read_text())
    if list(info.get("classes", [])) != list(data_cfg.classes):
        raise DataError(f"{info_path}: pseudo-labels of classes {info.get('classes')} do not fit data.classes "
                        f"{data_cfg.classes}")
    pseudo_cfg = pseudo_data_config(data_cfg, folder, info["images"])
    annotations = read_labels_of(pseudo_cfg, info["image_ids"])
    if len(annotations) == 0:
        raise DataError(f"{folder / PSEUDO_CSV} lists no image: lower data.pseudo.confident or drop data.pseudo")
    return pseudo_cfg, annotations


def write_pseudo(folder: Path, data_cfg: DataConfig, images: Path, rows: list[tuple[str, str, str]],
                 image_ids: list[str], info: dict[str, Any]) -> Path:
    """Write a pseudo folder: `train.csv` (rows of ImageId, ClassId, EncodedPixels) and `pseudo.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / PSEUDO_CSV) as tmp:
        pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(tmp, index=False)
    write_json_atomic(folder / PSEUDO_INFO, {**info, "classes": list(data_cfg.classes),
                                             "images": str(Path(images).resolve()), "image_ids": list(image_ids)})
    return folder
