"""Config sections `loss`, `optim`, `scheduler`, `train`.

STARTER (owned by the trainer): extend freely; keep these field names.
"""

from __future__ import annotations

from segfold.config.base import StrictModel


class LossConfig(StrictModel):
    pass


class OptimConfig(StrictModel):
    name: str = "adamw"
    lr: float = 1e-3


class SchedulerConfig(StrictModel):
    name: str = "cosine"


class TrainConfig(StrictModel):
    epochs: int = 3
    batch_size: int = 8
