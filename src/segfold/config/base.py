"""Strict pydantic base for every config section, and one-line error messages for users."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from segfold.errors import ConfigError  # noqa: F401  (re-exported)


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last key of `path` (None when it can't be followed)."""
    current: Any = model
    for key in path[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(key))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """The first BaseModel inside Optional[...] / Union[...] / list[...], else the annotation itself."""
    args = getattr(annotation, "__args__", None)
    if args:
        for arg in args:
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def format_validation_error(error: ValidationError, model: type[BaseModel], source: str = "config") -> str:
    """Turn a pydantic error into one line: the key path, what is wrong, and how to fix it."""
    messages = []
    for item in error.errors():
        loc = tuple(part for part in item["loc"] if not str(part).startswith("function-"))
        path = ".".join(str(part) for part in loc) or "<root>"
        if item["type"] == "extra_forbidden":
            owner = _model_at(model, loc)
            valid = sorted(owner.model_fields) if owner is not None else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
            listing = f" (valid keys here: {', '.join(valid)})" if valid and not close else ""
            messages.append(f"unknown key '{path}'{hint}{listing}")
        elif item["type"] == "missing":
            messages.append(f"missing required key '{path}'")
        else:
            value = item.get("input")
            shown = repr(value) if not isinstance(value, dict) else "a mapping"
            messages.append(f"key '{path}' = {shown}: {item['msg'].removeprefix('Value error, ')}")
    return f"{source}: " + "; ".join(messages)
