"""Config sections `infer` and `postprocess`.

STARTER (owned by inference / post-processing): extend freely; keep these field names.
"""

from __future__ import annotations

from segfold.config.base import StrictModel


class InferConfig(StrictModel):
    tta: str = "flips"


class PostprocessConfig(StrictModel):
    threshold: float = 0.5
