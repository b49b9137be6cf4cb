"""The experiment config: one typed section per stage, composed from the section modules beside this one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
    # staged training: partial overrides of this config, run one after the other on each fold, each
    # stage from the previous stage's best weights (see `segfold.config.load.stage_configs`)
    stages: list[dict[str, Any]] = []

    @field_validator("stages")
    @classmethod
    def _stage_keys(cls, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, stage in enumerate(stages):
            for section, value in stage.items():
                if section not in STAGE_SECTIONS:
                    raise ValueError(f"stages[{index}] overrides '{section}'; a stage may override only "
                                     f"{', '.join(STAGE_SECTIONS)} (the model and the data split stay the same)")
                if section == "data" and isinstance(value, dict):
                    bad = sorted(set(value) - set(STAGE_DATA_KEYS))
                    if bad:
                        raise ValueError(f"stages[{index}] overrides data.{bad[0]}; a stage may change only "
                                         f"data.{', data.'.join(STAGE_DATA_KEYS)}")
        return stages


STAGE_SECTIONS = ("data", "loss", "optim", "scheduler", "train")
STAGE_DATA_KEYS = ("image_size", "augment", "sampler", "pseudo")
