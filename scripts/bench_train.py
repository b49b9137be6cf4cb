"""Training throughput: the full step (data loading and augmentation included) against the model alone.

Both measurements run the trainer's own step (forward, loss, backward, optimizer, EMA when enabled):
first over batches from the fold's DataLoader, then over one batch held in memory. Their ratio says
how much of the step time the input pipeline costs; raise `train.num_workers` when it is low.
Each setting of `--workers` is measured in the same run (0 and the machine's default, `auto`, unless told).

    python scripts/bench_train.py                       # the demo experiment
    python scripts/bench_train.py --config configs/x.yaml --steps 30 --workers 0 2 4 auto
"""

from __future__ import annotations

import argparse
import itertools
import time

from segfold.cli import add_config_arguments, config_from_args, script_main
from segfold.cores import machine_cores


def measure(trainer, batches, steps: int) -> float:
    """Images per second of `steps` training steps over `batches` (an iterable of dataset batches)."""
    stats = trainer.train_epoch(itertools.islice(batches, steps), epoch=1, num_batches=steps)
    return stats["images"] / max(stats["seconds"], 1e-9)


def repeat(batch, times: int):
    """The same in-memory batch `times` times (no loading, no augmentation)."""
    return itertools.repeat(batch, times)


def bench_setting(cfg, fold: int, steps: int, warmup: int) -> dict:
    """Full-step and model-only images/s of one configuration (its own FoldRun, threads set as training does)."""
    from segfold.train.checks import check_training_config
    from segfold.train.distributed import init_distributed
    from segfold.train.loop import FoldRun

    check_training_config(cfg)
    started = time.perf_counter()
    run = FoldRun(cfg, fold, init_distributed(cfg.train.device))
    run._set_frozen(False)
    data, trainer = run.data, run.trainer
    data.set_epoch(cfg.experiment.seed, 1, 0)
    setup = time.perf_counter() - started

    def loader_batches():
        while True:  # cycle over epochs when the fold has fewer batches than asked for
            yield from data.train_loader

    stream = loader_batches()
    measure(trainer, stream, warmup)
    full = measure(trainer, stream, steps)
    batch = next(stream)
    measure(trainer, repeat(batch, warmup), warmup)
    model_only = measure(trainer, repeat(batch, steps), steps)
    return {"workers": data.loader_workers, "threads": run.threads, "setup": setup, "full": full,
            "model_only": model_only, "device": trainer.info.device, "precision": trainer.precision}


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--fold", type=int, default=0, help="fold whose training images are loaded")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--workers", nargs="+", default=["0", "auto"],
                        help="train.num_workers settings to compare (default: 0 and auto, the machine's default)")
    args = parser.parse_args(argv)
    base = config_from_args(args)
    print(f"{base.model.arch}/{base.model.encoder_name}, batch {base.train.batch_size}, "
          f"{machine_cores()} cores on this machine")
    print(f"{'num_workers':>12} {'workers':>7} {'threads':>7} {'full img/s':>10} {'model img/s':>11} "
          f"{'full/model':>10}")
    for setting in args.workers:
        value = setting if setting == "auto" else int(setting)
        cfg = base.model_copy(update={"train": base.train.model_copy(update={"num_workers": value})})
        r = bench_setting(cfg, args.fold, args.steps, args.warmup)
        print(f"{setting:>12} {r['workers']:>7} {r['threads']:>7} {r['full']:>10.1f} {r['model_only']:>11.1f} "
              f"{r['full'] / r['model_only']:>10.2f}")
    print("full: loading + augmentation + model; model: the same step on one batch held in memory; "
          f"device {r['device']}, {r['precision']}; full/model 1.00 = the input pipeline costs nothing")


if __name__ == "__main__":
    main()
