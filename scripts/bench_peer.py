"""The peer: the plain recipe a segmentation_models_pytorch user would write, on the chain's data and folds.

    python scripts/bench_peer.py --config configs/camvid4.yaml [--epochs 20] [--folds 0,1,2] [--merge A.json ...]

Unet on efficientnet-lite0 with ImageNet weights (input normalised as those weights expect: mean =
std = 0.5), BCE + Dice, Adam at 1e-3 without a schedule, horizontal flips only, batch 8, the last
epoch's weights, threshold 0.5, no TTA, no minimum area. The network comes from segfold's model zoo
(segmentation_models_pytorch is not imported); the loop is a plain hand-written one, not segfold's
trainer. The folds are the chain's `folds.csv` (made the same way when missing: for CamVid-4 grouped
by video sequence), the training size is the config's `data.image_size` (the native size when null;
`--set data.image_size=null` trains at native size) and every validation image is scored at its
native size.

Prints and writes (`outputs/<experiment>/peer/peer.json`, or `--out`) the out-of-fold mean Dice over
(image, class) pairs with the Severstal rule (a pair where both masks are empty scores 1), overall,
per class and per fold. The Dice here is computed with numpy, independently of segfold's scorer.

`--merge` adds the folds of earlier runs (their `peer.json`), so that folds run on different days make one
OOF: `--folds` then defaults to the folds none of them holds (none at all when they hold every fold). Each
file must hold the same recipe and the fold sizes of this `folds.csv`; a fold held twice is an error. The
JSON's `merged` names the file of each merged fold; its `seconds` are those of the folds trained in this run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import segfold
from segfold.cli import add_config_arguments, config_from_args, script_main
from segfold.data.dataset import SegmentationDataset
from segfold.data.folds import load_folds
from segfold.data.formats import read_train
from segfold.errors import ConfigError
from segfold.io import write_json_atomic
from segfold.losses import DiceLoss

RECIPE = {"arch": "Unet", "encoder": "efficientnet-lite0", "weights": "imagenet", "loss": "bce + dice",
          "optimizer": "adam", "lr": 1e-3, "batch_size": 8, "epochs": 20, "augment": "horizontal flip p=0.5",
          "threshold": 0.5, "tta": "none", "min_area": 0, "weights_kept": "last epoch"}


def dice_per_pair(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of each (image, class) pair: 2|P & T| / (|P| + |T|), and 1 where both are empty.

    Args:
        pred, truth: bool (N, C, H, W).

    Returns:
        float64 (N, C).
    """
    pred = pred.reshape(pred.shape[0], pred.shape[1], -1).astype(bool)
    truth = truth.reshape(truth.shape[0], truth.shape[1], -1).astype(bool)
    overlap = np.logical_and(pred, truth).sum(axis=2).astype(np.float64)
    total = pred.sum(axis=2).astype(np.float64) + truth.sum(axis=2)
    return np.where(total == 0, 1.0, 2.0 * overlap / np.maximum(total, 1.0))


def loaders(cfg: Any, annotations: Any, train_ids: list[str], valid_ids: list[str], mean: list[float],
            std: list[float], batch_size: int, seed: int) -> tuple[Any, Any]:
    """Training (horizontal flips) and validation DataLoaders at the config's `data.image_size`."""
    common = {"annotations": annotations, "mean": mean, "std": std}
    flips = A.Compose([A.HorizontalFlip(p=0.5)], seed=seed)
    train_set = SegmentationDataset(cfg.data, train_ids, transforms=flips, **common)
    valid_set = SegmentationDataset(cfg.data, valid_ids, **common)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    return train_loader, DataLoader(valid_set, batch_size=batch_size, shuffle=False)


