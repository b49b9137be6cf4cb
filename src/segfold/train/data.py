"""A fold's data for training: datasets, samplers and loaders, seeded per epoch, sharded over DDP ranks.

Randomness that decides an epoch (shuffling, the positive-share order, augmentations, worker seeds)
is a function of `(experiment.seed, epoch, rank)` only, so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler, Subset, get_worker_info

from segfold.cores import resolve_loader_workers, worker_threads
from segfold.data.dataset import SegmentationDataset
from segfold.data.demo import ensure_demo_data
from segfold.data.folds import load_folds
from segfold.data.formats import read_train
from segfold.data.pseudo import read_pseudo
from segfold.data.sampler import PositiveShareSampler, PseudoMixSampler
from segfold.data.transforms import build_transforms
from segfold.errors import ConfigError, DataError
from segfold.train.distributed import DistInfo, barrier, shard_indices


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across processes and Python versions)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker init: give the worker's copy of the augmentations its own seed.

    NOTE albumentations keeps its own generator in each Compose; without this every worker would
    start from the parent's state and draw the same augmentations.
    """
    info = get_worker_info()
    transforms = getattr(info.dataset, "transforms", None) if info is not None else None
    if transforms is not None and hasattr(transforms, "set_random_seed"):
        transforms.set_random_seed(info.seed % 2**32)
    worker_threads()


@dataclass
class FoldData:
    """The loaders of one fold and what validation and OOF need besides."""

    train_dataset: Any
    train_loader: DataLoader
    train_sampler: Any
    generator: torch.Generator
    valid_dataset: Any
    valid_loader: DataLoader
    annotations: Any
    train_ids: list[str]
    valid_ids: list[str]
    metric_size: tuple[int, int]
    num_batches: int
    loader_workers: int = 0
    # epoch -> positive share (a falling share); FoldRun re-points it at epochs derived from train.steps
    share_at: Callable[[int], float | None] | None = None

    def set_epoch(self, seed: int, epoch: int, rank: int) -> None:
        """Fix this epoch's order, positive share and augmentations from `(seed, epoch, rank)`."""
        if self.share_at is not None and hasattr(self.train_sampler, "set_share"):
            share = self.share_at(epoch)
            if share is not None:
                self.train_sampler.set_share(share)
        self.train_sampler.set_epoch(epoch)
        epoch_seed = derived_seed(seed, epoch, rank)
        self.generator.manual_seed(epoch_seed)
        transforms = getattr(self.train_dataset, "transforms", None)
        if transforms is not None and hasattr(transforms, "set_random_seed"):
            transforms.set_random_seed(epoch_seed % 2**32)  # used as is when num_workers == 0


class _TrainingSet(ConcatDataset):
    """Real then pseudo-labelled training images; `transforms` (shared by both) for the worker seeding."""

    @property
    def transforms(self) -> Any:
        return self.datasets[0].transforms


def split_fold(cfg: Any, fold: int | str, info: DistInfo) -> tuple[Any, list[str], list[str]]:
    """Read the labels and the folds (rank 0 writes the demo data and `folds.csv` first).

    Returns:
        `(annotations, train ids, valid ids)`.
    """
    if info.is_main:
        ensure_demo_data(cfg.data, seed=cfg.experiment.seed)
        load_folds(cfg)
    barrier(info)
    annotations = read_train(cfg.data)
    folds = load_folds(cfg, create=False)
    n_folds = cfg.data.folds.n_folds
    if fold == "full":  # a full-data fit: every image of every fold, none held out (the holdout stays out)
        return annotations, folds.loc[folds["fold"] >= 0, "ImageId"].astype(str).tolist(), []
    if not 0 <= fold < n_folds:
        raise ConfigError(f"fold {fold} does not exist: data.folds.n_folds = {n_folds}, so use 0 to {n_folds - 1}")
    numbers = folds["fold"].to_numpy()
    in_fold = numbers == fold
    valid_ids = folds.loc[in_fold, "ImageId"].astype(str).tolist()
    train_ids = folds.loc[~in_fold & (numbers >= 0), "ImageId"].astype(str).tolist()  # fold -1: the holdout
    if not valid_ids or not train_ids:
        raise DataError(f"fold {fold} leaves {len(train_ids)} training and {len(valid_ids)} validation images")
    return annotations, train_ids, valid_ids


