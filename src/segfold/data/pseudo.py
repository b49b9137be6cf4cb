"""Pseudo-labelled test images: their folder, in the competition's own layout, and reading it as training data.

`outputs/<exp>/pseudo/` is a competition root of the experiment's `data.format`: `train_images/`
(a link to each chosen test image, a copy where links cannot be made), the labels as that format
keeps them (`train.csv`, named as `data.train_csv`, for the CSV formats; `train_masks/` following
`data.mask_pattern` for the PNG ones; written by `segfold.data.writers`) and `pseudo.json` (the
layout, the classes, the chosen `image_ids`, the folder the images came from, the rule that chose
them and the counts). `read_pseudo` reads it back with `formats.read_train`, whatever the format.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segfold.data.formats import CSV_FORMATS, Annotations, image_path, read_train
from segfold.data.images import name_list
from segfold.data.writers import LabelWriter
from segfold.errors import ConfigError, DataError, OutputError
from segfold.io import ensure_dir, write_json_atomic

if TYPE_CHECKING:
    from segfold.config.data import DataConfig

PSEUDO_INFO = "pseudo.json"
IMAGES = "train_images"
MASKS = "train_masks"
# the data keys that say how a folder's labels are laid out (copied from the writer's config to the reader's)
LAYOUT_KEYS = ("format", "train_csv", "mask_pattern", "image_column", "class_column", "rle_column", "combined_column",
               "image_suffix", "rle_order", "relative_rle", "class_values", "ignore_label", "background")


def pseudo_folder(data_cfg: DataConfig) -> Path:
    """`data.pseudo.path` (relative paths from the working directory, like `outputs/`)."""
    if data_cfg.pseudo.path is None:
        raise ConfigError("data.pseudo.path is not set")
    return Path(data_cfg.pseudo.path)


def layout_of(data_cfg: DataConfig) -> dict[str, Any]:
    """The layout keys of a pseudo folder written for `data_cfg` (its CSV named like `data.train_csv`)."""
    layout = {key: getattr(data_cfg, key) for key in LAYOUT_KEYS}
    layout["train_csv"] = Path(data_cfg.train_csv).name if data_cfg.format in CSV_FORMATS else None
    return layout


def pseudo_data_config(data_cfg: DataConfig, folder: Path, layout: dict[str, Any]) -> DataConfig:
    """The data config that reads the pseudo folder `folder` written in `layout` (see `layout_of`)."""
    return data_cfg.model_copy(update={
        **layout, "root": str(folder.resolve()), "train_images": IMAGES, "train_masks": MASKS, "image_shape": None,
        "sample_submission": None, "test_labels": None,
    })


def read_pseudo(data_cfg: DataConfig) -> tuple[DataConfig, Annotations]:
    """The pseudo-label data config and labels named by `data.pseudo.path`.

    Raises:
        DataError: the folder is not one `scripts/pseudo_label.py` wrote, holds no image, is of other
            classes, or no longer holds the images it lists.
    """
    folder = pseudo_folder(data_cfg)
    info_path = folder / PSEUDO_INFO
    if not info_path.is_file():
        raise DataError(f"data.pseudo.path = {folder}: no {PSEUDO_INFO} there; write it with "
                        "scripts/pseudo_label.py --config ... (or fix the path)")
    info: dict[str, Any] = json.loads(info_path.read_text())
    if "layout" not in info:
        raise DataError(f"{info_path}: written by an older segfold (labels without their layout); write the folder "
                        "again with scripts/pseudo_label.py")
    if list(info.get("classes", [])) != list(data_cfg.classes):
        raise DataError(f"{info_path}: pseudo-labels of classes {info.get('classes')} do not fit data.classes "
                        f"{data_cfg.classes}")
    if not info["image_ids"]:
        raise DataError(f"{info_path}: no test image was confident enough; lower data.pseudo.confident (and "
                        "write the folder again) or drop data.pseudo")
    pseudo_cfg = pseudo_data_config(data_cfg, folder, info["layout"])
    annotations = read_train(pseudo_cfg, require_positives=False)
    if set(annotations.image_ids) != set(info["image_ids"]):
        changed = sorted(set(annotations.image_ids) ^ set(info["image_ids"]))
        raise DataError(f"{folder}: the images there differ from the {len(info['image_ids'])} that {PSEUDO_INFO} "
                        f"lists ({name_list(changed)}); write the folder again with scripts/pseudo_label.py")
    return pseudo_cfg, annotations


class PseudoWriter:
    """Write a pseudo folder image by image into a temporary folder, moved into place by `commit`.

    An existing folder is replaced only when it is a pseudo folder (it holds `pseudo.json`) or empty.

    Example:
        with PseudoWriter(Path("outputs/exp/pseudo"), cfg.data) as writer:
            writer.add("test_0001.jpg", masks)  # uint8 (C, H, W) at the image's native size
            writer.commit({"rule": "..."})
    """

    def __init__(self, folder: Path, data_cfg: DataConfig) -> None:
        self.folder, self.data_cfg = Path(folder), data_cfg
        if self.folder.exists() and not _replaceable(self.folder):
            raise OutputError(f"{self.folder} exists and is not a pseudo folder (no {PSEUDO_INFO}); choose another "
                              "--output or remove it")
        ensure_dir(self.folder.parent, "pseudo folder")
        self.tmp = self.folder.parent / f".{self.folder.name}.{os.getpid()}.tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.layout = layout_of(data_cfg)
        self.labels = LabelWriter(pseudo_data_config(data_cfg, self.tmp, self.layout))
        self.image_ids: list[str] = []
        ensure_dir(self.tmp / IMAGES)

    def add(self, image_id: str, masks: np.ndarray) -> None:
        """Add a test image (linked from `data.test_images`) and its masks."""
        source = image_path(self.data_cfg, image_id, "test").resolve()
        target = self.tmp / IMAGES / f"{image_id}{self.data_cfg.image_suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(source, target)
        except OSError:  # a file system without links: copy
            shutil.copy2(source, target)
        self.labels.add(image_id, masks)
        self.image_ids.append(image_id)

    def commit(self, info: dict[str, Any]) -> Path:
        """Write the labels and `pseudo.json` (with `info`), then move the folder into place."""
        self.labels.close()
        write_json_atomic(self.tmp / PSEUDO_INFO, {
            **info, "classes": list(self.data_cfg.classes), "layout": self.layout,
            "images": str((self.data_cfg.root_path / self.data_cfg.test_images).resolve()),
            "image_ids": list(self.image_ids)})
        old = self.folder.parent / f".{self.folder.name}.{os.getpid()}.old"
        if self.folder.exists():
            os.replace(self.folder, old)
        os.replace(self.tmp, self.folder)
        shutil.rmtree(old, ignore_errors=True)
        return self.folder

    def __enter__(self) -> PseudoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)  # gone after a commit; an interrupted write leaves nothing


def _replaceable(folder: Path) -> bool:
    return folder.is_dir() and ((folder / PSEUDO_INFO).is_file() or not any(folder.iterdir()))


def write_pseudo(folder: Path, data_cfg: DataConfig, items: Iterable[tuple[str, np.ndarray]],
                 info: dict[str, Any]) -> Path:
    """Write a pseudo folder from `(test image id, (C, H, W) masks at native size)` pairs."""
    with PseudoWriter(folder, data_cfg) as writer:
        for image_id, masks in items:
            writer.add(image_id, masks)
        return writer.commit(info)
