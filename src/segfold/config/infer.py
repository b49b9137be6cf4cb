"""Config sections `infer` and `postprocess`.

STARTER (owned by inference / post-processing): extend freely; keep these field names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from segfold.config.base import StrictModel


class InferConfig(StrictModel):
    """Test inference (`scripts/predict.py`): folds, test-time augmentation, tiling.

    Probabilities of every augmented copy and of every fold are averaged (never logits). Images larger
    than `tile_size` are predicted in overlapping tiles blended with weights that fall off towards
    the tile borders. The probabilities are stored at `data.metric_size` when it is set (the
    submission resolution, e.g. [350, 525] for Clouds), else at each image's own size.
    """

    folds: list[int] | None = Field(None, description="folds whose checkpoints predict; null = every fold found")
    checkpoint: str = Field("auto", description="checkpoint file in each fold folder; 'auto': the one the fold "
                            "chose (averaged.pt when its train.average won, else best.pt)")
    models: Literal["folds", "full", "both"] = Field(
        "folds", description="the fold models, the full-data fit (outputs/<exp>/full/), or both weighted")
    full_weight: float = Field(0.5, gt=0, lt=1, description="with models: both, the full model's share of the "
                               "average (the folds share the rest equally)")
    runtime: Literal["torch", "onnx", "torchscript"] = Field(
        "torch", description="what runs the models: PyTorch eager, or the exports of scripts/export.py "
                             "(onnx on onnxruntime, torchscript) next to each checkpoint")
    tta: Literal["none", "hflip", "vflip", "flips", "d4"] = "flips"
    oof_tta: bool = Field(
        False, description="scripts/oof.py re-predicts each fold's validation images with its model and this "
                           "section's tta/scales, so that thresholds are tuned on the probabilities the test "
                           "images get (costs one TTA pass over the training images); false: the trainer's "
                           "OOF, predicted without TTA")
    scales: list[float] = Field([1.0], min_length=1, description="multi-scale TTA factors (1.0 is always added)")
    batch_size: int = Field(4, ge=1, description="images per step")
    forward_batch: int | None = Field(
        None, ge=1, description="most augmented copies (or tiles) in one forward pass; null = all copies of a step"
    )
    tile_size: list[int] | None = Field(None, description="[height, width] of a tile; larger images are tiled")
    tile_overlap: int = Field(64, ge=0, description="pixels two neighbouring tiles share")
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = Field(False, description="float16 autocast on CUDA")
    num_workers: int = Field(0, ge=0)

    @field_validator("tile_size", mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value, value]
        return value

    @field_validator("tile_size")
    @classmethod
    def _check_pair(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or min(value) < 1):
            raise ValueError("expected [height, width] of positive ints (or one int for a square), or null")
        return value

    @field_validator("scales")
    @classmethod
    def _check_scales(cls, value: list[float]) -> list[float]:
        if any(s <= 0 for s in value):
            raise ValueError("scales must be positive factors such as [0.75, 1.0, 1.25]")
        return value

    @model_validator(mode="after")
    def _check_tiles(self) -> InferConfig:
        if self.tile_size is not None and 2 * self.tile_overlap >= min(self.tile_size):
            raise ValueError(f"infer.tile_overlap ({self.tile_overlap}) must be below half the smallest tile side "
                             f"({min(self.tile_size)}); lower it or enlarge infer.tile_size")
        return self


RULE_KEYS = ("threshold", "min_area", "area_mode", "top", "min_count", "cls_threshold", "cls_area_power")


class ClassRuleOverride(StrictModel):
    """Per-class overrides of the post-processing rules (`postprocess.per_class.<name>`); unset keys inherit."""

    threshold: float | None = Field(None, ge=0.0, le=1.0)
    min_area: int | None = Field(None, ge=0)
    area_mode: Literal["total", "component"] | None = None
    top: float | None = Field(None, ge=0.0, le=1.0)
    min_count: int | None = Field(None, ge=0)
    cls_threshold: float | None = Field(None, ge=0.0, le=1.0)
    cls_area_power: float | None = Field(None, gt=0.0)


class ThresholdTuneConfig(StrictModel):
    """How `scripts/tune_thresholds.py` searches the post-processing parameters on the OOF."""

    metric: Literal["dice_pairs", "dice_image", "tgs_iou"] | None = Field(
        None, description="competition score to maximise; null = data.metric (dice_pairs when unset)")
    empty_score: float | None = Field(None, ge=0.0, le=1.0,
                                      description="Dice of an empty prediction on an empty truth; null = 1.0")
    thresholds: list[float] = Field([round(0.01 * i, 2) for i in range(1, 100)], min_length=1,
                                    description="probability thresholds of the exact grid search")
    min_areas: list[int] | None = Field(
        None, description="minimum total areas of the grid; null = 0 and 19 sizes from 1e-4 to 5e-2 of the image")
    rounds: int = Field(3, ge=1, description="coordinate-wise passes over the classes when the score does not "
                                             "separate by class (dice_image, tgs_iou, at_least_one)")
    optuna_trials: int = Field(60, ge=0, description="TPE trials per class for triplet, component-area and "
                                                      "classifier-gate rules; 0 = grid only")
    component_search: bool = Field(True, description="let Optuna try per-component minimum areas")
    max_images: int = Field(1000, ge=1, description="Optuna scores trials on a seeded sub-sample of this many "
                                                    "OOF images (all of them when fewer)")
    chunk_images: int = Field(16, ge=1, description="images read at once from the OOF store")
    tolerance: float = Field(0.0, ge=0.0, le=0.1, description=(
        "rules within this score of the best count as tied: the grid then keeps the threshold nearest the "
        "config's, Optuna's finds must win by more, and the config's rules stay unless beaten by more"))
    cross_fold: bool = Field(False, description="also tune on every fold's complement and score the rules on the "
                                                "fold (the search's optimism; scripts/tune_thresholds.py --cross-fold)")
    fallback_to_config: bool = Field(False, description=(
        "with cross_fold: when the rules tuned on the other folds score below the config's rules on the folds the "
        "search never saw, thresholds.json keeps the config's rules (the tuned ones are recorded as rejected)"))

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, value: list[float]) -> list[float]:
        if any(not 0.0 <= t <= 1.0 for t in value):
            raise ValueError("thresholds must lie in [0, 1], e.g. [0.3, 0.4, 0.5]")
        return sorted(set(value))

    @field_validator("min_areas")
    @classmethod
    def _check_areas(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 0):
            raise ValueError("min_areas must be a non-empty list of pixel counts >= 0, or null for the default")
        return sorted(set(value)) if value is not None else None

    @model_validator(mode="after")
    def _check_fallback(self) -> ThresholdTuneConfig:
        if self.fallback_to_config and not self.cross_fold:
            raise ValueError("fallback_to_config needs the cross-fold check to decide: set cross_fold: true too "
                             "(or pass --cross-fold to tune_thresholds.py)")
        return self


class PostprocessConfig(StrictModel):
    """From probabilities to binary masks: the rules of `segfold.postprocess.rules.apply_postprocess`.

    The top-level rule keys are the defaults of every class; `per_class` overrides them by class name::

        postprocess:
          threshold: 0.5
          min_area: 600
          per_class: {"3": {threshold: 0.55, min_area: 1200}}

    Per class, in order: the classifier gate (`cls_threshold`: empty unless the aux-head probability
    exceeds it; or softly, `cls_area_power`: the minimum area scales with the aux-head probability),
    the triplet rule (`top`: empty when fewer than `min_count` pixels exceed `top`), the
    binarisation (`p > threshold`), then the minimum area (`area_mode` total: the mask is empty when
    it has fewer than `min_area` pixels; component: connected components smaller than `min_area` are
    removed). `one_class_per_pixel` keeps only the argmax class of each pixel; `at_least_one` forces
    the best class positive when every class came out empty.
    """

    threshold: float = Field(0.5, ge=0.0, le=1.0, description="pixel is positive when its probability exceeds it")
    min_area: int = Field(0, ge=0, description="minimum area in pixels (see area_mode)")
    area_mode: Literal["total", "component"] = "total"
    top: float | None = Field(None, ge=0.0, le=1.0, description="triplet rule: high threshold; null = off")
    min_count: int = Field(0, ge=0, description="triplet rule: pixels that must exceed `top`")
    cls_threshold: float | None = Field(None, ge=0.0, le=1.0,
                                        description="empty unless the class probability exceeds it; null = off")
    cls_area_power: float | None = Field(
        None, gt=0.0, description="soft classifier gate: the minimum total area becomes "
        "min_area * (2 * (1 - p_cls)) ** power (p_cls 0.5: unchanged; a sure class keeps any area); null = off")
    per_class: dict[str, ClassRuleOverride] = Field({}, description="overrides by class name")
    at_least_one: bool = Field(False, description="force the best class positive when all are empty (Clouds)")
    one_class_per_pixel: bool = Field(False, description="keep only the argmax class of each pixel")
    tune: ThresholdTuneConfig = ThresholdTuneConfig()

    @field_validator("per_class", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        # NOTE: YAML reads `per_class: {1: {...}}` with int keys; class names are strings.
        if isinstance(value, dict):
            return {str(key): item for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _soft_gate_on_total_area(self) -> PostprocessConfig:
        for where, override in [("postprocess", self), *((f"postprocess.per_class.{k}", v)
                                                         for k, v in self.per_class.items())]:
            power = override.cls_area_power if override.cls_area_power is not None else self.cls_area_power
            if power is not None and (override.area_mode or self.area_mode) != "total":
                raise ValueError(f"{where}: cls_area_power (the soft classifier gate) scales the total minimum "
                                 "area, but area_mode is component there; use area_mode: total or drop cls_area_power")
        return self
