"""Config section `search`: the Optuna hyper-parameter search space.

STARTER (owned by the hyper-parameter search): extend freely; keep these field names.
"""

from __future__ import annotations

from segfold.config.base import StrictModel


class SearchConfig(StrictModel):
    trials: int = 4
