"""True masks at the scoring resolution: from the training labels, from a batch, and a bit-packed cache.

Every stage that scores (validation, the OOF, tuning, blending, a submission against labels) builds
its true masks here: nearest-neighbour resize of the native label to the store's resolution, and
multiclass index maps one-hot encoded with ignored pixels (`ignore_index`) in no class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segfold.data.formats import Annotations, read_train
from segfold.errors import DataError

TruthFn = Callable[[str], np.ndarray]
TRUTH_CACHE_BYTES = 512 << 20  # packed true masks are kept in memory up to this size, the rest re-read


def resize_nearest(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A `(H, W)` or `(C, H, W)` label resized to `shape` (height, width) by nearest neighbour."""
    height, width = int(shape[0]), int(shape[1])
    if mask.shape[-2:] == (height, width):
        return mask
    if mask.ndim == 2:
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in mask])


def fit_mask(mask: np.ndarray, num_classes: int, height: int, width: int) -> np.ndarray:
    """A true mask as bool `(C, H, W)` at the store's resolution (nearest-neighbour resize).

    Args:
        mask: `(C, h, w)` binary / multilabel masks, or an `(h, w)` index map (multiclass: value c is
            class c; any other value, the ignore label, is no class).
        num_classes: C.
        height: the store's height.
        width: the store's width.
    """
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None] == np.arange(num_classes)[:, None, None]
    if mask.shape[0] != num_classes:
        raise DataError(f"a true mask has {mask.shape[0]} classes but the probability store has {num_classes}")
    return resize_nearest(mask.astype(np.uint8), (height, width)).astype(bool)


def truth_masks(annotations: Annotations, image_ids: Sequence[str], shape: Sequence[int],
                num_classes: int) -> np.ndarray:
    """Binary truth `(n, C, H, W)` uint8 of `image_ids` at `shape` (height, width)."""
    out = np.zeros((len(image_ids), num_classes, int(shape[0]), int(shape[1])), dtype=np.uint8)
    for i, image_id in enumerate(image_ids):
        out[i] = fit_mask(annotations.mask(str(image_id)), num_classes, int(shape[0]), int(shape[1]))
    return out


def batch_truth(batch: dict[str, Any], annotations: Annotations, mode: str, num_classes: int,
                size: Sequence[int]) -> torch.Tensor:
    """Bool truth `(N, C, H, W)` of a training batch at the metric `size`.

    The batch's own masks when they already are that size, else the native labels resized (`truth_masks`).
    """
    mask = batch["mask"]
    if tuple(mask.shape[-2:]) != tuple(int(s) for s in size):
        ids = [str(i) for i in batch["image_id"]]
        return torch.from_numpy(truth_masks(annotations, ids, size, num_classes)).bool()
    if mode == "multiclass":
        labels = mask.long()
        valid = labels < num_classes  # ignore_index (and anything out of range) is no class
        return F.one_hot(labels.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).bool() & valid[:, None]
    return mask > 0.5


def make_truth_reader(data_cfg: Any, classes: Sequence[str], height: int, width: int) -> TruthFn:
    """`image_id -> bool (C, H, W)` true masks from the training annotations, at the store's resolution."""
    annotations = read_train(data_cfg)
    names = getattr(annotations, "classes", None)
    if names is not None and [str(c) for c in names] != [str(c) for c in classes]:
        raise DataError(f"the OOF store's classes {list(classes)} differ from the annotations' {list(names)} "
                        f"({data_cfg.root}); was the OOF written with another data config?")

    def truth(image_id: str) -> np.ndarray:
        return fit_mask(annotations.mask(image_id), len(classes), height, width)

    return truth


def read_truth(truth_fn: TruthFn, image_ids: Sequence[str], shape: Sequence[int]) -> np.ndarray:
    """Stack the true masks of `image_ids` as bool `(n, C, H, W)`; a mask of another shape is an error."""
    masks = []
    for image_id in image_ids:
        mask = np.asarray(truth_fn(image_id))
        if mask.shape != tuple(shape):
            raise DataError(f"true mask of image {image_id!r} has shape {mask.shape}, expected {tuple(shape)} "
                            "(the probability store's classes and resolution)")
        masks.append(mask.astype(bool, copy=False))
    return np.stack(masks) if masks else np.zeros((0, *shape), dtype=bool)


class PackedTruth:
    """`truth_fn` with the masks of `image_ids` kept bit-packed in memory, for searches that re-read them.

    Masks are packed per class on first read while they fit in `max_bytes`; the others are read
    again each time. Callable like `truth_fn`; `channel(ids, c)` unpacks one class only.

    Args:
        truth_fn: `image_id -> (C, H, W)` true masks.
        image_ids: the images worth keeping (others pass through).
        max_bytes: the memory the packed masks may take.
    """

    def __init__(self, truth_fn: TruthFn, image_ids: Sequence[str], max_bytes: int = TRUTH_CACHE_BYTES) -> None:
        self.truth_fn = truth_fn
        self.wanted = set(image_ids)
        self.budget = max_bytes
        self._packed: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}

    def _get(self, image_id: str, channel: int | None) -> np.ndarray:
        if image_id in self._packed:
            bits, shape = self._packed[image_id]  # bits: (C, ceil(H * W / 8))
            rows = bits if channel is None else bits[channel:channel + 1]
            masks = np.unpackbits(rows, axis=-1, count=shape[1] * shape[2]).reshape(len(rows), *shape[1:])
            return masks.astype(bool) if channel is None else masks[0].astype(bool)
        mask = np.asarray(self.truth_fn(image_id)).astype(bool)
        size = mask.shape[0] * -(-mask.shape[1] * mask.shape[2] // 8)
        if image_id in self.wanted and mask.ndim == 3 and self.budget >= size:
            self._packed[image_id] = (np.packbits(mask.reshape(mask.shape[0], -1), axis=-1), mask.shape)
            self.budget -= size
        return mask if channel is None else mask[channel]

    def __call__(self, image_id: str) -> np.ndarray:
        return self._get(image_id, None)

    def channel(self, image_ids: Sequence[str], c: int, shape: Sequence[int]) -> np.ndarray:
        """bool `(n, H, W)` true masks of class `c`; `shape` is `(C, H, W)` (checked)."""
        out = np.zeros((len(image_ids), *shape[1:]), dtype=bool)
        for i, image_id in enumerate(image_ids):
            if image_id not in self._packed:
                out[i] = read_truth(self, [image_id], shape)[0, c]
            else:
                out[i] = self._get(image_id, c)
        return out
