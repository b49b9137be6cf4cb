"""Reading model outputs without inspecting tuples."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class ModelOutputs(NamedTuple):
    """What a forward pass returned: masks, image-level labels (or None), deep-supervision masks (or [])."""

    masks: torch.Tensor
    labels: torch.Tensor | None
    deep: list[torch.Tensor]


def unpack_outputs(out: Any) -> ModelOutputs:
    """Split a model's output into :class:`ModelOutputs`.

    The forward conventions are: ``masks``; ``(masks, labels)`` with an aux head; ``(masks, deep)``
    or ``(masks, labels, deep)`` with deep supervision in training, where ``deep`` is a list.
    """
    if isinstance(out, torch.Tensor):
        return ModelOutputs(out, None, [])
    if isinstance(out, (tuple, list)):
        if len(out) == 2 and isinstance(out[1], (list, tuple)):
            return ModelOutputs(out[0], None, list(out[1]))
        if len(out) == 2:
            return ModelOutputs(out[0], out[1], [])
        if len(out) == 3 and isinstance(out[2], (list, tuple)):
            return ModelOutputs(out[0], out[1], list(out[2]))
    raise ValueError(f"not a segfold model output: {type(out).__name__}; expected a tensor, (masks, labels), "
                     f"(masks, deep) or (masks, labels, deep)")
