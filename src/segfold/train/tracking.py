"""Best-epoch bookkeeping: the monitored value over the model and its EMA, patience, and top-k files."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BestTracker:
    """Which epoch (and which weights, plain or EMA) is best so far, and how long since it improved.

    Args:
        maximize: True for a score, False for a loss.
        min_delta: an improvement smaller than this does not count (nor reset the patience).
        top_k: how many best epochs keep their own checkpoint file (1: only `best.pt`).
    """

    maximize: bool = True
    min_delta: float = 0.0
    top_k: int = 1
    best_value: float | None = None
    best_epoch: int = 0
    best_weights: str = "model"
    best_score: float | None = None
    bad_epochs: int = 0
    kept: list[list[Any]] = field(default_factory=list)  # [value, epoch, file name], best first

    def better(self, value: float, reference: float | None, margin: float = 0.0) -> bool:
        """Whether `value` beats `reference` by more than `margin` in the monitored direction."""
        if math.isnan(value):
            return False
        if reference is None:
            return True
        return value > reference + margin if self.maximize else value < reference - margin

    def update(self, epoch: int, candidates: dict[str, tuple[float, float]]) -> bool:
        """Offer this epoch's results; returns whether it is the new best.

        Args:
            epoch: 1-based epoch.
            candidates: `{"model": (monitored value, score), "ema": (...)}`; the better one competes.
        """
        weights, (value, score) = self.pick(candidates)
        if self.better(value, self.best_value, self.min_delta):
            self.best_value, self.best_epoch, self.best_weights, self.best_score = value, epoch, weights, score
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    def pick(self, candidates: dict[str, tuple[float, float]]) -> tuple[str, tuple[float, float]]:
        """The candidate with the better monitored value (the plain model on ties)."""
        chosen = "model"
        for name, result in candidates.items():
            if self.better(result[0], candidates[chosen][0]):
                chosen = name
        return chosen, candidates[chosen]

    def offer_top_k(self, epoch: int, value: float) -> tuple[str | None, list[str]]:
        """Whether this epoch earns a top-k file, and which older files fall out of the top k.

        Returns:
            `(file name to write or None, file names to delete)`; nothing is kept when `top_k == 1`.
        """
        if self.top_k <= 1 or math.isnan(value):
            return None, []
        name = f"epoch{epoch:03d}.pt"
        self.kept.append([value, epoch, name])
        self.kept.sort(key=lambda item: (-item[0] if self.maximize else item[0], item[1]))
        dropped = [item[2] for item in self.kept[self.top_k :]]
        self.kept = self.kept[: self.top_k]
        return (name if name not in dropped else None), [d for d in dropped if d != name]

    def should_stop(self, patience: int | None) -> bool:
        """Early stopping: `patience` validations in a row without improvement (`update` counts them)."""
        return patience is not None and self.bad_epochs >= patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def remove_files(folder: Path, names: list[str]) -> None:
    """Delete top-k checkpoints that fell out of the top k."""
    for name in names:
        (folder / name).unlink(missing_ok=True)