def resolve_metric_size(data_cfg: Any, annotations: Any, image_ids: list[str]) -> tuple[int, int]:
    """`data.metric_size`, else the images' native size (which must then be the same for all of them)."""
    if data_cfg.metric_size is not None:
        return tuple(int(v) for v in data_cfg.metric_size)  # type: ignore[return-value]
    rows = [annotations.index(i) for i in image_ids]
    shapes = np.unique(np.asarray(annotations.shapes)[rows], axis=0)
    if len(shapes) != 1:
        raise ConfigError(
            f"the validation images have {len(shapes)} different sizes (e.g. {shapes[:3].tolist()}); "
            "set data.metric_size: [height, width] to score and store them at one resolution"
        )
    return int(shapes[0][0]), int(shapes[0][1])


def build_fold_data(cfg: Any, fold: int | str, info: DistInfo, mean: list[float], std: list[float]) -> FoldData:
    """Datasets and loaders of `fold` for this rank.

    Args:
        cfg: the experiment config.
        fold: the held-out fold.
        info: rank, world size and device.
        mean, std: the encoder's normalisation (`model.pretrained_cfg`).
    """
    annotations, train_ids, valid_ids = split_fold(cfg, fold, info)
    common = dict(mean=mean, std=std, annotations=annotations, in_channels=cfg.model.in_channels)
    train_ds = SegmentationDataset(cfg.data, train_ids, transforms=build_transforms(cfg.data, "train"), **common)
    valid_ds = SegmentationDataset(cfg.data, valid_ids, transforms=build_transforms(cfg.data, "valid"), **common)
    batch_size, seed = cfg.train.batch_size, cfg.experiment.seed
    # NOTE epoch 1's share does not depend on the epoch count (with train.steps it is derived after this)
    share = cfg.data.sampler.share_at(1, cfg.train.epochs)
    if share is not None:
        presence = annotations.presence[[annotations.index(i) for i in train_ids]]
        if cfg.data.background in cfg.data.classes:
            # NOTE: the background class is present in almost every image; "positive" means a foreground class
            keep = [c != cfg.data.background for c in cfg.data.classes]
            presence = presence[:, keep]
        sampler: Any = PositiveShareSampler(presence, share, None, seed=seed, batch_size=batch_size,
                                            num_replicas=info.world_size, rank=info.rank)
    else:
        sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    loader_ds: Any = train_ds
    if cfg.data.pseudo.path is not None:
        # NOTE pseudo images join the training batches only: validation, the OOF and the folds never see them
        pseudo_cfg, pseudo_ann = read_pseudo(cfg.data)
        pseudo_ds = SegmentationDataset(pseudo_cfg, pseudo_ann.image_ids, transforms=train_ds.transforms,
                                        **{**common, "annotations": pseudo_ann})
        loader_ds = _TrainingSet([train_ds, pseudo_ds])
        sampler = PseudoMixSampler(sampler, len(pseudo_ds), len(train_ds), cfg.data.pseudo.share,
                                   batch_size=batch_size, seed=seed, rank=info.rank)
    generator = torch.Generator()
    pin = info.device.type == "cuda"
    workers = resolve_loader_workers(cfg.train.num_workers, batch_size, info.device.type)
    # NOTE a last batch of one image breaks BatchNorm in training mode: drop it (only it).
    drop_last = len(sampler) % batch_size == 1 and len(sampler) > 1
    train_loader = DataLoader(
        loader_ds, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin, drop_last=drop_last,
        generator=generator, worker_init_fn=_seed_worker, persistent_workers=False,
    )
    num_batches = len(train_loader)
    if cfg.train.max_train_batches is not None:
        num_batches = min(num_batches, cfg.train.max_train_batches)
    if num_batches == 0:
        raise ConfigError(f"train.batch_size = {batch_size} leaves no batch from the {len(train_ids)} training "
                          f"images of fold {fold}; lower it")
    valid_loader = DataLoader(
        Subset(valid_ds, shard_indices(len(valid_ds), info)), batch_size=cfg.train.valid_batch_size or batch_size,
        shuffle=False, num_workers=workers, pin_memory=pin,
    )
    # NOTE a full fit has no validation images: its metric size is never used
    metric_size = tuple(cfg.data.image_size or (0, 0))
    if valid_ids:
        metric_size = resolve_metric_size(cfg.data, annotations, valid_ids)
    return FoldData(train_ds, train_loader, sampler, generator, valid_ds, valid_loader, annotations, train_ids,
                    valid_ids, metric_size, num_batches, workers,
                    share_at=lambda epoch: cfg.data.sampler.share_at(epoch, cfg.train.epochs))
