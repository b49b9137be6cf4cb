"""Out-of-fold probabilities of a fold: its validation images at the metric resolution, as uint8.

Written batch by batch into a memory-mapped `segfold.infer.store.ProbStore` (`fold<k>/oof.*`, with
the aux head's class probabilities when the model has one), so a large fold never sits in RAM.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from segfold.train.data import FoldData, probabilities, resize_probs


@torch.no_grad()
def write_oof(model: nn.Module, data: FoldData, cfg: Any, folder: Path,
              to_device: Callable[[dict[str, Any]], tuple[torch.Tensor, ...]]) -> Path:
    """Predict every validation image of the fold with `model` and store the probabilities.

    Args:
        model: the model with the weights to use (put in eval mode here).
        data: the fold's data (validation dataset, ids in row order, metric size).
        cfg: the experiment config (mode, classes, batch sizes).
        folder: where `oof.*` goes (the fold folder).
        to_device: batch -> (images, ...) on the model's device, channels-last when training was.

    Returns:
        `folder`.
    """
    from segfold.infer.store import ProbStore
    from segfold.models import unpack_outputs

    model.eval()
    store = ProbStore.create(folder, "oof", data.valid_ids, cfg.data.classes, *data.metric_size)
    loader = DataLoader(data.valid_dataset, batch_size=cfg.train.valid_batch_size or cfg.train.batch_size,
                        shuffle=False, num_workers=cfg.train.num_workers)
    row = 0
    try:
        for batch in loader:
            images = to_device(batch)[0]
            out = unpack_outputs(model(images))
            probs = resize_probs(probabilities(out.masks, cfg.data.mode), data.metric_size)
            rows = np.arange(row, row + images.shape[0])
            store.write(rows, probs.cpu().numpy())
            if out.labels is not None:
                store.write_cls(rows, out.labels.float().sigmoid().cpu().numpy())
            row += images.shape[0]
        store.finalize()
    except BaseException:
        store.abort()
        raise
    return folder