def train_fold(model: torch.nn.Module, train_loader: Any, epochs: int, lr: float, log: Any) -> None:
    """The plain loop: Adam, BCE + Dice (smp's `DiceLoss("multilabel")`: segfold's has the same semantics)."""
    dice = DiceLoss("multilabel", from_logits=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(1, epochs + 1):
        model.train()
        total, count, started = 0.0, 0, time.perf_counter()
        for batch in train_loader:
            logits = model(batch["image"])
            target = batch["mask"]
            loss = F.binary_cross_entropy_with_logits(logits, target) + dice(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(target)
            count += len(target)
        log(f"  epoch {epoch}/{epochs}: loss {total / max(count, 1):.4f} ({time.perf_counter() - started:.0f}s)")


@torch.no_grad()
def score_fold(model: torch.nn.Module, valid_loader: Any, annotations: Any, threshold: float) -> np.ndarray:
    """Dice per (image, class) of the validation images, predicted at training size, scored at native size."""
    model.eval()
    scores = []
    for batch in valid_loader:
        probs = model(batch["image"]).sigmoid()
        for row, image_id in enumerate(batch["image_id"]):
            truth = annotations.mask(image_id)  # (C, H, W) at native size
            native = F.interpolate(probs[row : row + 1], size=truth.shape[-2:], mode="bilinear", align_corners=False)
            pred = native[0].numpy() > threshold
            scores.append(dice_per_pair(pred[None], truth[None].astype(bool))[0])
    return np.stack(scores)


def fold_summary(scores: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Mean Dice overall and per class of one set of (image, class) scores (N, C)."""
    return {"dice": float(scores.mean()), "images": int(scores.shape[0]),
            "per_class": dict(zip(classes, scores.mean(axis=0).tolist(), strict=True))}


def pooled(per_fold: dict[str, dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """The OOF of whole folds: each (image, class) pair counts once, so the image-weighted mean of the folds."""
    images = sum(fold["images"] for fold in per_fold.values())
    per_class = {name: sum(fold["per_class"][name] * fold["images"] for fold in per_fold.values()) / images
                 for name in classes}
    return {"dice": float(np.mean(list(per_class.values()))), "images": images, "per_class": per_class}


def read_merged(paths: list[Path], recipe: dict[str, Any], table: Any,
                classes: list[str]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The folds of earlier peer.json files, checked against this run's recipe, folds.csv and classes.

    Returns:
        `{fold: (the file it came from, its summary)}`.
    """
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            earlier = json.loads(Path(path).read_text())
            theirs, folds = earlier["recipe"], earlier["folds"]
            sizes = {fold: (int(fold), int(summary["images"]), list(summary["per_class"]))
                     for fold, summary in folds.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"--merge {path}: not a peer.json written by bench_peer.py ({exc})") from exc
        differ = sorted(key for key in set(recipe) | set(theirs) if recipe.get(key) != theirs.get(key))
        if differ:
            key = differ[0]
            raise ConfigError(f"--merge {path}: recipe.{key} is {theirs.get(key)!r} there and {recipe.get(key)!r} "
                              f"in this run; merge only runs of the same recipe (--epochs, data.image_size)")
        for fold, summary in folds.items():
            if fold in merged:
                raise ConfigError(f"--merge {path}: fold {fold} is also in {merged[fold][0]}; give each fold once")
            number, images, names = sizes[fold]
            expected = int((table["fold"].to_numpy() == number).sum())
            if images != expected or names != classes:
                raise ConfigError(f"--merge {path}: fold {fold} holds {images} images of classes {names}, this "
                                  f"folds.csv {expected} of {classes}: it was run on other folds or data; rerun that "
                                  "fold")
            merged[fold] = (path, summary)
    return merged


def run(cfg: Any, folds: list[int] | None, epochs: int, log: Any = print,
        merge: list[Path] | tuple[Path, ...] = ()) -> dict[str, Any]:
    """Train and score each fold with the peer recipe, add the folds of `merge`; returns the summary for JSON."""
    if cfg.data.mode == "multiclass":
        raise ConfigError("bench_peer.py runs the binary/multilabel recipe (sigmoid, BCE + Dice); "
                          f"data.mode is {cfg.data.mode!r}")
    annotations = read_train(cfg.data)
    table = load_folds(cfg)  # the chain's folds.csv: its rows are the training images, as for the trainer
    classes = list(cfg.data.classes)
    recipe = dict(RECIPE, epochs=epochs, image_size=list(cfg.data.image_size) if cfg.data.image_size else None)
    merged = read_merged(list(merge), recipe, table, classes)
    per_fold = {fold: summary for fold, (_, summary) in merged.items()}
    if folds is None:
        folds = [fold for fold in range(cfg.data.folds.n_folds) if str(fold) not in per_fold]
    for fold in folds:
        if str(fold) in per_fold:
            raise ConfigError(f"--folds {fold}: that fold is already in a --merge file; drop it from one of them")
    started = time.perf_counter()
    for fold in folds:
        in_fold = table["fold"].to_numpy() == fold
        valid_ids = table.loc[in_fold, "ImageId"].astype(str).tolist()
        train_ids = table.loc[~in_fold, "ImageId"].astype(str).tolist()
        if not valid_ids or not train_ids:
            raise ConfigError(f"fold {fold} leaves {len(train_ids)} training and {len(valid_ids)} validation images "
                              f"(data.folds.n_folds = {cfg.data.folds.n_folds}; --folds takes 0 to "
                              f"{cfg.data.folds.n_folds - 1})")
        torch.manual_seed(cfg.experiment.seed + fold)
        model = segfold.create_model(RECIPE["arch"], encoder_name=RECIPE["encoder"],
                                     encoder_weights=RECIPE["weights"], classes=len(classes))
        norm = model.pretrained_cfg  # the normalisation of the weights loaded (0.5 / 0.5 for the TF Lite ones)
        train_loader, valid_loader = loaders(cfg, annotations, train_ids, valid_ids, norm["mean"], norm["std"],
                                             RECIPE["batch_size"], cfg.experiment.seed + fold)
        log(f"fold {fold}: {len(train_ids)} training, {len(valid_ids)} validation images, mean/std "
            f"{norm['mean']}/{norm['std']}")
        train_fold(model, train_loader, epochs, RECIPE["lr"], log)
        scores = score_fold(model, valid_loader, annotations, RECIPE["threshold"])
        per_fold[str(fold)] = fold_summary(scores, classes)
        log(f"fold {fold}: Dice {scores.mean():.4f}")
    if not per_fold:
        raise ConfigError("no fold to score: give --folds or --merge")
    per_fold = dict(sorted(per_fold.items(), key=lambda item: int(item[0])))
    return {
        "recipe": recipe,
        "folds": per_fold,
        "oof": pooled(per_fold, classes),
        "metric": "mean Dice over (image, class) pairs, both empty = 1, at native size",
        "seconds": round(time.perf_counter() - started, 1),  # of the folds trained in this run
        "merged": {fold: str(merged[fold][0]) for fold in per_fold if fold in merged},  # per_fold is sorted
    }


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__,
                                                          formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="epochs per fold (default 20)")
    parser.add_argument("--folds", default=None,
                        help="comma-separated folds (default: every fold no --merge file holds)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default outputs/<exp>/peer/peer.json)")
    parser.add_argument("--merge", type=Path, nargs="+", default=[],
                        help="earlier peer.json files whose folds join this run's in one OOF")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    folds = [int(v) for v in args.folds.split(",")] if args.folds else None
    summary = run(cfg, folds, args.epochs, merge=args.merge)
    out = args.out or cfg.experiment.output_dir / "peer" / "peer.json"
    write_json_atomic(out, summary)
    classes = " ".join(f"{name} {value:.4f}" for name, value in summary["oof"]["per_class"].items())
    folds_line = " ".join(f"{k}: {v['dice']:.4f}" for k, v in summary["folds"].items())
    print(f"peer OOF Dice {summary['oof']['dice']:.4f} over {summary['oof']['images']} images | per class {classes} "
          f"| per fold {folds_line}")
    print(f"wrote {out}")
    print(json.dumps(summary["oof"]))


if __name__ == "__main__":
    main()
