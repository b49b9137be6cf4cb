"""Enter a public leaderboard score by hand into `outputs/runs.csv` (the row of an experiment's final stage).

    python scripts/log_lb.py camvid4 0.8123
    python scripts/log_lb.py camvid4 0.8123 --stage stage1 --output-root outputs

The CV columns of the same row sit beside it, so a final submission can be chosen by CV rather
than by the public leaderboard (which scores a small sample of the test set).
"""

from __future__ import annotations

import argparse
import math

from segfold.cli import script_main
from segfold.errors import ConfigError
from segfold.runs import FINAL_STAGE, record_run, runs_path


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="experiment.name as in runs.csv")
    parser.add_argument("score", help="the public leaderboard score")
    parser.add_argument("--stage", default=FINAL_STAGE, help=f"the row's stage (default {FINAL_STAGE})")
    parser.add_argument("--output-root", default="outputs", help="folder that holds runs.csv (default outputs)")
    args = parser.parse_args(argv)
    try:
        score = float(args.score)
    except ValueError:
        raise ConfigError(f"score {args.score!r} is not a number; e.g. scripts/log_lb.py {args.experiment} 0.8123"
                          ) from None
    if not math.isfinite(score):
        raise ConfigError(f"score {args.score!r} is not a finite number")
    try:
        row = record_run(args.output_root, args.experiment, args.stage, require_existing=True, public_lb=score)
    except KeyError as exc:
        raise ConfigError(f"{exc.args[0]} (train the experiment first, or check the name)") from None
    print(f"{runs_path(args.output_root)}: {args.experiment} ({args.stage}) public_lb {score} "
          f"beside cv_mean {row.get('cv_mean') or '-'}, oof_after {row.get('oof_after') or '-'}")


if __name__ == "__main__":
    main()
