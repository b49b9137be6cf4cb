"""Train one fold, several, or all of an experiment (default: the demo experiment, configs/default.yaml).

    python scripts/train.py --fold 0                                  # the demo, fold 0 (data made on first use)
    python scripts/train.py --config configs/x.yaml --fold all --set train.epochs=3 model.encoder_weights=null
    python scripts/train.py --config configs/x.yaml --fold 0 --resume   # continue from fold0/last.pt
    python scripts/train.py --config configs/x.yaml --fold 0 --overwrite  # start again (old run kept in replaced/)
    python scripts/train.py --config configs/x.yaml --fold full   # every image, the folds' median best epoch count

A config with `stages:` trains each fold stage after stage (`fold<k>/stage<s>/`, the final stage in
`fold<k>/`); `--resume` continues inside the stage that was running.

Several processes (DistributedDataParallel; gloo on CPU, nccl on CUDA) through torchrun:

    torchrun --nproc_per_node 4 scripts/train.py --config configs/x.yaml --fold 0
    # two machines, 4 GPUs each: run on both, with node_rank 0 and 1 and the first machine's address
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 4 --master_addr 10.0.0.1 --master_port 29500 \\
        scripts/train.py --config configs/x.yaml --fold 0

Only rank 0 writes files; every rank must see the same data and outputs/ paths (a shared disk).
"""

from __future__ import annotations

import argparse

from segfold.cli import add_config_arguments, config_from_args, script_main
from segfold.errors import ConfigError


def parse_folds(text: str, n_folds: int) -> list[int | str]:
    """`all`, `full`, one fold (`2`) or a comma list (`0,2`) -> fold numbers (checked against `n_folds`) or ["full"]."""
    if text.strip().lower() == "all":
        return list(range(n_folds))
    if text.strip().lower() == "full":
        return ["full"]
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--fold {text!r}: expected 'all', 'full', a fold number or a comma list such as 0,2"
                          ) from None
    bad = [f for f in folds if not 0 <= f < n_folds]
    if not folds or bad:
        raise ConfigError(f"--fold {text!r}: folds run from 0 to {n_folds - 1} (data.folds.n_folds = {n_folds})")
    return folds


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--fold", default="0",
                        help="fold number, comma list (0,2), 'all', or 'full' (every training image) (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue each fold from its last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again on folds that hold a run (the old folder moves to <experiment>/replaced/)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from segfold.train.checks import check_training_config

    check_training_config(cfg)
    folds = parse_folds(args.fold, cfg.data.folds.n_folds)

    from segfold.train.distributed import cleanup_distributed, init_distributed
    from segfold.train.loop import train, train_folds

    try:
        if len(folds) == 1:
            result = train(cfg, folds[0], resume=args.resume, overwrite=args.overwrite)
            if init_distributed(cfg.train.device).is_main and folds[0] == "full":
                print(f"full fit: {result['epochs_run']} epochs, {result['checkpoint']} ({result['best_weights']} "
                      f"weights); outputs in {result['fold_dir']}")
            elif init_distributed(cfg.train.device).is_main:
                print(f"fold {folds[0]}: best score {result['best_score']:.4f} at epoch {result['best_epoch']} "
                      f"({result['best_weights']} weights, {result['checkpoint']}); outputs in {result['fold_dir']}")
        else:
            train_folds(cfg, folds, resume=args.resume, overwrite=args.overwrite)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
