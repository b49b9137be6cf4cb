"""Test-time augmentation with ttach, merged as probabilities.

Every augmented copy goes through the model, its logits become probabilities (sigmoid, or softmax
over classes for multiclass) and only then are the copies brought back (`deaugment_mask`) and
averaged: the mean of sigmoids, never the sigmoid of mean logits. Copies of the same shape are
stacked along the batch dimension so that they share one forward pass (`forward_batch` caps how
many go through at once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import ttach
from torch import nn
from ttach.base import Merger

from segfold.models import unpack_outputs
from segfold.probs import probabilities

TTA_NAMES = ("none", "hflip", "vflip", "flips", "d4")

Predictor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def build_tta(name: str = "flips", scales: Sequence[float] = (1.0,)) -> ttach.Compose:
    """The ttach composition for a TTA name and multi-scale factors.

    Args:
        name: "none", "hflip", "vflip", "flips" (horizontal x vertical: 4 copies) or "d4" (the 8
            flips and right-angle rotations).
        scales: image scale factors; 1.0 is always included. Scaled copies use bilinear resizing.

    Returns:
        A `ttach.Compose`; `len()` is the number of copies.
    """
    transforms: list = []
    if name == "hflip":
        transforms.append(ttach.HorizontalFlip())
    elif name == "vflip":
        transforms.append(ttach.VerticalFlip())
    elif name == "flips":
        transforms += [ttach.HorizontalFlip(), ttach.VerticalFlip()]
    elif name == "d4":
        transforms += [ttach.HorizontalFlip(), ttach.Rotate90(angles=[0, 90, 180, 270])]
    elif name != "none":
        raise ValueError(f"unknown TTA '{name}': use one of {', '.join(TTA_NAMES)}")
    if any(float(s) != 1.0 for s in scales):
        transforms.append(ttach.Scale(sorted({1.0, *map(float, scales)}), interpolation="bilinear",
                                      align_corners=False))
    return ttach.Compose(transforms)  # NOTE an empty Compose yields one identity copy


def _forward(model: nn.Module, images: torch.Tensor, forward_batch: int | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mask logits and aux labels (or None) of `images`, in chunks of at most `forward_batch`."""
    step = forward_batch or len(images)
    masks, labels = [], []
    for start in range(0, len(images), step):
        out = unpack_outputs(model(images[start:start + step]))
        masks.append(out.masks)
        if out.labels is not None:
            labels.append(out.labels)
    return torch.cat(masks), (torch.cat(labels) if labels else None)


@torch.no_grad()
def tta_predict(model: nn.Module, images: torch.Tensor, transforms: ttach.Compose, mode: str = "multilabel",
                forward_batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities of `images` averaged over the augmented copies.

    Args:
        model: a segfold model in eval mode (logits out, same size as its input).
        images: `(N, 3, H, W)` normalised images.
        transforms: from `build_tta`.
        mode: data mode; "multiclass" uses softmax, the others sigmoid.
        forward_batch: most images in one forward pass (None: every copy of the same shape at once).

    Returns:
        mask probabilities `(N, C, H, W)` float32 and aux-head class probabilities `(N, C)` (sigmoid) or None.
    """
    batch, _, height, width = images.shape
    transformers = list(transforms)
    augmented = [t.augment_image(images) for t in transformers]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, copy in enumerate(augmented):
        groups.setdefault(tuple(copy.shape), []).append(index)
    masks: list[torch.Tensor | None] = [None] * len(augmented)
    labels: list[torch.Tensor | None] = [None] * len(augmented)
    for indices in groups.values():
        stacked = torch.cat([augmented[i] for i in indices])  # (copies * N, 3, h, w)
        logits, label_logits = _forward(model, stacked, forward_batch)
        probs = probabilities(logits, mode)
        for slot, index in enumerate(indices):
            masks[index] = probs[slot * batch:(slot + 1) * batch]
            if label_logits is not None:
                labels[index] = label_logits[slot * batch:(slot + 1) * batch].float().sigmoid()
    mask_merger = Merger(type="mean", n=len(transformers))
    label_merger = Merger(type="mean", n=len(transformers))
    for transformer, prob, label in zip(transformers, masks, labels, strict=True):
        restored = transformer.deaugment_mask(prob)
        if restored.shape[-2:] != (height, width):
            # NOTE ttach scales back by int(h * s / s), which can miss the original size by a pixel
            restored = F.interpolate(restored, size=(height, width), mode="bilinear", align_corners=False)
        mask_merger.append(restored)
        if label is not None:
            label_merger.append(transformer.deaugment_label(label))
    return mask_merger.result, (label_merger.result if label_merger.output is not None else None)


def make_predictor(models: Sequence[nn.Module], transforms: ttach.Compose, mode: str,
                   forward_batch: int | None = None, weights: Sequence[float] | None = None) -> Predictor:
    """A function `images -> (probs, cls_probs | None)` averaging the TTA probabilities of `models` (folds).

    `weights` (one per model, normalised here) weigh the average; None: equal weights.
    """
    if weights is not None and len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} models")
    raw = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    shares = [w / sum(raw) for w in raw]

    def predict(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        total, total_cls, cls_weight = None, None, 0.0
        for model, share in zip(models, shares, strict=True):
            probs, cls_probs = tta_predict(model, images, transforms, mode, forward_batch)
            total = probs * share if total is None else total + probs * share
            if cls_probs is not None:
                total_cls = cls_probs * share if total_cls is None else total_cls + cls_probs * share
                cls_weight += share
        return total, (total_cls / cls_weight if cls_weight else None)

    return predict
