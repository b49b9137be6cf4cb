"""Optuna hyper-parameter search: `python scripts/tune_hparams.py --config C --trials N [--workers N] [--storage URL]`.

`--workers N` runs N trials at a time on this machine, each worker with its share of the cores (their
threads add up to the cores; several separate commands on one machine would each take all of them).
Several machines share one study through a PostgreSQL/MySQL `--storage` URL, each running the command.
Rerun it to resume. At the end the best values are written as a config that train.py accepts.
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
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes on this machine sharing the study and the cores (default 1)")
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
    study = hparams.run_workers(cfg, args.workers, trials=args.trials)
    print(f"study '{study.study_name}' ({hparams.storage_url(cfg)}): {hparams.summarize(study)}")
    path = hparams.write_best_config(cfg, study, args.best_config)
    print(f"best score {study.best_value:.5f} with {study.best_trial.params}")
    print(f"best config: {path}  (train it: python scripts/train.py --config {path} --fold 0)")
    for plot in hparams.save_plots(study, hparams.search_dir(cfg)):
        print(f"plot: {plot}")


if __name__ == "__main__":
    main()
