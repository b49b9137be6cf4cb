"""Config sections `loss`, `optim`, `scheduler`, `train`.

Checks that span sections (warm-up shorter than the run, deep-supervision weights only for a model
that has them) live in `segfold.train.checks`, run when training starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from segfold.config.base import StrictModel


class LossTerm(StrictModel):
    """One weighted term of the mask loss: `{name: dice, weight: 0.5, params: {smooth: 1.0}}`."""

    name: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0)
    params: dict[str, Any] = {}


class LossConfig(StrictModel):
    """The training objective: a weighted sum of mask losses, plus the aux-head and deep-supervision terms.

    `skip_empty` drops from the mask loss every (image, class) whose class is absent in the image
    (the aux head learns emptiness instead); it needs a model with an aux head.
    """

    terms: list[LossTerm] = Field(
        default_factory=lambda: [LossTerm(name="bce", weight=0.5), LossTerm(name="dice", weight=0.5)], min_length=1
    )
    aux_weight: float = Field(0.2, ge=0)
    aux_loss: Literal["bce", "focal"] = "bce"
    skip_empty: bool = False
    deep_supervision_weights: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        if self.deep_supervision_weights is not None:
            if not self.deep_supervision_weights or any(w < 0 for w in self.deep_supervision_weights):
                raise ValueError(
                    "loss.deep_supervision_weights must be a non-empty list of weights >= 0 "
                    "(one per extra Unet++ output), or null"
                )
        return self


class OptimConfig(StrictModel):
    """Optimizer: the decoder and head use `lr`, the encoder `lr * encoder_lr_mult`.

    Biases and normalisation weights (every 0- or 1-dimensional parameter) get no weight decay.
    """

    name: Literal["adamw", "adam", "sgd", "radam", "lion"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    encoder_lr_mult: float = Field(1.0, gt=0, le=100)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas = {list(self.betas)}: each beta must be in [0, 1)")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optim.nesterov=true needs optim.name=sgd and optim.momentum > 0")
        return self


class SchedulerConfig(StrictModel):
    """Learning-rate schedule.

    - `cosine` / `poly`: per optimizer step, with a linear warm-up of `warmup_epochs` from
      `warmup_lr_ratio * lr`, down to `min_lr_ratio * lr` (timm schedulers).
    - `onecycle`: per step, rising for `onecycle_pct_start` of the run (torch OneCycleLR; it has its
      own warm-up, so `warmup_epochs` must be 0).
    - `plateau`: after each validation, multiplies the lr by `plateau_factor` after `plateau_patience`
      validations without improvement of `train.monitor` (torch ReduceLROnPlateau); with
      `train.valid_every: N` it is stepped every N-th epoch only, so its patience counts validations too.
    - `constant`: the optimizer's lr throughout (after the optional warm-up).
    """

    name: Literal["cosine", "onecycle", "plateau", "poly", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_lr_ratio: float = Field(0.01, gt=0, le=1)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    poly_power: float = Field(0.9, gt=0)
    onecycle_pct_start: float = Field(0.3, gt=0, lt=1)
    onecycle_div_factor: float = Field(25.0, gt=1)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SchedulerConfig:
        if self.warmup_epochs > 0 and self.name in ("onecycle", "plateau"):
            raise ValueError(
                f"scheduler.warmup_epochs = {self.warmup_epochs} is not supported with scheduler.name={self.name}; "
                "set it to 0 (onecycle warms up by itself through onecycle_pct_start)"
            )
        return self


class AverageConfig(StrictModel):
    """Checkpoint averaging after the last epoch (`train.average`).

    - `swa`: the plain model's weights of the last `epochs` epochs run (stochastic weight averaging).
    - `top_k`: the `k` best checkpoints by `train.monitor` (each the better of the model and its EMA);
      the trainer keeps `max(train.save_top_k, k)` top-k files for it.

    The average's BatchNorm statistics are recomputed on `bn_batches` training batches (null: one
    epoch's worth), then it is validated like an epoch and kept as `averaged.pt` when it beats the
    best epoch (`keep: always`: in any case); the OOF and test prediction then use it.
    """

    method: Literal["swa", "top_k"]
    epochs: int | None = Field(None, ge=2)
    k: int | None = Field(None, ge=2)
    bn_batches: int | None = Field(None, ge=1)
    keep: Literal["if_better", "always"] = Field(
        "if_better", description="if_better: averaged.pt only when it beats the best epoch; always: it is kept and "
                                 "used whatever its validation score (the SWA recipe)")

    @model_validator(mode="after")
    def _check(self) -> AverageConfig:
        if self.method == "swa" and (self.epochs is None or self.k is not None):
            raise ValueError("method 'swa' averages the last N epochs: set epochs: N (>= 2), not k")
        if self.method == "top_k" and (self.k is None or self.epochs is not None):
            raise ValueError("method 'top_k' averages the k best checkpoints: set k: N (>= 2), not epochs")
        return self

    @property
    def count(self) -> int:
        """How many checkpoints are averaged."""
        return int(self.epochs if self.method == "swa" else self.k)  # type: ignore[arg-type]


class TrainConfig(StrictModel):
    """The training loop: batches, precision, EMA, validation and checkpoints.

