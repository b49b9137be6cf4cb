"""Split the training images into folds and write folds.csv (ImageId, fold).

    python scripts/make_folds.py --config configs/camvid4.yaml [--set data.folds.n_folds=3]

Writes `outputs/<experiment>/folds.csv` (or `data.folds.path`) and prints, per fold, the image
count, the number of groups, the images without any class and the images holding each class.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_config_arguments, config_from_args, script_main
from segfold.data.demo import ensure_demo_data
from segfold.data.folds import fold_table, image_groups, make_folds, write_folds
from segfold.data.formats import read_train


@script_main
def main() -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__,
                                                          formatter_class=argparse.RawDescriptionHelpFormatter))
    cfg = config_from_args(parser.parse_args())
    if ensure_demo_data(cfg.data):
        print(f"wrote the demo data to {cfg.data.root_path}")
    annotations = read_train(cfg.data)
    folds = make_folds(cfg, annotations)
    path = write_folds(cfg, folds)
    folds_cfg = cfg.data.folds
    holdout = int((folds["fold"] < 0).sum())
    kept = f" ({holdout} holdout images, fold -1, in no fold)" if holdout else ""
    print(f"{folds_cfg.n_folds} folds ({folds_cfg.method}) of {len(folds) - holdout} images{kept} -> {path}")
    print(fold_table(folds, annotations, image_groups(cfg.data, annotations)).to_string())


if __name__ == "__main__":
    main()
