"""Config section `data`: where the competition data is and how it is laid out.

STARTER (owned by the data layer): extend freely; keep these field names.
"""

from __future__ import annotations

from typing import Literal

from segfold.config.base import StrictModel


class DataConfig(StrictModel):
    root: str = "input/demo"
    mode: Literal["binary", "multiclass", "multilabel"] = "multilabel"
    classes: list[str] = ["1", "2", "3", "4"]