The positive-share sampler is set in the data section (`data.sampler.positive_share`).
"""

    epochs: int = Field(3, ge=1, description="epochs per fold; ignored when train.steps is set")
    steps: int | None = Field(
        None, ge=1, description="optimizer steps per fold (an iteration budget): each fold, stage and full fit "
                                "trains round(steps / its optimizer steps per epoch) epochs (at least 1), "
                                "derived from its own training loader, and train.epochs is ignored; the "
                                "epoch-based keys (freeze_encoder_epochs, average, valid_every, "
                                "scheduler.warmup_epochs) are checked against the derived count")
    batch_size: int = Field(8, ge=1)
    valid_batch_size: int | None = Field(None, ge=1)
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader workers; auto: from the machine's cores (segfold.cores.default_loader_workers)")
    accumulate_steps: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    freeze_encoder_epochs: int = Field(0, ge=0)
    ema: bool = False
    ema_decay: float = Field(0.998, gt=0, lt=1)
    ema_warmup: bool = True
    monitor: Literal["score", "valid_loss"] = "score"
    valid_every: int = Field(
        1, ge=1, description="validate every N-th epoch and always the last; the epochs between leave NaN "
                             "valid_loss/score in metrics.csv and do not touch best.pt, the top-k files, "
                             "patience or a plateau schedule (a full-data fit ignores it)")
    patience: int | None = Field(
        None, ge=1, description="stop after this many validations in a row without improvement of train.monitor "
                                "(validations, not epochs, when train.valid_every > 1)")
    min_delta: float = Field(0.0, ge=0)
    save_top_k: int = Field(1, ge=1)
    sync_batchnorm: bool = False
    max_train_batches: int | None = Field(None, ge=1)
    write_oof: bool = True
    progress: bool = True
    average: AverageConfig | None = None
    full_epochs: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.num_workers != "auto" and self.num_workers < 0:
            raise ValueError(f"train.num_workers = {self.num_workers}: use 0 (load in the training process), "
                             "a positive number of DataLoader workers, or auto")
        if self.compile and self.deterministic:
            raise ValueError("train.compile=true and train.deterministic=true cannot be combined; turn one off")
        if self.steps is not None:
            return self  # NOTE epochs is ignored: the keys below are checked once a fold derives its epochs
        if self.freeze_encoder_epochs >= self.epochs:
            raise ValueError(
                f"train.freeze_encoder_epochs = {self.freeze_encoder_epochs} must be smaller than "
                f"train.epochs = {self.epochs}, or the encoder never trains"
            )
        if self.average is not None and self.average.count > self.epochs:
            raise ValueError(f"train.average averages {self.average.count} checkpoints but train.epochs = "
                             f"{self.epochs}; lower the count or train longer")
        if self.average is not None and self.average.method == "top_k" and self.average.count > self.validations:
            raise ValueError(f"train.average averages the {self.average.count} best validated checkpoints but "
                             f"train.epochs = {self.epochs} with train.valid_every = {self.valid_every} validates "
                             f"{self.validations} epoch(s); lower k or valid_every")
        return self

    def validates(self, epoch: int) -> bool:
        """Whether the 1-based `epoch` ends with a validation: every `valid_every`-th and the last."""
        return epoch % self.valid_every == 0 or epoch == self.epochs

    @property
    def validations(self) -> int:
        """How many epochs a run that is not stopped early validates."""
        return sum(self.validates(epoch) for epoch in range(1, self.epochs + 1))
