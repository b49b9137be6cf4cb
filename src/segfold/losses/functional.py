"""Functional cores of the losses: soft region scores, focal term, Lovasz extension, smoothed NLL.

References:
- Dice / Jaccard: Milletari et al., V-Net, https://arxiv.org/abs/1606.04797
- Tversky: Salehi et al., https://arxiv.org/abs/1706.05721
- Focal: Lin et al., https://arxiv.org/abs/1708.02002
- Lovasz hinge / softmax: Berman et al., https://arxiv.org/abs/1705.08790
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Dims = Sequence[int] | None


def _sum(x: torch.Tensor, dims: Dims) -> torch.Tensor:
    return x.sum() if dims is None else x.sum(dim=tuple(dims))


def soft_dice_score(
    output: torch.Tensor, target: torch.Tensor, smooth: float = 0.0, eps: float = 1e-7, dims: Dims = None
) -> torch.Tensor:
    """2 * (sum(p * t) + smooth) / max(sum(p) + sum(t) + 2 * smooth, eps), summed over `dims`.

    NOTE: `smooth` is added to the intersection and to each of the two cardinalities, which is what
    segmentation_models_pytorch 0.5.0 measures (e.g. p = (.9, .2, .6, .1), t = (1, 0, 1, 0), smooth = 1:
    2 * (1.5 + 1) / (3.8 + 2) = 0.8621).
    """
    intersection = _sum(output * target, dims)
    cardinality = _sum(output + target, dims)
    return (2.0 * intersection + 2.0 * smooth) / (cardinality + 2.0 * smooth).clamp_min(eps)


def soft_jaccard_score(
    output: torch.Tensor, target: torch.Tensor, smooth: float = 0.0, eps: float = 1e-7, dims: Dims = None
) -> torch.Tensor:
    """(sum(p * t) + smooth) / max(sum(p) + sum(t) - sum(p * t) + smooth, eps), summed over `dims`."""
    intersection = _sum(output * target, dims)
    union = _sum(output + target, dims) - intersection
    return (intersection + smooth) / (union + smooth).clamp_min(eps)


def soft_tversky_score(
    output: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    smooth: float = 0.0,
    eps: float = 1e-7,
    dims: Dims = None,
) -> torch.Tensor:
    """(TP + smooth) / max(TP + alpha * FP + beta * FN + smooth, eps) with soft counts over `dims`.

    `alpha` weighs false positives, `beta` false negatives; alpha = beta = 0.5 is Dice, 1 and 1 Jaccard.
    """
    intersection = _sum(output * target, dims)
    false_pos = _sum(output * (1.0 - target), dims)
    false_neg = _sum((1.0 - output) * target, dims)
    return (intersection + smooth) / (intersection + alpha * false_pos + beta * false_neg + smooth).clamp_min(eps)


def focal_loss_with_logits(
    output: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    reduction: str = "mean",
    normalized: bool = False,
    reduced_threshold: float | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Sigmoid focal loss: BCE(x, t) * (1 - p_t) ** gamma, element-wise, then reduced.

    Args:
        output: logits of any shape.
        target: same shape, 0/1 (or soft) targets.
        gamma: focusing power; 0 gives plain BCE.
        alpha: weight of positives (negatives get 1 - alpha); None for no class weighting.
        reduction: "mean", "sum" or "none".
        normalized: divide by the sum of the focal terms (Focal Loss for Dense Object Detection, normalised).
        reduced_threshold: "reduced focal loss": the focal term is ((1 - p_t) / threshold) ** gamma, and 1
            where p_t < threshold (https://arxiv.org/abs/1903.01347).
        eps: floor of the normaliser when `normalized`.
    """
    target = target.type_as(output)
    logpt = F.binary_cross_entropy_with_logits(output, target, reduction="none")
    pt = torch.exp(-logpt)
    if reduced_threshold is None:
        focal_term = (1.0 - pt).pow(gamma)
    else:
        focal_term = ((1.0 - pt) / reduced_threshold).pow(gamma)
        focal_term = torch.where(pt < reduced_threshold, torch.ones_like(focal_term), focal_term)
    loss = focal_term * logpt
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    if normalized:
        loss = loss / focal_term.sum().clamp_min(eps)
    return reduce_loss(loss, reduction)


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply "mean", "sum" or "none" (validated by the calling loss's constructor)."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovasz hinge of flat logits (P,) against 0/1 labels (P,); 0 (with a graph) when P == 0."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    labels = labels.type_as(logits)
    errors = 1.0 - logits * (2.0 * labels - 1.0)  # hinge margins
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    grad = lovasz_grad(labels[perm])
    return torch.dot(F.relu(errors_sorted), grad)


def lovasz_softmax_flat(probas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multiclass Lovasz-softmax of probabilities (P, C) against labels (P,), averaged over present classes."""
    if probas.numel() == 0:
        return probas.sum() * 0.0
    num_classes = probas.shape[1]
    counts = torch.bincount(labels, minlength=num_classes).tolist()  # one sync for all classes
    losses = []
    for c in range(num_classes):
        if counts[c] == 0:
            continue
        fg = (labels == c).type_as(probas)
        errors = (fg - probas[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


def label_smoothed_nll_loss(
    lprobs: torch.Tensor,
    target: torch.Tensor,
    epsilon: float,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """(1 - eps) * NLL + eps / C * sum_c(-log p_c), class axis 1; ignored pixels are 0 and stay in a mean's count.

    Args:
        lprobs: log-probabilities (N, C, ...).
        target: class indices (N, ...).
        epsilon: label-smoothing factor in [0, 1).
        ignore_index: target value whose pixels contribute 0.
        reduction: "mean" (over all N*... pixels, ignored ones included), "sum" or "none" (N, ...).
    """
    target = target.unsqueeze(1)
    if ignore_index is not None:
        pad_mask = target.eq(ignore_index)
        target = target.masked_fill(pad_mask, 0)
    nll_loss = -lprobs.gather(dim=1, index=target)
    smooth_loss = -lprobs.sum(dim=1, keepdim=True)
    if ignore_index is not None:
        nll_loss = nll_loss.masked_fill(pad_mask, 0.0)
        smooth_loss = smooth_loss.masked_fill(pad_mask, 0.0)
    loss = (1.0 - epsilon) * nll_loss + (epsilon / lprobs.shape[1]) * smooth_loss
    return reduce_loss(loss.squeeze(1), reduction)
