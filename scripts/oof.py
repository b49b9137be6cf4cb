"""Gather the folds' out-of-fold probabilities into `outputs/<exp>/oof/` and score them.

Usage: `python scripts/oof.py --config C`.

Works with whichever folds have been trained (fold 0 alone is fine) and says which are missing. The
score uses `data.metric` at the default threshold (0.5; argmax for multiclass); tune the
post-processing next with `scripts/tune_thresholds.py`.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_allow_stale, add_config_arguments, config_from_args, script_main


@script_main
def main(argv: list[str] | None = None) -> dict:
    parser = add_allow_stale(add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])))
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from segfold.oof import gather_oof

    result = gather_oof(cfg, allow_stale=args.allow_stale)
    print(result["table"])
    missing = f" (missing folds: {result['missing_folds']})" if result["missing_folds"] else ""
    print(f"OOF {cfg.data.metric} = {result['score']:.5f} on {result['images']} images from folds "
          f"{result['folds']}{missing}")
    print(f"OOF store: {result['path']}")
    return result


if __name__ == "__main__":
    main()
