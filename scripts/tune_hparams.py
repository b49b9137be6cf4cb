"""Optuna hyper-parameter search: `python scripts/tune_hparams.py --config C --trials N [--storage URL] [--study NAME]`.

Run the same command in several terminals (or machines, with a shared PostgreSQL/MySQL URL) to search in
parallel; rerun it to resume. At the end the best values are written as a config that train.py accepts.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_config_arguments, config_from_args, script_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--trials", type=int, default=None, help="trials the study should hold (default search.trials)")
    parser.add_argument("--storage", default=None, help="RDB URL shared by workers (default: SQLite under outputs/)")
    parser.add_argument("--study", default=None, help="study name (default '<experiment>-search')")
    parser.add_argument("--best-config", default=None, help="where to write the best config YAML")
    parser.add_argument("--fresh", action="store_true", help="delete the study first instead of resuming it")
    return parser.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.overrides += [f"search.{key}={value}" for key, value in (("storage", args.storage), ("study", args.study))
                       if value is not None]
    cfg = config_from_args(args)

    from segfold.search import hparams

    if args.fresh:
        hparams.remove_study(cfg)
    study = hparams.run_search(cfg, trials=args.trials)
    print(f"study '{study.study_name}' ({hparams.storage_url(cfg)}): {hparams.summarize(study)}")
    path = hparams.write_best_config(cfg, study, args.best_config)
    print(f"best score {study.best_value:.5f} with {study.best_trial.params}")
    print(f"best config: {path}  (train it: python scripts/train.py --config {path} --fold 0)")
    for plot in hparams.save_plots(study, hparams.search_dir(cfg)):
        print(f"plot: {plot}")


if __name__ == "__main__":
    main()
