"""One training epoch and one validation pass: mixed precision, accumulation, clipping, EMA, NaN guard."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from segfold.errors import TrainingError
from segfold.models import unpack_outputs
from segfold.train.checkpoint import unwrap_model
from segfold.train.distributed import DistInfo, gather_objects, sum_across
from segfold.train.optim import current_lr


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision that will run: fp16 needs CUDA (on CPU it falls back to fp32 with a warning)."""
    if precision == "fp16" and device.type != "cuda":
        warnings.warn("train.precision=fp16 needs CUDA; training in fp32 on CPU (bf16 works on CPU)", stacklevel=2)
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """`torch.autocast` for fp16 / bf16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Trainer:
    """What a training step needs; `model` may be wrapped (DDP, compile), the EMA tracks the plain model."""

    model: nn.Module
    loss_fn: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler | None
    ema: Any
    info: DistInfo
    precision: str = "fp32"
    accumulate_steps: int = 1
    grad_clip: float | None = None
    channels_last: bool = False
    global_step: int = 0

    def to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (channels-last when asked), masks and presence on the device."""
        device = self.info.device
        images = batch["image"].to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, batch["mask"].to(device, non_blocking=True), batch["presence"].to(device, non_blocking=True)

    def train_epoch(
        self, loader: Iterable[dict[str, Any]], epoch: int, num_batches: int, progress: Any = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """Train over `num_batches` batches of `loader`.

        Args:
            loader: yields dataset batches (`image`, `mask`, `presence`).
            epoch: 1-based epoch number (for messages).
            num_batches: how many batches to take (the loader's length, or fewer).
            progress: a tqdm bar to advance (rank 0), or None.
            on_step: called after each optimizer step with the global step and `{loss, lr}`.

        Returns:
            `{"train_loss", "images", "seconds"}` (loss averaged over images and ranks).

        Raises:
            TrainingError: the loss is NaN or infinite (on any rank); names the epoch and step.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, images_seen, start = 0.0, 0, time.perf_counter()
        accum = self.accumulate_steps
        for index, batch in enumerate(loader):
            if index >= num_batches:
                break
            images, masks, presence = self.to_device(batch)
            group_start = index - index % accum
            group_size = min(accum, num_batches - group_start)
            steps_now = index + 1 == group_start + group_size
            no_sync = self.info.distributed and not steps_now and hasattr(self.model, "no_sync")
            with self.model.no_sync() if no_sync else contextlib.nullcontext():
                with autocast(self.info.device, self.precision):
                    loss = self.loss_fn(self.model(images), masks, presence)
                value = float(loss.detach())
                self._check_finite(value, epoch, index, num_batches)
                scaled = loss.float() / group_size
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += value * images.shape[0]
            images_seen += images.shape[0]
            if steps_now:
                self._optimizer_step()
                if on_step is not None:
                    on_step(self.global_step, {"loss": value, "lr": current_lr(self.optimizer)})
            if progress is not None:
                elapsed = max(time.perf_counter() - start, 1e-9)
                progress.set_postfix(
                    loss=f"{loss_sum / images_seen:.4f}", lr=f"{current_lr(self.optimizer):.2e}",
                    img_s=f"{images_seen * self.info.world_size / elapsed:.1f}", refresh=False,
                )
                progress.update(1)
        total_loss, total_images = sum_across([loss_sum, images_seen], self.info)
        return {
            "train_loss": total_loss / max(total_images, 1),
            "images": total_images,
            "seconds": time.perf_counter() - start,
        }

    def _check_finite(self, value: float, epoch: int, index: int, num_batches: int) -> None:
        bad = not math.isfinite(value)
        if self.info.distributed:
            bad = sum_across([float(bad)], self.info)[0] > 0  # every rank stops together
        if bad:
            raise TrainingError(
                f"non-finite training loss ({value}) at epoch {epoch}, step {index + 1} of {num_batches} "
                f"(optimizer step {self.global_step}); the run stopped and the last good checkpoint is kept. "
                "Lower optim.lr, set train.grad_clip or use train.precision=fp32, then rerun (--resume continues "
                "from last.pt)"
            )

    def _optimizer_step(self) -> None:
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.schedule.step_update(self.global_step)
        if self.ema is not None:
            self.ema.update(unwrap_model(self.model), step=self.global_step)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    loss_fn: Callable[..., torch.Tensor],
    score_fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor],
    trainer: Trainer,
) -> dict[str, float]:
    """Validation loss and competition score of `model` (plain, not DDP) over this rank's share of the data.

    Args:
        model: the model to score (the plain model or the EMA copy), put in eval mode.
        loader: this rank's validation batches.
        loss_fn: the training loss (its eval-mode outputs have no deep-supervision masks).
        score_fn: `(mask logits, batch) -> per-item scores` (any shape; every value is one scored item).
        trainer: for the device, precision and channels-last settings.

    Returns:
        `{"valid_loss", "score"}` over every rank's images (each scored once).
    """
    model.eval()
    loss_sum, count, scores = 0.0, 0, []
    for batch in loader:
        images, masks, presence = trainer.to_device(batch)
        with autocast(trainer.info.device, trainer.precision):
            outputs = model(images)
            loss = loss_fn(outputs, masks, presence)
        loss_sum += float(loss) * images.shape[0]
        count += images.shape[0]
        logits = unpack_outputs(outputs).masks
        scores.append(score_fn(logits.float(), batch).detach().reshape(-1).cpu().double())
    local = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
    everything = torch.cat([part for part in gather_objects(local, trainer.info)])
    total_loss, total_count = sum_across([loss_sum, count], trainer.info)
    valid_loss = total_loss / max(total_count, 1)
    if not math.isfinite(valid_loss):
        raise TrainingError(
            f"non-finite validation loss ({valid_loss}): the weights diverged; lower optim.lr or set train.grad_clip"
        )
    return {"valid_loss": valid_loss, "score": float(everything.mean()) if everything.numel() else math.nan}
