"""Config section `model`.

STARTER (owned by the model zoo): extend freely; keep these field names.
"""

from __future__ import annotations

from typing import Any

from segfold.config.base import StrictModel


class ModelConfig(StrictModel):
    arch: str = "UnetPlusPlus"
    encoder_name: str = "efficientnet-b0"
    encoder_weights: str | None = None
    in_channels: int = 3
    params: dict[str, Any] = {}
