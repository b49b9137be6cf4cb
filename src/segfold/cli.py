"""What every script shares: `--config` / `--set` / `--quiet` / `--verbose` arguments, logging to stdout,
and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from segfold.config.load import load_config
from segfold.errors import ConfigError, SegfoldError
from segfold.logs import setup_logging


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--config FILE` and `--set KEY=VALUE ...` to a script's parser."""
    parser.add_argument("--config", default=None, help="experiment YAML (default: configs/default.yaml, the demo)")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.epochs=3 model.encoder_weights=null",
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    loudness.add_argument("-v", "--verbose", action="store_true", help="log debugging detail too")
    return parser


def add_allow_stale(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--allow-stale`: use artefacts older than their inputs with a warning instead of an error."""
    parser.add_argument("--allow-stale", action="store_true",
                        help="use an OOF / test store / thresholds.json made from other checkpoints or stores than "
                             "those on disk now, with a warning (by default that is an error naming what to rerun)")
    return parser


def config_from_args(args: argparse.Namespace):
    """The validated config named by `--config` with the `--set` overrides applied (and the log level set)."""
    setup_logging(int(getattr(args, "verbose", False)) - int(getattr(args, "quiet", False)))
    return load_config(args.config, args.overrides)


def parse_folds(text: str | None) -> list[int] | None:
    """`--folds` of the inference scripts: `"0,1,2"` -> [0, 1, 2]; None or "all" -> None (every trained fold)."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--folds '{text}': expected fold numbers separated by commas (0,1,2) or 'all'") from None


def script_main(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a script's main: user errors print as `error: ...` and exit 1 (SEGFOLD_DEBUG=1 shows the traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return func(*args, **kwargs)
        except (SegfoldError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError,
                PermissionError) as exc:
            # NOTE: the OS errors are a user's paths (a file where a folder should be, no write access)
            if os.environ.get("SEGFOLD_DEBUG"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
