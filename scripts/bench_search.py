"""Hyper-parameter search throughput: trials per minute with 1 and with 2 workers on this machine, same run.

Each measurement is a fresh study of the same short trials (fold 0 of the experiment, `search.epochs`
epochs, only the learning rate searched so every trial costs the same, no pruning) run through
`tune_hparams.py --workers N`'s own code. With the cores shared (segfold.cores), two workers must not
be slower than one; `--unshared` adds the case the sharing prevents: two workers that each take every core.

    python scripts/bench_search.py                      # the demo, test_resnet Unet, 4 trials of 6 batches
    python scripts/bench_search.py --trials 6 --set search.epochs=2 model.encoder_name=resnet18
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from segfold.cli import add_config_arguments, config_from_args, script_main
from segfold.config.search import ParamSpec
from segfold.cores import THREADS_VAR, machine_cores
from segfold.search import hparams

BENCH_DEFAULTS = ["model.arch=Unet", "model.encoder_name=test_resnet", "search.epochs=1", "scheduler.warmup_epochs=0",
                  "train.write_oof=false", "train.batch_size=8", "train.max_train_batches=6"]


def timed_search(cfg, root: str, workers: int, trials: int, unshared: bool = False) -> float:
    """Seconds for a fresh study of `trials` trials with `workers` workers (every core for each if `unshared`)."""
    search = cfg.search.model_copy(update={
        "trials": trials, "pruner": "none", "sampler": "random", "study": f"bench-{workers}-{int(unshared)}",
        "space": {"optim.lr": ParamSpec(type="float", low=1e-3, high=1e-2, log=True)}})
    experiment = cfg.experiment.model_copy(update={"output_root": root, "name": f"w{workers}{'u' * unshared}"})
    cfg = cfg.model_copy(update={"search": search, "experiment": experiment})
    previous = os.environ.get(THREADS_VAR)
    if unshared:
        os.environ[THREADS_VAR] = str(machine_cores())
    try:
        started = time.perf_counter()
        study = hparams.run_workers(cfg, workers)
        seconds = time.perf_counter() - started
    finally:
        if previous is None:
            os.environ.pop(THREADS_VAR, None)
        else:
            os.environ[THREADS_VAR] = previous
    done = sum(t.state.name == "COMPLETE" for t in study.trials)
    if done != trials:
        raise SystemExit(f"error: {done} of {trials} trials completed; see the output above")
    return seconds


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--trials", type=int, default=4, help="trials per measurement (default 4)")
    parser.add_argument("--unshared", action="store_true", help="also 2 workers with every core each")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure each case this many times, alternating, and keep the best (a busy machine)")
    args = parser.parse_args(argv)
    args.overrides = BENCH_DEFAULTS + args.overrides
    cfg = config_from_args(args)
    from segfold.data.demo import ensure_demo_data

    ensure_demo_data(cfg.data)
    cases = [(1, False), (2, False)] + ([(2, True)] if args.unshared else [])
    results: dict[tuple[int, bool], float] = {}
    for repeat in range(args.repeats):
        for workers, unshared in cases:
            with tempfile.TemporaryDirectory(prefix="bench_search_") as root:
                seconds = timed_search(cfg, root, workers, args.trials, unshared)
            results[workers, unshared] = min(seconds, results.get((workers, unshared), seconds))
            print(f"repeat {repeat + 1}: {workers} worker(s){' unshared' if unshared else ''}: {seconds:.1f} s",
                  flush=True)
    print(f"\n{cfg.model.arch}/{cfg.model.encoder_name}, {cfg.search.epochs} epoch(s) of at most "
          f"{cfg.train.max_train_batches} batches per trial, {args.trials} trials per measurement (best of "
          f"{args.repeats}), {machine_cores()} cores")
    base = args.trials * 60 / results[1, False]
    for (workers, unshared), seconds in results.items():
        rate = args.trials * 60 / seconds
        label = f"{workers} worker{'s' * (workers > 1)}{' (every core each)' if unshared else ''}"
        print(f"{label:<30} {seconds:7.1f} s  {rate:6.2f} trials/min  x{rate / base:.2f} of 1 worker")


if __name__ == "__main__":
    main()
