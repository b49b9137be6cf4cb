"""Config section `search`: the Optuna hyper-parameter search (space, budget, pruner, storage).

The space maps dotted config keys to distributions, e.g.::

    search:
      trials: 20
      epochs: 3
      space:
        optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
        model.arch: {type: categorical, choices: [Unet, FPN]}
        train.batch_size: {type: int, low: 4, high: 16, step: 4}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from segfold.config.base import StrictModel


class ParamSpec(StrictModel):
    """One searched value: a float (optionally log-scaled), an int, or a categorical choice."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            bad = [c for c in self.choices if c is not None and not isinstance(c, (bool, int, float, str))]
            if bad:
                raise ValueError(f"categorical choices must be numbers, strings, booleans or null (Optuna stores "
                                 f"them), got {bad[0]!r}; search a scalar key instead, e.g. loss weights one by one")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"'low' ({self.low}) must be below 'high' ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled parameter needs 'low' > 0")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' cannot be combined (Optuna rule)")
        return self


class SearchConfig(StrictModel):
    """The hyper-parameter search of `scripts/tune_hparams.py`."""

    trials: int = Field(4, ge=1, description="finished trials the study should hold, across all workers")
    fold: int = Field(0, ge=0, description="the fold whose validation score is the objective")
    epochs: int | None = Field(2, ge=1, description="train.epochs of each trial (a short run; it clears train.steps); "
                                                        "null keeps train.epochs / train.steps")
    space: dict[str, ParamSpec] = {}
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_startup_trials: int = Field(1, ge=0, description="trials that finish before the median pruner prunes")
    pruner_warmup_epochs: int = Field(0, ge=0, description="epochs of a trial that are never pruned")
    storage: str | None = Field(None, description="RDB URL; default sqlite file outputs/<experiment>/search/optuna.db")
    study: str | None = Field(None, description="study name; default '<experiment>-search'")
    keep_checkpoints: bool = False
    heartbeat_seconds: int = Field(30, ge=1, description="RDB heartbeat; a silent trial is failed after 4 beats")
