"""Optimizers with parameter groups: encoder learning-rate multiplier, no weight decay on biases and norms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segfold.config.train import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Split the trainable parameters into up to four groups: (encoder | rest) x (decay | no decay).

    Parameters with at most one dimension (biases, BatchNorm / LayerNorm weights, scalars) get no
    weight decay. Parameters of `model.encoder` (when the model has one) run at
    `lr * encoder_lr_mult`; each group keeps its multiplier as `lr_scale`, which timm schedulers read.

    Args:
        model: the (unwrapped) model.
        cfg: the `optim` section.

    Returns:
        Optimizer parameter groups with `name`, `params`, `lr`, `lr_scale` and `weight_decay`; empty
        groups are left out.
    """
    encoder = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        # NOTE frozen parameters join too: an encoder frozen for the first epochs must be in the
        # optimizer when it thaws, and a parameter without a gradient is skipped by every optimizer.
        key = (id(param) in encoder_ids, param.ndim <= 1)
        buckets.setdefault(key, []).append(param)
    groups = []
    for (is_encoder, no_decay), params in sorted(buckets.items()):
        scale = cfg.encoder_lr_mult if is_encoder else 1.0
        groups.append(
            {
                "name": f"{'encoder' if is_encoder else 'decoder'}{'_no_decay' if no_decay else ''}",
                "params": params,
                "lr": cfg.lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            }
        )
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by `optim.name` over `param_groups(model, cfg)`.

    AdamW, Adam, SGD and RAdam come from torch, Lion from timm.
    """
    groups = param_groups(model, cfg)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "adam":
        # NOTE torch Adam's weight_decay is L2 added to the gradient (not decoupled as in AdamW).
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "radam":
        return torch.optim.RAdam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, decoupled_weight_decay=True)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "lion":
        from timm.optim import Lion

        return Lion(groups, lr=cfg.lr, betas=cfg.betas)
    raise ValueError(f"optim.name = {cfg.name!r}: expected one of adamw, adam, sgd, radam, lion")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first non-encoder group (the headline lr for logs), else of group 0."""
    for group in optimizer.param_groups:
        if not str(group.get("name", "")).startswith("encoder"):
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])
