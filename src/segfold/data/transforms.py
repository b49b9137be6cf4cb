"""albumentations pipelines built from the `data.augment` lists of the YAML config.

Each entry is `{name: <albumentations transform class>, <argument>: value, ...}`; compositions
(`OneOf`, `SomeOf`, `Sequential`) hold their children under `transforms:`. Names are looked up as
attributes of the albumentations package and must be transform classes: nothing is evaluated.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import albumentations as A

from segfold.errors import ConfigError

if TYPE_CHECKING:
    from segfold.config.data import DataConfig

# Normalisation and tensor conversion belong to the dataset (the encoder's mean/std); Lambda needs code.
_REFUSED = {
    "Normalize": "the dataset normalises with the encoder's mean/std itself",
    "ToTensorV2": "the dataset returns tensors itself",
    "Lambda": "it needs a Python function, which a YAML file cannot hold",
}


@functools.lru_cache(maxsize=1)
def transform_names() -> tuple[str, ...]:
    """Every albumentations transform or composition class a config may name."""
    names = []
    for name in dir(A):
        obj = getattr(A, name)
        if isinstance(obj, type) and issubclass(obj, (A.BasicTransform, A.BaseCompose)) and name not in _REFUSED:
            if not inspect.isabstract(obj) and not name.startswith("_"):
                names.append(name)
    return tuple(sorted(names))


def _accepted_arguments(cls: type) -> list[str] | None:
    """Keyword names of a transform's constructor (None when it takes **kwargs)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [name for name in params if name != "self"]


def _to_tuples(value: Any) -> Any:
    """YAML lists become tuples (albumentations ranges are tuples); mappings are converted inside."""
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_tuples(v) for k, v in value.items()}
    return value


def build_transform(spec: Mapping[str, Any], where: str) -> A.BasicTransform | A.BaseCompose:
    """One transform (or composition) from its config entry.

    Args:
        spec: `{name: ..., <argument>: value}`.
        where: the entry's place for messages, e.g. `data.augment.train[2]`.

    Raises:
        ConfigError: an unknown or refused name, an unknown argument, or a value albumentations rejects;
            the message names the entry and the closest valid name.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"{where}: expected a mapping with a 'name', e.g. {{name: HorizontalFlip, p: 0.5}}; "
                          f"got {spec!r}")
    name = spec["name"]
    if name in _REFUSED:
        raise ConfigError(f"{where}: {name} cannot be used in data.augment: {_REFUSED[name]}")
    valid = transform_names()
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else " (see the albumentations documentation for names)"
        raise ConfigError(f"{where}: unknown transform '{name}'{hint}")
    cls = getattr(A, name)
    kwargs = {key: value for key, value in spec.items() if key != "name"}
    accepted = _accepted_arguments(cls)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else f" (accepted: {', '.join(accepted)})"
                raise ConfigError(f"{where} ({name}): unknown argument '{key}'{hint}")
    if issubclass(cls, A.BaseCompose):
        children = kwargs.pop("transforms", None)
        if not isinstance(children, list) or not children:
            raise ConfigError(f"{where} ({name}): a composition needs a non-empty 'transforms:' list")
        kwargs["transforms"] = [build_transform(child, f"{where}.transforms[{i}]") for i, child in enumerate(children)]
        kwargs = {k: v if k == "transforms" else _to_tuples(v) for k, v in kwargs.items()}
    else:
        kwargs = _to_tuples(kwargs)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split("\n")[:3])
        raise ConfigError(f"{where} ({name}): albumentations rejects the arguments {kwargs}: {detail}") from None


def build_pipeline(specs: Sequence[Mapping[str, Any]], where: str) -> A.Compose:
    """A Compose of the entries of one list (an empty list gives an identity pipeline)."""
    return A.Compose([build_transform(spec, f"{where}[{i}]") for i, spec in enumerate(specs)])


def build_transforms(data_cfg: DataConfig, split: str) -> A.Compose:
    """The augmentation pipeline of a split, applied jointly to `image=` and `mask=`.

    Args:
        data_cfg: the `data` config section.
        split: "train" (random augmentations, crops) or "valid" (usually empty: full images).
    """
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    return build_pipeline(getattr(data_cfg.augment, split), f"data.augment.{split}")
