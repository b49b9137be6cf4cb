"""Typed experiment configs: YAML files validated against a pydantic schema."""

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


def __getattr__(name: str):
    # NOTE: the schema imports every section module (data, models, train, ...); importing it lazily lets
    # those modules import segfold.config without a cycle.
    if name in ("Config", "ExperimentConfig"):
        from segfold.config import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'segfold.config' has no attribute {name!r}")
