"""Config section `data`: where the competition data is and how it is laid out.

The defaults describe the synthetic demo competition (`input/demo/`, written on first use by
`segfold.data.demo.ensure_demo_data`). A Kaggle competition sets `root`, `format`, `classes` and the
column names; see DESIGN.md (Data) for one example per format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from segfold.config.base import StrictModel
from segfold.data.formats import CSV_FORMATS

Size = tuple[int, int]

# Where each format keeps its labels:
#   csv_long      ImageId,ClassId,EncodedPixels; only non-empty (image, class) rows (Severstal re-released)
#   csv_combined  ImageId_ClassId,EncodedPixels; one row per image and class (Severstal original, Clouds)
#   csv_instances ImageId,EncodedPixels; one row per instance, merged per image (SIIM-ACR)
#   png_binary    one 0/non-zero PNG per image (`mask_pattern` with `{stem}`), or per image and class (`{class}`)
#   png_index     one index-map PNG per image; `class_values` maps labels to classes, `ignore_label` is ignored
Format = Literal["csv_long", "csv_combined", "csv_instances", "png_binary", "png_index"]


class FoldsConfig(StrictModel):
    """How `scripts/make_folds.py` splits the training images."""

    n_folds: int = Field(5, ge=2)
    # kfold | stratified (on the set of classes present, or area bins) | multilabel (per-class presence,
    # iterative stratification) | group | stratified_group
    method: Literal["kfold", "stratified", "multilabel", "group", "stratified_group"] = "multilabel"
    stratify_on: Literal["classes", "area"] = "classes"
    area_bins: int = Field(4, ge=2)
    group_column: str | None = None
    group_regex: str | None = None
    seed: int | None = None
    path: str | None = None
    # a share of the images that no fold trains or validates on (fold -1 in folds.csv), split off
    # first with the same method (stratification, groups); tune_thresholds and blend report it
    holdout: float = Field(0.0, ge=0.0, le=0.5)

    @model_validator(mode="after")
    def _groups_named(self) -> FoldsConfig:
        if self.method in ("group", "stratified_group") and not (self.group_column or self.group_regex):
            raise ValueError(f"method '{self.method}' needs group_column (a CSV column) or group_regex "
                             "(a pattern on ImageId, e.g. '^([^_]+)_')")
        if self.group_column and self.group_regex:
            raise ValueError("set group_column or group_regex, not both")
        return self


TransformSpec = dict[str, Any]

DEFAULT_TRAIN_AUGMENT: list[TransformSpec] = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "VerticalFlip", "p": 0.5},
    {"name": "Affine", "scale": [0.9, 1.1], "translate_percent": [-0.0625, 0.0625], "rotate": [-10, 10], "p": 0.5},
    {"name": "RandomBrightnessContrast", "brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.5},
]


class AugmentConfig(StrictModel):
    """albumentations pipelines: lists of `{name: <transform class>, <argument>: value, ...}`.

    Compositions (`OneOf`, `SomeOf`, `Sequential`) take their children under `transforms:`.
    """

    train: list[TransformSpec] = Field(default_factory=lambda: [dict(t) for t in DEFAULT_TRAIN_AUGMENT])
    valid: list[TransformSpec] = []

    @field_validator("train", "valid")
    @classmethod
    def _named(cls, specs: list[TransformSpec]) -> list[TransformSpec]:
        for i, spec in enumerate(specs):
            if not isinstance(spec.get("name"), str):
                raise ValueError(f"entry {i} has no 'name' (write {{name: HorizontalFlip, p: 0.5}})")
        return specs


class ShareRamp(StrictModel):
    """A positive share that moves linearly from `start` (first epoch) to `end` (last epoch)."""

    start: float = Field(ge=0.0, le=1.0)
    end: float = Field(ge=0.0, le=1.0)


class SamplerConfig(StrictModel):
    """`positive_share`: fraction of images with any mask in every batch (None: plain shuffling).

    A number holds the share all run long; `{start: 0.8, end: 0.4}` lets it fall (or rise) linearly
    over the epochs (`share_at`).
    """

    positive_share: Annotated[float, Field(ge=0.0, le=1.0)] | ShareRamp | None = None

    def share_at(self, epoch: int, epochs: int) -> float | None:
        """The share of 1-based `epoch` of `epochs` (None without a positive-share sampler)."""
        share = self.positive_share
        if share is None or isinstance(share, float):
            return share
        fraction = (epoch - 1) / (epochs - 1) if epochs > 1 else 0.0
        return share.start + (share.end - share.start) * min(max(fraction, 0.0), 1.0)


class PseudoConfig(StrictModel):
    """Pseudo-labels: confident test predictions added to every fold's training batches.

    `scripts/pseudo_label.py` keeps a test image when at least `confident` of its pixels (over every
    class) have p < `low` or p > `high`, and writes its masks, binarised like the submission, to
    `outputs/<exp>/pseudo/` in the competition's own layout (`format`). Training with `path` set (that
    folder) draws `share` of each batch from them; they never enter validation, the OOF or the folds file.
    """

    path: str | None = None
    share: float = Field(0.25, gt=0.0, lt=1.0)
    low: float = Field(0.1, ge=0.0, lt=0.5)
    high: float = Field(0.9, gt=0.5, le=1.0)
    confident: float = Field(0.98, gt=0.0, le=1.0)


class DataConfig(StrictModel):
    root: str = "input/demo"
    format: Format = "csv_long"
    train_csv: str | None = "train.csv"
    train_images: str = "train_images"
    test_images: str = "test_images"
    train_masks: str = "train_masks"
    mask_pattern: str = "{stem}.png"
    sample_submission: str | None = "sample_submission.csv"
    test_labels: str | None = "test_labels.csv"
    image_column: str = "ImageId"
    class_column: str = "ClassId"
    rle_column: str = "EncodedPixels"
    combined_column: str = "ImageId_ClassId"
    image_suffix: str = ""
    mode: Literal["binary", "multiclass", "multilabel"] = "multilabel"
    classes: list[str] = ["1", "2", "3", "4"]
    class_values: list[int | list[int]] | None = None
    background: str | None = None
    ignore_label: int | None = None
    ignore_index: int = Field(255, ge=0, le=255)
    image_shape: Size | None = None
    image_size: Size | None = None
    metric_size: Size | None = None
    rle_order: Literal["F", "C"] = "F"
    relative_rle: bool = False
    metric: Literal["dice_pairs", "dice_image", "tgs_iou"] = "dice_pairs"
    empty_score: float = 1.0
    folds: FoldsConfig = FoldsConfig()
    augment: AugmentConfig = AugmentConfig()
    sampler: SamplerConfig = SamplerConfig()
    pseudo: PseudoConfig = PseudoConfig()

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, classes: list[str]) -> list[str]:
        if not classes:
            raise ValueError("list at least one class")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be unique, got {classes}")
        return classes

    @field_validator("image_shape", "image_size", "metric_size")
    @classmethod
    def _positive_size(cls, size: Size | None) -> Size | None:
        if size is not None and min(size) <= 0:
            raise ValueError(f"sizes are [height, width] with positive sides, got {list(size)}")
        return size

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.mode == "binary" and len(self.classes) != 1:
            raise ValueError(f"mode 'binary' takes exactly one class, got {self.classes} (use 'multilabel')")
        if self.class_values is not None and len(self.class_values) != len(self.classes):
            raise ValueError(f"class_values has {len(self.class_values)} entries for {len(self.classes)} classes")
        if self.format == "png_binary" and len(self.classes) > 1 and "{class}" not in self.mask_pattern:
            raise ValueError("png_binary with several classes needs '{class}' in mask_pattern, "
                             "e.g. '{class}/{stem}.png'")
        if self.mode == "multiclass" and self.format != "png_index" and self.background not in self.classes:
            raise ValueError(f"multiclass from per-class masks needs background set to one of the classes "
                             f"{self.classes} (the label of pixels no mask covers)")
        if self.format in CSV_FORMATS and self.train_csv is None:
            raise ValueError(f"format '{self.format}' reads its labels from train_csv; set it")
        scored = [c for c in self.classes if c != self.background]
        if self.metric in ("dice_image", "tgs_iou") and len(scored) > 1:
            raise ValueError(f"metric '{self.metric}' scores one mask per image, but {len(scored)} classes are "
                             f"scored ({scored}); use metric 'dice_pairs' for several classes")
        return self

    _base_dir: Path | None = PrivateAttr(None)  # where a relative root starts; set once by load_config

    def resolve_paths(self, base_dir: str | Path) -> DataConfig:
        """Take a relative `root` from `base_dir` (the repository folder); `load_config` calls it once."""
        self._base_dir = Path(base_dir)
        return self

    @property
    def root_path(self) -> Path:
        """`root` as a path: a relative root starts at the folder `resolve_paths` was given (by
        `load_config` / `validate_config`: the repository folder), else at the working directory."""
        root = Path(self.root).expanduser()
        return root if root.is_absolute() or self._base_dir is None else self._base_dir / root

    @property
    def num_classes(self) -> int:
        """Output channels of the model: one per class in every mode."""
        return len(self.classes)
