"""Tune the post-processing rules on the OOF: `python scripts/tune_thresholds.py --config C [--trials N]`.

Reads `outputs/<exp>/oof/oof.*` (or the `fold<k>/oof.*` stores trained so far), searches per class the
threshold, minimum area, triplet rule and classifier gate that maximise the competition score, and writes
`outputs/<exp>/thresholds.json` (used by make_submission.py) and `threshold_curves.png`.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_allow_stale, add_config_arguments, config_from_args, script_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = add_allow_stale(add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])))
    parser.add_argument("--trials", type=int, default=None,
                        help="Optuna trials per class (default postprocess.tune.optuna_trials; 0 = grid only)")
    parser.add_argument("--metric", default=None, choices=["dice_pairs", "dice_image", "tgs_iou"],
                        help="score to maximise (default postprocess.tune.metric, else data.metric)")
    parser.add_argument("--cross-fold", action="store_true",
                        help="also score, per fold, rules tuned on the other folds only (the search's optimism)")
    return parser.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.overrides += [f"postprocess.tune.{key}={value}" for key, value in
                       (("optuna_trials", args.trials), ("metric", args.metric)) if value is not None]
    if args.cross_fold:
        args.overrides.append("postprocess.tune.cross_fold=true")
    cfg = config_from_args(args)

    from segfold.postprocess import tune_thresholds

    tune_thresholds(cfg, allow_stale=args.allow_stale)


if __name__ == "__main__":
    main()
