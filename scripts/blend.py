"""Blend experiments: `python scripts/blend.py --configs C1 C2 ... --out NAME [--method weighted]`.

Blends the members' OOF stores (`outputs/<exp>/oof/oof.*`, or their `fold<k>/oof.*`) and test stores
(`outputs/<exp>/test/test.*`) into `outputs/NAME/oof/` and `outputs/NAME/test/`, with weights searched
by Optuna on the OOF for `--method weighted`; writes `outputs/NAME/config.yaml` (so that
`tune_thresholds.py --config` and `make_submission.py --config` run on the blend) and `blend.json`,
prints each member's and the blend's OOF score, then tunes the blend's thresholds. `--config` / `--set`
give the blend's own settings (data, postprocess); by default those of the first member.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_allow_stale, add_config_arguments, script_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = add_allow_stale(add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])))
    parser.add_argument("--configs", nargs="+", required=True, metavar="CONFIG", help="the members' experiment YAMLs")
    parser.add_argument("--out", required=True, metavar="NAME", help="the blend's experiment name (outputs/NAME/)")
    parser.add_argument("--method", default="weighted",
                        choices=["mean", "weighted", "geometric", "rank", "power", "vote", "auto"],
                        help="arithmetic mean, weighted mean (weights searched unless --weights), geometric mean, "
                        "rank average, power (RMS) average, vote (at least k members, k tuned), or auto: each "
                        "mode scored on the OOF, the best kept")
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per member (no search)")
    parser.add_argument("--trials", type=int, default=30, help="Optuna trials of the weight search")
    parser.add_argument("--max-images", type=int, default=500, help="OOF images each weight trial scores")
    parser.add_argument("--no-tune", action="store_true", help="skip the threshold search on the blend")
    return parser.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from segfold.blend import run_blend
    from segfold.config import load_config

    members = [load_config(path) for path in args.configs]
    base = load_config(args.config or args.configs[0], args.overrides)
    run_blend(members, args.out, method=args.method, weights=args.weights, trials=args.trials,
              max_images=args.max_images, base=base, tune=not args.no_tune, allow_stale=args.allow_stale)


if __name__ == "__main__":
    main()
