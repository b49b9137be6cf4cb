"""Logging set-up for the entry points: one handler on stdout, a level from --quiet / --verbose, rank 0 only.

Library modules only call `logging.getLogger(__name__)`; scripts call `setup_logging` once (through
`segfold.cli`). Under torchrun every process would print the same lines, so records of processes
whose `RANK` is not 0 are dropped here, in this one filter, unless they are warnings or worse.
"""

from __future__ import annotations

import logging
import os
import sys

_HANDLER_NAME = "segfold"


class RankZeroFilter(logging.Filter):
    """Pass every record on rank 0 (or without torchrun), only warnings and errors on the other ranks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return int(os.environ.get("RANK", "0")) == 0 or record.levelno >= logging.WARNING


class _StdoutHandler(logging.StreamHandler):
    """A stream handler that writes to the current `sys.stdout` (so redirections and pytest's capture see it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # NOTE StreamHandler.__init__ assigns it; the property always wins
        pass


def level_for(verbosity: int) -> int:
    """-1 (`--quiet`): warnings only; 0: progress lines (INFO); 1 (`--verbose`): DEBUG."""
    return logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO


def setup_logging(verbosity: int = 0) -> logging.Logger:
    """Send the `segfold` loggers to stdout as plain lines at the level of `verbosity` (idempotent)."""
    root = logging.getLogger("segfold")
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = _StdoutHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(RankZeroFilter())
        root.addHandler(handler)
    root.setLevel(level_for(verbosity))
    return root
