"""Errors meant for users: each message names the file, row or key and says how to fix it."""

from __future__ import annotations


class SegfoldError(Exception):
    """Base of the errors that scripts print as one line instead of a traceback."""


class ConfigError(SegfoldError, ValueError):
    """A config key that is unknown, mistyped or out of range."""


class DataError(SegfoldError, ValueError):
    """Input data that cannot be read: a malformed RLE, a missing image, a corrupt file."""


class WeightsError(SegfoldError, RuntimeError):
    """Pretrained weights that cannot be had (offline machine, wrong file)."""


class TrainingError(SegfoldError, RuntimeError):
    """A run that had to stop: a NaN or infinite loss, a checkpoint that does not match."""


class OutputError(SegfoldError, OSError):
    """An output that cannot be written where asked: a file where a folder should be, or the reverse."""


class ExportError(SegfoldError, RuntimeError):
    """A model that could not be exported, or whose export does not compute what the PyTorch model computes."""


class StaleError(SegfoldError, RuntimeError):
    """An artefact made from other inputs than the ones now on disk: an earlier stage ran again since."""
