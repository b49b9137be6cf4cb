"""A sampler that holds the share of images with a mask in every batch.

Competitions like Severstal are mostly empty images; sampling a fixed positive share per batch
(e.g. 0.6) keeps the segmentation loss fed while the empty images still teach emptiness.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler


def _stream(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` draws from `pool`: whole shuffled passes over it, so every item comes once per pass."""
    if count == 0 or pool.size == 0:
        return np.zeros(0, dtype=np.int64)
    passes = math.ceil(count / pool.size)
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:count]


class PositiveShareSampler(Sampler[int]):
    """Yield indices so that each batch of `batch_size` holds `round(share * batch_size)` positives.

    Rounding is carried from batch to batch, so a share that is not a multiple of `1 / batch_size`
    still holds on average (e.g. 0.3 of 8: batches of 2 and 3 positives). The order is a function of
    `seed` and the epoch (`set_epoch`) only. With DDP every replica gets its own batches of one
    global sequence (no index is shared within a pass), each batch holding the share.

    Example::

        sampler = PositiveShareSampler(annotations.presence[train_rows], 0.6, None, seed=42, batch_size=16)
        loader = DataLoader(dataset, batch_size=16, sampler=sampler)
    """

    def __init__(
        self,
        presence: np.ndarray,
        share: float,
        num_samples: int | None = None,
        seed: int = 0,
        *,
        batch_size: int = 8,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        """Args:
        presence: (N, C) or (N,) per-image class presence; an image is positive when any is set.
        share: wanted fraction of positive images per batch, in [0, 1].
        num_samples: samples per epoch over all replicas (default N); rounded up to whole batches
            on every replica.
        seed: base seed; the epoch is mixed in.
        batch_size: the DataLoader's batch size (per replica).
        num_replicas, rank: the DDP world size and this process's rank.
        """
        presence = np.asarray(presence, dtype=bool)
        positive = presence.reshape(len(presence), -1).any(axis=1)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < num_replicas, got {batch_size}, {rank}, "
                             f"{num_replicas}")
        if len(positive) == 0:
            raise ValueError("presence is empty: there is nothing to sample")
        self.positives = np.flatnonzero(positive)
        self.negatives = np.flatnonzero(~positive)
        self._warned = False
        self.set_share(share)
        self.num_samples = int(num_samples) if num_samples is not None else len(positive)
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        global_batches = math.ceil(self.num_samples / self.batch_size)
        self.batches_per_replica = max(1, math.ceil(global_batches / self.num_replicas))

    def __len__(self) -> int:
        return self.batches_per_replica * self.batch_size

    def set_share(self, share: float) -> None:
        """Change the positive share (from the next `__iter__`), e.g. a share that falls over the epochs.

        A share the images cannot give (positives wanted but none exist, or empties wanted but none
        exist) becomes 0 or 1 with a warning.
        """
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        total = self.positives.size + self.negatives.size
        self.share = float(share)
        problem = None
        if self.share > 0 and self.positives.size == 0:
            problem, self.share = f"no positive image among {total}; batches are all empty images", 0.0
        elif self.share < 1 and self.negatives.size == 0:
            problem, self.share = f"no empty image among {total}; batches are all positive", 1.0
        if problem is not None and not self._warned:  # once, not every epoch of a falling share
            warnings.warn(f"PositiveShareSampler: {problem}", stacklevel=2)
            self._warned = True

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` gives (call it before each epoch)."""
        self.epoch = int(epoch)

    def positives_per_batch(self) -> np.ndarray:
        """Positives in each global batch: the rounded share, with the rounding carried over."""
        n_batches = self.batches_per_replica * self.num_replicas
        cumulative = np.floor(self.share * self.batch_size * np.arange(n_batches + 1) + 0.5).astype(np.int64)
        return np.diff(cumulative)

    def global_order(self) -> np.ndarray:
        """(replicas * batches, batch_size) indices of this epoch: row g is global batch g."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_pos = self.positives_per_batch()
        n_batches = n_pos.size
        pos = _stream(self.positives, int(n_pos.sum()), rng)
        neg = _stream(self.negatives, n_batches * self.batch_size - int(n_pos.sum()), rng)
        # per row: the first n_pos[g] slots take positives, the rest negatives; then shuffle within rows
        is_pos = np.arange(self.batch_size)[None, :] < n_pos[:, None]
        order = np.empty((n_batches, self.batch_size), dtype=np.int64)
        order[is_pos], order[~is_pos] = pos, neg
        return np.take_along_axis(order, rng.permuted(np.tile(np.arange(self.batch_size), (n_batches, 1)), axis=1),
                                  axis=1)

    def __iter__(self) -> Iterator[int]:
        # global batch g goes to replica g % num_replicas
        return iter(self.global_order()[self.rank :: self.num_replicas].ravel().tolist())

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume with the same order."""
        return {"epoch": self.epoch, "seed": self.seed, "share": self.share, "num_samples": self.num_samples,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch and seed of `state_dict()`; the share and sizes come from the new config."""
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])


class PseudoMixSampler(Sampler[int]):
    """Add pseudo-labelled images to every batch at a fixed share, on top of a sampler of the real images.

    The real images come from `base` (shuffled, or positive-share; already sharded for DDP), each once
    per epoch; every batch of `batch_size` holds `round(share * batch_size)` pseudo images (rounding
    carried over) and real ones in the remaining slots, so the epoch grows to
    `ceil(len(base) / ((1 - share) * batch_size))` batches. Pseudo indices are `offset + j` (their
    position after the real images in a ConcatDataset), drawn in whole shuffled passes.
    """

    def __init__(self, base: Any, n_pseudo: int, offset: int, share: float, *, batch_size: int, seed: int = 0,
                 rank: int = 0) -> None:
        if not 0.0 < share < 1.0:
            raise ValueError(f"the pseudo share must be in (0, 1), got {share}")
        if n_pseudo < 1:
            raise ValueError("no pseudo-labelled image to mix in")
        self.base, self.n_pseudo, self.offset, self.share = base, int(n_pseudo), int(offset), float(share)
        self.batch_size, self.seed, self.rank, self.epoch = int(batch_size), int(seed), int(rank), 0
        self.batches = max(1, math.ceil(len(base) / ((1.0 - self.share) * self.batch_size)))

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def pseudo_per_batch(self) -> np.ndarray:
        cumulative = np.floor(self.share * self.batch_size * np.arange(self.batches + 1) + 0.5).astype(np.int64)
        return np.diff(cumulative)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 7])
        n_pseudo = self.pseudo_per_batch()
        real_needed = self.batches * self.batch_size - int(n_pseudo.sum())
        real = np.asarray(list(iter(self.base)), dtype=np.int64)
        if real.size < real_needed:  # the rounding of the last batch: wrap around
            real = np.concatenate([real, real[: real_needed - real.size]])
        pseudo = self.offset + _stream(np.arange(self.n_pseudo), int(n_pseudo.sum()), rng)
        order, r, q = [], 0, 0
        for count in n_pseudo:
            batch = np.concatenate([pseudo[q:q + count], real[r:r + self.batch_size - count]])
            q, r = q + count, r + self.batch_size - count
            order.extend(rng.permutation(batch).tolist())
        return iter(order)

    def set_share(self, share: float) -> None:
        """The positive share of the real images (a falling share), passed to the base sampler."""
        if hasattr(self.base, "set_share"):
            self.base.set_share(share)

    def state_dict(self) -> dict[str, Any]:
        base = self.base.state_dict() if hasattr(self.base, "state_dict") else {}
        return {"epoch": self.epoch, "base": base}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        if hasattr(self.base, "load_state_dict") and state.get("base"):
            self.base.load_state_dict(state["base"])
