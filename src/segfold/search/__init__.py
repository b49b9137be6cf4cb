"""Optuna hyper-parameter search over config keys (`segfold.search.hparams`)."""

from segfold.config.search import ParamSpec, SearchConfig

__all__ = ["ParamSpec", "SearchConfig"]
