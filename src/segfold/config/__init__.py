"""Typed experiment configs: YAML files validated against a pydantic schema.

Every section lives here (`data`, `model`, `train` (with `loss`, `optim`, `scheduler`), `infer`
(with `postprocess`), `search`) and `schema.Config` composes them; the code that uses a section
imports it from here.
"""

from segfold.config.base import StrictModel, format_validation_error
from segfold.config.load import (
    apply_overrides,
    config_to_dict,
    default_config_path,
    load_config,
    read_with_bases,
    repo_root,
    save_config,
    validate_config,
)
from segfold.config.schema import Config, ExperimentConfig
from segfold.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "ExperimentConfig",
    "StrictModel",
    "apply_overrides",
    "config_to_dict",
    "default_config_path",
    "format_validation_error",
    "load_config",
    "read_with_bases",
    "repo_root",
    "save_config",
    "validate_config",
]
