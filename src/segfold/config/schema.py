"""The experiment config: one typed section per stage, each defined next to the code that uses it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from segfold.config.base import StrictModel
from segfold.data.config import DataConfig
from segfold.infer.config import InferConfig, PostprocessConfig
from segfold.models.config import ModelConfig
from segfold.search.config import SearchConfig
from segfold.train.config import LossConfig, OptimConfig, SchedulerConfig, TrainConfig


class ExperimentConfig(StrictModel):
    """Name and place of a run: everything it writes goes to `<output_root>/<name>/`."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.\-]+$")
    output_root: str = "outputs"
    seed: int = 42

    @property
    def output_dir(self) -> Path:
        return Path(self.output_root) / self.name


class Config(StrictModel):
    """A whole experiment, from data to submission."""

    experiment: ExperimentConfig = ExperimentConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    search: SearchConfig = SearchConfig()
