"""The experiment config: one typed section per stage, composed from the section modules beside this one."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import field_validator

from segfold.config.base import StrictModel
from segfold.config.data import DataConfig
from segfold.config.infer import InferConfig, PostprocessConfig
from segfold.config.model import ModelConfig
from segfold.config.package import PackageConfig
from segfold.config.search import SearchConfig
from segfold.config.train import LossConfig, OptimConfig, SchedulerConfig, TrainConfig


class ExperimentConfig(StrictModel):
    """Name and place of a run: everything it writes goes to `<output_root>/<name>/`."""

    name: str = "demo"
    output_root: str = "outputs"
    seed: int = 42

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or set(name) == {"."}:
            raise ValueError("must be a plain folder name of letters, digits, '_', '.' and '-' (not a path, "
                             "not '.' or '..'); put the parent folder in experiment.output_root")
        return name

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
    package: PackageConfig = PackageConfig()
