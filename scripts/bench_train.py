"""Training throughput: the full step (data loading and augmentation included) against the model alone.

Both measurements run the trainer's own step (forward, loss, backward, optimizer, EMA when enabled):
first over batches from the fold's DataLoader, then over one batch held in memory. Their ratio says
how much of the step time the input pipeline costs; raise `train.num_workers` when it is low.

    python scripts/bench_train.py                       # the demo experiment
    python scripts/bench_train.py --config configs/x.yaml --steps 30 --set train.num_workers=4
"""

from __future__ import annotations

import argparse
import itertools
import time

from segfold.cli import add_config_arguments, config_from_args, script_main


def measure(trainer, batches, steps: int) -> float:
    """Images per second of `steps` training steps over `batches` (an iterable of dataset batches)."""
    stats = trainer.train_epoch(itertools.islice(batches, steps), epoch=1, num_batches=steps)
    return stats["images"] / max(stats["seconds"], 1e-9)


def repeat(batch, times: int):
    """The same in-memory batch `times` times (no loading, no augmentation)."""
    return itertools.repeat(batch, times)


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--fold", type=int, default=0, help="fold whose training images are loaded")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from segfold.train.checks import check_training_config
    from segfold.train.distributed import init_distributed
    from segfold.train.loop import FoldRun

    check_training_config(cfg)
    started = time.perf_counter()
    run = FoldRun(cfg, args.fold, init_distributed(cfg.train.device))
    run._set_frozen(False)
    data, trainer = run.data, run.trainer
    data.set_epoch(cfg.experiment.seed, 1, 0)
    print(f"set-up {time.perf_counter() - started:.1f}s; {cfg.model.arch}/{cfg.model.encoder_name}, batch "
          f"{cfg.train.batch_size}, {cfg.train.num_workers} workers, {trainer.precision}, device {trainer.info.device}")

    def loader_batches():
        while True:  # cycle over epochs when the fold has fewer batches than asked for
            yield from data.train_loader

    stream = loader_batches()
    measure(trainer, stream, args.warmup)
    full = measure(trainer, stream, args.steps)
    batch = next(stream)
    measure(trainer, repeat(batch, args.warmup), args.warmup)
    model_only = measure(trainer, repeat(batch, args.steps), args.steps)
    print(f"full training step (loading + augmentation + model): {full:8.1f} images/s")
    print(f"model-only step on the same batch size:               {model_only:8.1f} images/s")
    print(f"ratio full / model-only: {full / model_only:.2f} (1.00 = the input pipeline costs nothing)")


if __name__ == "__main__":
    main()
