"""Predict the test images with the trained folds and test-time augmentation.

Usage: `python scripts/predict.py --config C [--folds 0,1,2,3,4] [--tta flips|d4|none] [--scales 0.75 1.25]
[--runtime torch|onnx|torchscript]`.

Averages the folds' probabilities (each fold's TTA copies merged as probabilities), tiles images
larger than `infer.tile_size`, and writes the uint8 store `outputs/<exp>/test/test.*` at the
submission resolution (`data.metric_size`, else the images' size).
"""

from __future__ import annotations

import argparse

from segfold.cli import add_config_arguments, config_from_args, parse_folds, script_main


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--folds", default=None, help="folds to average, e.g. 0,1,2 (default infer.folds, else all)")
    parser.add_argument("--tta", choices=["none", "hflip", "vflip", "flips", "d4"], default=None,
                        help="test-time augmentation (default infer.tta)")
    parser.add_argument("--scales", type=float, nargs="+", default=None, help="multi-scale TTA factors, e.g. 0.75 1.25")
    parser.add_argument("--runtime", choices=["torch", "onnx", "torchscript"], default=None,
                        help="torch (eager), or the exports of scripts/export.py: onnx (onnxruntime), torchscript "
                             "(default infer.runtime)")
    parser.add_argument("--models", choices=["folds", "full", "both"], default=None,
                        help="fold models, the full-data fit, or both weighted by infer.full_weight "
                        "(default infer.models)")
    parser.add_argument("--split", choices=["test", "holdout"], default="test",
                        help="the test images (default) or the holdout images (data.folds.holdout) -> "
                        "outputs/<exp>/holdout/")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.folds is not None and args.folds.strip().lower() == "all":
        cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"folds": None})})  # every trained fold

    from segfold.predict import predict_test

    if args.models is not None:
        cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"models": args.models})})
    store = predict_test(cfg, folds=parse_folds(args.folds), tta=args.tta, scales=args.scales,
                         runtime=args.runtime, split=args.split)
    extra = " and aux-head class probabilities" if store.cls is not None else ""
    print(f"{args.split} store: {store.folder / store.name}.* {list(store.shape)}{extra}")


if __name__ == "__main__":
    main()
