"""Learning-rate schedules from timm (cosine, poly, constant with warm-up) and torch (OneCycle, plateau).

Every schedule is driven the same way by the loop: `step_update(n)` after the n-th optimizer step and
`step_epoch(epoch, metric)` after each validation; each kind reacts to the call it needs.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.scheduler import CosineLRScheduler, PolyLRScheduler, StepLRScheduler

from segfold.config.train import OptimConfig, SchedulerConfig


class LrSchedule:
    """One schedule behind a uniform per-step / per-epoch interface.

    Args:
        optimizer: built by `segfold.train.optim.build_optimizer` (groups carry `lr_scale`).
        cfg: the `scheduler` section.
        optim_cfg: the `optim` section (its `lr` is the peak learning rate).
        steps_per_epoch: optimizer steps per epoch (batches / accumulation, rounded up).
        epochs: length of the run.
        maximize: whether the plateau schedule's metric improves upwards (a score) or downwards (a loss).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: SchedulerConfig,
        optim_cfg: OptimConfig,
        steps_per_epoch: int,
        epochs: int,
        maximize: bool = True,
    ) -> None:
        self.name = cfg.name
        total = max(1, steps_per_epoch * epochs)
        warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
        base = optim_cfg.lr
        if cfg.name in ("cosine", "poly", "constant"):
            for group in optimizer.param_groups:
                # timm multiplies every value it sets by the group's lr_scale: start from the unscaled lr
                group["initial_lr"] = base
            # warmup_prefix: the decay starts where the warm-up ends and spans the remaining steps, so the
            # peak lr is reached at the end of the warm-up and the minimum at the last step.
            common = dict(warmup_t=warmup, warmup_lr_init=cfg.warmup_lr_ratio * base, warmup_prefix=True,
                          t_in_epochs=False)
            decay = total - warmup
            if cfg.name == "cosine":
                self.impl: Any = CosineLRScheduler(optimizer, t_initial=decay, lr_min=cfg.min_lr_ratio * base, **common)
            elif cfg.name == "poly":
                self.impl = PolyLRScheduler(
                    optimizer, t_initial=decay, power=cfg.poly_power, lr_min=cfg.min_lr_ratio * base, **common
                )
            else:
                self.impl = StepLRScheduler(optimizer, decay_t=total + 1, decay_rate=1.0, **common)
        elif cfg.name == "onecycle":
            self.impl = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=total,
                pct_start=cfg.onecycle_pct_start,
                div_factor=cfg.onecycle_div_factor,
            )
        elif cfg.name == "plateau":
            self.impl = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max" if maximize else "min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
        else:
            raise ValueError(f"scheduler.name = {cfg.name!r}: expected cosine, onecycle, plateau, poly or constant")
        self.total_steps = total

    def step_update(self, num_updates: int) -> None:
        """Call after each optimizer step; `num_updates` counts the steps taken so far (from 1)."""
        if self.name == "onecycle":
            if num_updates < self.total_steps:  # OneCycleLR refuses to step past its end
                self.impl.step()
        elif self.name != "plateau":
            self.impl.step_update(num_updates)

    def step_epoch(self, epoch: int, metric: float | None) -> None:
        """Call after the validation of `epoch` (0-based) with the monitored value."""
        if self.name == "plateau" and metric is not None:
            self.impl.step(metric)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state (plain values, safe for `torch.load(weights_only=True)`)."""
        return {"name": self.name, "impl": self.impl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by `state_dict`; the schedule kind must match."""
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint schedule is {state.get('name')!r} but the config asks for {self.name!r}")
        self.impl.load_state_dict(state["impl"])
