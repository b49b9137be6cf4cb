"""Loss registry: `get_loss(name, **params)` and `build_loss(terms, mode)` for the trainer's config.

Every registered loss takes LOGITS (the `mcc` entry therefore defaults to `from_logits=True`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from segfold.losses._checks import MODES
from segfold.losses.composite import JointLoss
from segfold.losses.cross_entropy import SoftBCEWithLogitsLoss, SoftCrossEntropyLoss
from segfold.losses.focal import FocalLoss
from segfold.losses.lovasz import LovaszLoss, SymmetricLovaszLoss
from segfold.losses.mcc import MCCLoss
from segfold.losses.region import DiceImageLoss, DiceLoss, JaccardLoss, TverskyLoss


@dataclass(frozen=True)
class LossEntry:
    """A registered loss: its factory, the modes it supports, and defaults applied before user params."""

    factory: Callable[..., nn.Module]
    modes: tuple[str, ...]
    takes_mode: bool
    defaults: Mapping[str, Any]


_LOSSES: dict[str, LossEntry] = {}


def register_loss(
    name: str,
    factory: Callable[..., nn.Module],
    modes: Iterable[str] = MODES,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Register `factory` under `name`; it takes `mode` if its signature has a `mode` parameter."""
    if name in _LOSSES:
        raise ValueError(f"loss {name!r} is already registered")
    takes_mode = "mode" in inspect.signature(factory).parameters
    _LOSSES[name] = LossEntry(factory, tuple(modes), takes_mode, dict(defaults or {}))


def list_losses() -> list[str]:
    """Names accepted by `get_loss`, sorted."""
    return sorted(_LOSSES)


def _entry(name: str) -> LossEntry:
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {list_losses()}")
    return _LOSSES[name]


def get_loss(name: str, **params: Any) -> nn.Module:
    """Build a registered loss by name, e.g. `get_loss("dice", mode="binary", smooth=1.0)`.

    Raises:
        ValueError: for an unknown name, an unknown or missing parameter, or a mode the loss does not support.
    """
    entry = _entry(name)
    signature = inspect.signature(entry.factory)
    accepted = [p for p in signature.parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"loss {name!r}: unknown parameter(s) {unknown}; accepted: {accepted}")
    mode = params.get("mode")
    if entry.takes_mode and mode is None and signature.parameters["mode"].default is inspect.Parameter.empty:
        raise ValueError(f"loss {name!r} needs a mode: one of {list(entry.modes)}")
    if mode is not None and mode not in entry.modes:
        raise ValueError(f"loss {name!r} does not support mode={mode!r}; it supports {list(entry.modes)}")
    return entry.factory(**{**entry.defaults, **params})


def build_loss(terms: Iterable[Mapping[str, Any] | Any], mode: str, ignore_index: int | None = None) -> JointLoss:
    """Build the training objective from config terms: a `JointLoss` of weighted registered losses.

    Args:
        terms: `{"name": ..., "weight": ..., "params": {...}}` dicts (or objects with those attributes,
            such as the config's `LossTerm`); `weight` defaults to 1 and `params` to `{}`.
        mode: the task's mode, passed to every loss that takes one; a loss that does not support the mode
            (e.g. `ce` outside multiclass, `bce` in multiclass) is an error.
        ignore_index: the data's ignore label, given to every loss that takes `ignore_index` and has none
            in its params (so `data.ignore_label` reaches the objective without repeating it per term).
    """
    if mode not in MODES:
        raise ValueError(f"build_loss: mode={mode!r} is not one of {list(MODES)}")
    built: list[tuple[nn.Module, float]] = []
    names: list[str] = []
    for index, term in enumerate(terms):
        data = term.model_dump() if hasattr(term, "model_dump") else term
        if not isinstance(data, Mapping) or "name" not in data:
            raise ValueError(f"loss.terms[{index}] must be a mapping with a 'name', got {term!r}")
        extra = sorted(set(data) - {"name", "weight", "params"})
        if extra:
            raise ValueError(f"loss.terms[{index}]: unknown key(s) {extra}; use name, weight, params")
        name, weight, params = data["name"], float(data.get("weight", 1.0)), dict(data.get("params") or {})
        try:
            entry = _entry(name)
            if mode not in entry.modes:
                raise ValueError(f"loss {name!r} does not support mode={mode!r}; it supports {list(entry.modes)}")
            if "mode" in params and params["mode"] != mode:
                raise ValueError(f"params.mode={params['mode']!r} contradicts the task's mode {mode!r}; remove it")
            if entry.takes_mode:
                params["mode"] = mode
            if ignore_index is not None and "ignore_index" in inspect.signature(entry.factory).parameters:
                params.setdefault("ignore_index", ignore_index)
            loss = get_loss(name, **params)
        except (TypeError, ValueError) as error:
            raise ValueError(f"loss.terms[{index}] ({name}): {error}") from error
        built.append((loss, weight))
        names.append(name)
    if not built:
        raise ValueError("loss.terms is empty; give at least one term, e.g. [{name: dice, weight: 1.0}]")
    return JointLoss(built, names=names)


register_loss("dice", DiceLoss)
register_loss("dice_image", DiceImageLoss)
register_loss("jaccard", JaccardLoss)
register_loss("tversky", TverskyLoss)
register_loss("focal", FocalLoss)
register_loss("lovasz", LovaszLoss)
register_loss("lovasz_hinge_symmetric", SymmetricLovaszLoss, modes=("binary", "multilabel"))
register_loss("bce", SoftBCEWithLogitsLoss, modes=("binary", "multilabel"))
register_loss("ce", SoftCrossEntropyLoss, modes=("multiclass",))
register_loss("mcc", MCCLoss, modes=("binary",), defaults={"from_logits": True})
