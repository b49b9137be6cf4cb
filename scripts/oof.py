"""Gather the folds' out-of-fold probabilities into `outputs/<exp>/oof/` and score them.

Usage: `python scripts/oof.py --config C [--tta none|hflip|vflip|flips|d4] [--scales 0.75 1.25]`;
`python scripts/oof.py --config C --by-fold` prints the gathered OOF's scores per fold (threshold 0.5 and tuned).

Works with whichever folds have been trained (fold 0 alone is fine) and says which are missing. The
score uses `data.metric` at the default threshold (0.5; argmax for multiclass); tune the
post-processing next with `scripts/tune_thresholds.py`.

By default the OOF is the trainer's (each fold's best weights, no TTA). With `infer.oof_tta: true`, or
`--tta NAME` (and/or `--scales`, also with `--tta none`), each fold's validation images are predicted again
with that fold's model and the TTA and scales the test images get (predict.py's predictor), so that the
thresholds are tuned on the same kind of probabilities they are applied to.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_allow_stale, add_config_arguments, config_from_args, script_main


@script_main
def main(argv: list[str] | None = None) -> dict:
    parser = add_allow_stale(add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])))
    parser.add_argument("--tta", choices=["none", "hflip", "vflip", "flips", "d4"], default=None,
                        help="re-predict each fold's validation images with this TTA (default: infer.tta when "
                             "infer.oof_tta is true, else none: the trainer's OOF)")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="multi-scale factors, e.g. 0.75 1.25 (1.0 is always added), as predict.py --scales; "
                             "with --tta none too (default infer.scales when --tta is given or infer.oof_tta is "
                             "true, else none)")
    parser.add_argument("--by-fold", action="store_true",
                        help="do not gather: print the gathered OOF's scores per fold and class, at threshold 0.5 "
                             "and with thresholds.json (else the config's rules)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from segfold.oof import fold_report, gather_oof

    if args.by_fold:
        report = fold_report(cfg, allow_stale=args.allow_stale)
        print(report["table"])
        print(f"rules: {report['rules']}")
        return report

    result = gather_oof(cfg, allow_stale=args.allow_stale, tta=args.tta, scales=args.scales)
    print(result["table"])
    missing = f" (missing folds: {result['missing_folds']})" if result["missing_folds"] else ""
    print(f"OOF {cfg.data.metric} = {result['score']:.5f} on {result['images']} images from folds "
          f"{result['folds']}{missing}, TTA {result['tta_label']}")
    print(f"OOF store: {result['path']}")
    return result


if __name__ == "__main__":
    main()
