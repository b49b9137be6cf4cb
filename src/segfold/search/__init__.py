"""Optuna hyper-parameter search over config keys (`segfold.search.hparams`)."""

from segfold.search.config import ParamSpec, SearchConfig

__all__ = ["ParamSpec", "SearchConfig"]
