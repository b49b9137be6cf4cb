"""Readers for the label layouts of Kaggle segmentation competitions, all giving one `Annotations`.

`read_train(data_cfg)` checks what it reads and names what is wrong: images listed but missing,
unreadable or truncated image files, masks whose size differs from their image, malformed RLE strings
(with the CSV line and ImageId), unknown class names, labels without a single positive pixel (and,
as warnings, classes without one and images whose size differs from nearly all others'). Images on
disk without a row are empty images in the `csv_long` layout (Severstal writes no row for a clean
image) and a DataWarning elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from segfold.data import rle as rle_codec
from segfold.data.images import (
    check_complete,
    check_sizes,
    image_shapes,
    list_images,
    name_list,
    read_label_png,
    unique_in_order,
    warn_data,
)
from segfold.errors import DataError

CSV_FORMATS = ("csv_long", "csv_combined", "csv_instances")  # the data.format values read from a CSV

if TYPE_CHECKING:
    from segfold.config.data import DataConfig

SPLIT_FOLDERS = {"train": "train_images", "test": "test_images"}


class MaskSizeError(DataError):
    """A mask file whose size differs from its image's."""

    def __init__(self, image_id: str, mask_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> None:
        self.item = f"{image_id} (mask {mask_shape[0]}x{mask_shape[1]}, image {image_shape[0]}x{image_shape[1]})"
        super().__init__(f"mask of {self.item} differs in size from its image")
_UNLISTED = np.iinfo(np.uint16).max


def image_path(data_cfg: DataConfig, image_id: str, split: str = "train") -> Path:
    """The file of an image: `<root>/<train_images|test_images>/<image_id><image_suffix>`."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
    return data_cfg.root_path / getattr(data_cfg, SPLIT_FOLDERS[split]) / f"{image_id}{data_cfg.image_suffix}"


def mask_path(data_cfg: DataConfig, image_id: str, class_name: str | None = None) -> Path:
    """The mask PNG of an image (and class) under `<root>/<train_masks>/` following `mask_pattern`."""
    name = data_cfg.mask_pattern.format(stem=Path(image_id).stem, id=image_id, **{"class": class_name or ""})
    return data_cfg.root_path / data_cfg.train_masks / name


def read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """A CSV read as text (empty cells stay ""), with a DataError naming the file and its missing columns."""
    if not path.is_file():
        raise DataError(f"CSV file not found: {path} (check data.root and the file name in the data config)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be parsed as CSV: {exc}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(frame.columns)} "
                        "(set the column names in the data config: image_column, class_column, rle_column, "
                        "combined_column)")
    return frame


@dataclass
class Annotations:
    """The labels of a set of images, decoded on demand.

    Attributes:
        image_ids: the images, in reading order.
        shapes: (N, 2) native (height, width) of each image.
        areas: (N, C) labelled pixels per class (at native size).
        rles: for the CSV formats, per image and class the encoded strings (several merge into one mask).
        metadata: other CSV columns, one row per image (indexed by ImageId).
    """

    data_cfg: DataConfig
    split: str
    image_ids: list[str]
    shapes: np.ndarray
    areas: np.ndarray
    rles: list[list[list[str]]] | None = None
    metadata: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        self._rows = {image_id: i for i, image_id in enumerate(self.image_ids)}

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def classes(self) -> list[str]:
        return list(self.data_cfg.classes)

    @property
    def presence(self) -> np.ndarray:
        """(N, C) bool: which classes each image holds."""
        return self.areas > 0

    def index(self, image_id: str) -> int:
        """Row of an image id; KeyError naming it when it is not in the set."""
        try:
            return self._rows[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the {self.split} annotations") from None

    def mask(self, image_id: str) -> np.ndarray:
        """The label of one image at native size.

        Returns:
            uint8 (C, H, W) of 0/1 in the binary and multilabel modes; uint8 (H, W) class indices in
            the multiclass mode (`ignore_index` where the source says ignore).
        """
        cfg, row = self.data_cfg, self.index(image_id)
        height, width = (int(v) for v in self.shapes[row])
        if cfg.format == "png_index":
            values = read_label_png(mask_path(cfg, image_id))
            if values.shape[:2] != (height, width):
                raise MaskSizeError(image_id, values.shape, (height, width))
            return _index_map_to_mask(cfg, values, image_id)
        if self.rles is not None:
            decode = rle_codec.decode_relative if cfg.relative_rle else rle_codec.decode
            channels = np.zeros((len(cfg.classes), height, width), dtype=np.uint8)
            for c, strings in enumerate(self.rles[row]):
                for text in strings:
                    channels[c] |= decode(text, (height, width), order=cfg.rle_order)
        else:
            channels = np.zeros((len(cfg.classes), height, width), dtype=np.uint8)
            for c, name in enumerate(cfg.classes):
                values = read_label_png(mask_path(cfg, image_id, name))
                if values.shape[:2] != (height, width):
                    raise MaskSizeError(image_id, values.shape, (height, width))
                channels[c] = values.reshape(height, width, -1).any(axis=2)
        if cfg.mode != "multiclass":
            return channels
        labels = np.full((height, width), cfg.classes.index(cfg.background), dtype=np.uint8)
        for c, name in enumerate(cfg.classes):
            if name != cfg.background:
                labels[channels[c] > 0] = c  # NOTE: where classes overlap, the later class wins
        return labels


def _label_lut(cfg: DataConfig) -> np.ndarray:
    """Index-map value -> class index (ignore_index for ignore_label, _UNLISTED for anything else)."""
    lut = np.full(_UNLISTED + 1, _UNLISTED, dtype=np.uint16)
    values = cfg.class_values if cfg.class_values is not None else list(range(len(cfg.classes)))
    for c, value in enumerate(values):
        lut[np.atleast_1d(np.asarray(value, dtype=np.int64))] = c
    if cfg.ignore_label is not None:
        lut[cfg.ignore_label] = cfg.ignore_index
    return lut


def _index_map_to_mask(cfg: DataConfig, values: np.ndarray, image_id: str) -> np.ndarray:
    labels = _label_lut(cfg)[values]
    if cfg.mode == "multiclass":
        unlisted = labels == _UNLISTED
        if unlisted.any():
            raise DataError(f"mask of {image_id} has label(s) {sorted(set(np.unique(values[unlisted]).tolist()))} "
                            "that are neither in data.class_values nor data.ignore_label")
        return labels.astype(np.uint8)
    return (labels[None] == np.arange(len(cfg.classes))[:, None, None]).astype(np.uint8)


def _areas_from_masks(annotations: Annotations) -> np.ndarray:
    """(N, C) labelled pixels, read from the mask files (and their sizes checked against the images)."""
    cfg, n_classes = annotations.data_cfg, len(annotations.data_cfg.classes)
    areas = np.zeros((len(annotations), n_classes), dtype=np.int64)
    wrong = []
    for i, image_id in enumerate(annotations.image_ids):
        try:
            mask = annotations.mask(image_id)
        except MaskSizeError as exc:
            wrong.append(exc.item)
            continue
        if mask.ndim == 3:
            areas[i] = mask.reshape(n_classes, -1).sum(axis=1)
        else:
            areas[i] = np.bincount(mask.ravel(), minlength=256)[:n_classes]
    if wrong:
        raise DataError(f"{len(wrong)} mask(s) in {cfg.root_path / cfg.train_masks} differ in size from their image: "
                        f"{name_list(wrong)}")
    return areas


def _rows_from_csv(cfg: DataConfig, path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The label rows as a frame with `image`, `class`, `rle`, `line` columns, and the other column names."""
    if cfg.format == "csv_combined":
        frame = read_csv(path, [cfg.combined_column, cfg.rle_column])
        combined = frame[cfg.combined_column]
        no_class = combined[~combined.str.contains("_", regex=False)]
        if len(no_class):
            raise DataError(f"{path} line {no_class.index[0] + 2}: {cfg.combined_column} {no_class.iloc[0]!r} has "
                            "no '_<class>' suffix (expected e.g. '0002cc93b.jpg_1' or '0011165.jpg_Fish')")
        parts = combined.str.rsplit("_", n=1, expand=True)
        rows = pd.DataFrame({"image": parts[0], "class": parts[1], "rle": frame[cfg.rle_column]})
        used = [cfg.combined_column, cfg.rle_column]
    elif cfg.format == "csv_instances":
        frame = read_csv(path, [cfg.image_column, cfg.rle_column])
        rows = pd.DataFrame({"image": frame[cfg.image_column], "class": cfg.classes[0], "rle": frame[cfg.rle_column]})
        used = [cfg.image_column, cfg.rle_column]
    else:
        frame = read_csv(path, [cfg.image_column, cfg.class_column, cfg.rle_column])
        rows = pd.DataFrame({"image": frame[cfg.image_column], "class": frame[cfg.class_column],
                             "rle": frame[cfg.rle_column]})
        used = [cfg.image_column, cfg.class_column, cfg.rle_column]
    rows["line"] = np.arange(len(rows)) + 2  # line 1 is the header
    unknown = rows[~rows["class"].isin(cfg.classes)]
    if len(unknown):
        bad = unknown.iloc[0]
        raise DataError(f"{path} line {bad['line']} (ImageId {bad['image']}): class {bad['class']!r} is not one of "
                        f"data.classes {cfg.classes} ({len(unknown)} such row(s))")
    if cfg.format != "csv_instances":
        repeated = rows[rows.duplicated(["image", "class"], keep=False)]
        if len(repeated):
            lines = repeated["line"].tolist()[:2]
            raise DataError(f"{path} lines {lines}: image {repeated.iloc[0]['image']} class "
                            f"{repeated.iloc[0]['class']!r} has more than one row")
    extra = frame.drop(columns=used)
    extra.insert(0, "image", rows["image"])
    return rows, extra


def _read_csv_labels(cfg: DataConfig, path: Path, split: str, image_ids: list[str] | None) -> Annotations:
    rows, extra = _rows_from_csv(cfg, path)
    listed = unique_in_order(rows["image"])
    folder = cfg.root_path / getattr(cfg, SPLIT_FOLDERS[split])
    if image_ids is None:
        if cfg.format == "csv_long":
            # images without a row hold no class: they are part of the set, empty
            on_disk = list_images(folder, cfg.image_suffix)
            image_ids = unique_in_order([*on_disk, *listed])
        else:
            image_ids = listed
            unlisted = sorted(set(list_images(folder, cfg.image_suffix)) - set(listed))
            if unlisted:
                warn_data(f"{len(unlisted)} image(s) in {folder} have no row in {path.name} and are left out: "
                          f"{name_list(unlisted)}")
    else:
        strays = sorted(set(listed) - set(image_ids))
        if strays:
            raise DataError(f"{path}: {len(strays)} image(s) are not in the {split} image list: {name_list(strays)}")
    shapes = _shapes(cfg, image_ids, split, f"{path.name}")
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    class_index = {name: c for c, name in enumerate(cfg.classes)}
    rles: list[list[list[str]]] = [[[] for _ in cfg.classes] for _ in image_ids]
    areas = np.zeros((len(image_ids), len(cfg.classes)), dtype=np.int64)
    for image_id, class_name, text, line in rows[["image", "class", "rle", "line"]].itertuples(index=False):
        i, c = position[image_id], class_index[class_name]
        try:
            area = rle_codec.validate(text, tuple(shapes[i]), relative=cfg.relative_rle)
        except DataError as exc:
            raise DataError(f"{path} line {line} (ImageId {image_id}, class {class_name}): {exc}") from None
        if area:
            rles[i][c].append(text)
            areas[i, c] += area
    if cfg.mode == "multiclass":
        b = cfg.classes.index(cfg.background)
        # rows of the background class itself (some CSVs list every class) do not count as covered
        covered = areas.sum(axis=1) - areas[:, b]
        areas[:, b] = np.clip(shapes.prod(axis=1) - covered, 0, None)  # exact unless classes overlap
    metadata = extra.drop_duplicates("image").set_index("image").reindex(image_ids)
    return Annotations(cfg, split, image_ids, shapes, areas, rles, metadata)


def _shapes(cfg: DataConfig, image_ids: list[str], split: str, where: str) -> np.ndarray:
    paths = [image_path(cfg, image_id, split) for image_id in image_ids]
    shapes = image_shapes(paths, image_ids, where) if image_ids else np.zeros((0, 2), dtype=np.int64)
    folder = paths[0].parent if paths else where
    if cfg.image_shape is not None:
        check_sizes(image_ids, shapes, cfg.image_shape, f"image(s) in {folder}")
    elif cfg.format in CSV_FORMATS:
        _warn_odd_sizes(image_ids, shapes, folder)
    return shapes


def _warn_odd_sizes(image_ids: list[str], shapes: np.ndarray, folder: Path | str) -> None:
    """DataWarning naming the few images whose size differs from nearly all others'.

    An RLE is decoded at its image's size; one that was encoded for the common size but belongs to a
    larger image stays within it (only a run past the end is an error), so the mask lands in the
    wrong place without a word. Sets of images with many sizes are left alone.
    """
    if len(image_ids) < 2:
        return
    sizes, counts = np.unique(shapes, axis=0, return_counts=True)
    common = sizes[np.argmax(counts)]
    odd = [f"{image_id} ({h}x{w})" for image_id, (h, w) in zip(image_ids, shapes, strict=True)
           if (h, w) != tuple(common)]
    if odd and counts.max() >= 0.8 * len(image_ids):
        warn_data(f"{len(odd)} image(s) in {folder} differ in size from the other {counts.max()} "
                  f"({common[0]}x{common[1]}): {name_list(odd)}; their RLE masks are decoded at their own size, so "
                  f"check them (set data.image_shape: [{common[0]}, {common[1]}] to make this an error)")


def check_positives(annotations: Annotations, source: str) -> None:
    """DataError when no image has any labelled pixel; DataWarning naming each class without one.

    In the multiclass mode the background class (in every image) does not count.
    """
    cfg = annotations.data_cfg
    foreground = [c for c, name in enumerate(cfg.classes) if not (cfg.mode == "multiclass" and name == cfg.background)]
    counts = annotations.presence[:, foreground].sum(axis=0)
    if len(annotations) and not counts.any():
        raise DataError(f"{source}: none of the {len(annotations)} training images has a labelled pixel of any "
                        f"class {[cfg.classes[c] for c in foreground]}; a model would learn empty masks (is the "
                        "label file empty or header-only? check data.train_csv / data.train_masks and data.classes)")
    empty = [cfg.classes[c] for c, n in zip(foreground, counts, strict=True) if n == 0]
    if empty:
        warn_data(f"{source}: class(es) {empty} have no labelled pixel in any of the {len(annotations)} training "
                  "images; the model cannot learn them (check data.classes and the labels)")


def _read_png_labels(cfg: DataConfig) -> Annotations:
    folder = cfg.root_path / cfg.train_images
    metadata = pd.DataFrame()
    if cfg.train_csv is not None:
        frame = read_csv(cfg.root_path / cfg.train_csv, [cfg.image_column])
        image_ids = unique_in_order(frame[cfg.image_column])
        metadata = frame.drop_duplicates(cfg.image_column).set_index(cfg.image_column).reindex(image_ids)
        unlisted = sorted(set(list_images(folder, cfg.image_suffix)) - set(image_ids))
        if unlisted:
            warn_data(f"{len(unlisted)} image(s) in {folder} have no row in {cfg.train_csv} and are left out: "
                      f"{name_list(unlisted)}")
        where = cfg.train_csv
    else:
        image_ids = list_images(folder, cfg.image_suffix)
        where = str(folder)
    if not image_ids:
        raise DataError(f"no training images found in {folder} (check data.root and data.train_images)")
    names = [None] if cfg.format == "png_index" else cfg.classes
    missing = [str(mask_path(cfg, i, n).relative_to(cfg.root_path)) for i in image_ids for n in names
               if not mask_path(cfg, i, n).is_file()]
    if missing:
        raise DataError(f"{len(missing)} mask file(s) are missing: {name_list(missing)} "
                        f"(check data.train_masks and data.mask_pattern = {cfg.mask_pattern!r})")
    shapes = _shapes(cfg, image_ids, "train", where)
    annotations = Annotations(cfg, "train", image_ids, shapes, np.zeros((len(image_ids), len(cfg.classes)), np.int64),
                              metadata=metadata)
    annotations.areas = _areas_from_masks(annotations)
    return annotations


def read_train(data_cfg: DataConfig, require_positives: bool = True) -> Annotations:
    """Read and check the training labels of a competition in any of the supported layouts.

    Args:
        data_cfg: where the labels are and how they are laid out.
        require_positives: run `check_positives` (off for pseudo-labels, which may all be empty).

    Raises:
        DataError: naming the file, line, ImageId or the list of images at fault.
    """
    if data_cfg.format in CSV_FORMATS:
        source = data_cfg.root_path / data_cfg.train_csv
        annotations = _read_csv_labels(data_cfg, source, "train", None)
    else:
        annotations = _read_png_labels(data_cfg)
        source = data_cfg.root_path / data_cfg.train_masks
    if require_positives:
        check_positives(annotations, str(source))
    return annotations


def read_test_labels(data_cfg: DataConfig) -> Annotations:
    """The labels of the test images where a competition keeps them (`data.test_labels`, the demo does)."""
    if data_cfg.test_labels is None or data_cfg.format not in CSV_FORMATS:
        raise DataError("this data config has no test labels (data.test_labels, in a CSV format)")
    path = data_cfg.root_path / data_cfg.test_labels
    return _read_csv_labels(data_cfg, path, "test", read_test_ids(data_cfg))


def read_test_ids(data_cfg: DataConfig) -> list[str]:
    """Test image ids in the row order of `sample_submission.csv` (or the test folder's, without one)."""
    folder = data_cfg.root_path / data_cfg.test_images
    if data_cfg.sample_submission is None:
        ids = list_images(folder, data_cfg.image_suffix)
        if not ids:
            raise DataError(f"no test images found in {folder} (check data.root and data.test_images)")
        check_complete([image_path(data_cfg, i, "test") for i in ids], ids)
        return ids
    path = data_cfg.root_path / data_cfg.sample_submission
    if data_cfg.format == "csv_combined":
        frame = read_csv(path, [data_cfg.combined_column])
        ids = unique_in_order(frame[data_cfg.combined_column].str.rsplit("_", n=1).str[0])
    else:
        frame = read_csv(path, [data_cfg.image_column])
        ids = unique_in_order(frame[data_cfg.image_column])
    missing = [i for i in ids if not image_path(data_cfg, i, "test").is_file()]
    if missing:
        raise DataError(f"{len(missing)} test image(s) listed in {path.name} are missing from {folder}: "
                        f"{name_list(missing)}")
    check_complete([image_path(data_cfg, i, "test") for i in ids], ids)
    return ids
