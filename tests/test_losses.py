"""Losses: hand-computed values on a few pixels, reference values, validation, composites, registry."""

from __future__ import annotations

import math

import pytest
import torch

from segfold.losses import (
    AuxPresenceLoss,
    DeepSupervisionLoss,
    DiceImageLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    JointLoss,
    LovaszLoss,
    MaskedByPresenceLoss,
    MCCLoss,
    SoftBCEWithLogitsLoss,
    SoftCrossEntropyLoss,
    SymmetricLovaszLoss,
    TverskyLoss,
    build_loss,
    get_loss,
    list_losses,
    presence_from_target,
)

LN2 = math.log(2.0)
LN3 = math.log(3.0)
# p = (0.9, 0.2, 0.6, 0.1), t = (1, 0, 1, 0): I = 1.5, sum(p) = 1.8, sum(t) = 2, FP = 0.3, FN = 0.5
P4 = torch.tensor([0.9, 0.2, 0.6, 0.1]).reshape(1, 1, 2, 2)
T4 = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2)


def close(value: torch.Tensor, expected: float, tol: float = 1e-5) -> bool:
    return abs(float(torch.as_tensor(value).detach()) - expected) < tol


# ---------------------------------------------------------------- region losses, by hand
@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (DiceLoss("binary", from_logits=False), 1 - 3.0 / 3.8),  # 2 * 1.5 / 3.8 = 0.789474
        (DiceLoss("binary", from_logits=False, smooth=1.0), 1 - 5.0 / 5.8),  # 2 * (1.5 + 1) / (3.8 + 2)
        (DiceLoss("binary", from_logits=False, log_loss=True), -math.log(3.0 / 3.8)),
        (JaccardLoss("binary", from_logits=False), 1 - 1.5 / 2.3),  # union = 3.8 - 1.5
        (JaccardLoss("binary", from_logits=False, smooth=1.0), 1 - 2.5 / 3.3),
        (TverskyLoss("binary", from_logits=False, alpha=0.3, beta=0.7), 1 - 1.5 / 1.94),  # 1.5 + .09 + .35
        (TverskyLoss("binary", from_logits=False, alpha=0.3, beta=0.7, gamma=2.0), (1 - 1.5 / 1.94) ** 2),
        (DiceLoss("binary", from_logits=False, smooth=1.0), 0.137931),  # measured: smp 0.5.0, same input
    ],
)
def test_region_losses_by_hand(loss, expected):
    assert close(loss(P4, T4), expected)
    assert close(loss(P4, T4[:, 0]), expected)  # a binary target may come without the channel axis


def test_absent_class_counts_as_zero_in_the_mean_and_subsets_and_weights():
    # class 0 = the 4-pixel example (loss 0.210526); class 1 has no true pixel -> 0 but counts
    probs = torch.cat([P4, torch.full_like(P4, 0.5)], dim=1)
    target = torch.cat([T4, torch.zeros_like(T4)], dim=1)
    single = 1 - 3.0 / 3.8
    assert close(DiceLoss("multilabel", from_logits=False)(probs, target), single / 2)
    assert close(DiceLoss("multilabel", from_logits=False, classes=[0])(probs, target), single)
    assert close(DiceLoss("multilabel", from_logits=False, classes=[1])(probs, target), 0.0)
    # weights 3 and 1: (3 * 0.210526 + 1 * 0) / 4
    weighted = DiceLoss("multilabel", from_logits=False, class_weights=[3.0, 1.0])(probs, target)
    assert close(weighted, 3 * single / 4)


def test_dice_pools_over_the_batch_but_dice_image_scores_each_image():
    # image A: p = (1, 0), t = (1, 0); image B: p = (0.5, 0.5), t = (0, 0)
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).reshape(2, 1, 1, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(2, 1, 1, 2)
    # pooled: I = 1, sum(p) + sum(t) = 2 + 1 -> Dice 2/3
    assert close(DiceLoss("binary", from_logits=False)(probs, target), 1 / 3)
    # per image, smooth 1: A: 2 * (1 + 1) / (1 + 1 + 2) = 1; B: 2 * (0 + 1) / (1 + 0 + 2) = 2/3
    assert close(DiceImageLoss("binary", from_logits=False, smooth=1.0)(probs, target), (0 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="smooth must be > 0"):
        DiceImageLoss("binary", smooth=0.0)


def test_multiclass_dice_and_ignore_index():
    # pixel 0: p = (0.8, 0.2), label 0; pixel 1: p = (0.3, 0.7), label 1
    # class 0: 2 * 0.8 / (1.1 + 1) = 0.761905; class 1: 2 * 0.7 / (0.9 + 1) = 0.736842
    probs = torch.tensor([[0.8, 0.3], [0.2, 0.7]]).reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    expected = 1 - (1.6 / 2.1 + 1.4 / 1.9) / 2
    assert close(DiceLoss("multiclass", from_logits=False)(probs, labels), expected)
    # a third pixel labelled 255 changes nothing when ignored
    probs3 = torch.tensor([[0.8, 0.3, 0.5], [0.2, 0.7, 0.5]]).reshape(1, 2, 1, 3)
    labels3 = torch.tensor([[[0, 1, 255]]])
    assert close(DiceLoss("multiclass", from_logits=False, ignore_index=255)(probs3, labels3), expected)
    assert close(
        JaccardLoss("multiclass", from_logits=False, ignore_index=255)(probs3, labels3), 1 - (0.8 / 1.3 + 0.7 / 1.2) / 2
    )  # class 0: 0.8 / (2.1 - 0.8); class 1: 0.7 / (1.9 - 0.7)


def test_all_empty_and_all_full_targets():
    logits = torch.zeros(2, 1, 3, 3, requires_grad=True)
    # all empty: the only class is absent -> 0
    assert close(DiceLoss("binary")(logits, torch.zeros(2, 1, 3, 3)), 0.0)
    # all full, p = 0.5 everywhere: 2 * 9 / (9 + 18) = 2/3 (per 9 pixels of 18)
    assert close(DiceLoss("binary")(logits, torch.ones(2, 1, 3, 3)), 1 - 18 / 27)
    # single pixel, batch of one: p = 0.75, t = 1 -> 1.5 / 1.75
    assert close(DiceLoss("binary")(torch.full((1, 1, 1, 1), LN3), torch.ones(1, 1, 1, 1)), 1 - 1.5 / 1.75)


# ---------------------------------------------------------------- focal, by hand
def test_focal_by_hand():
    # x = 0, t = 1: BCE = ln 2, p_t = 0.5, (1 - p_t)^2 = 0.25
    x0, t1 = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    assert close(FocalLoss("binary")(x0, t1), 0.25 * LN2)
    assert close(FocalLoss("binary", alpha=0.25)(x0, t1), 0.25 * 0.25 * LN2)
    assert close(FocalLoss("binary", gamma=0.0)(x0, t1), LN2)
    # reduced threshold 0.5: p_t = 0.5 is not < 0.5, so ((1 - 0.5) / 0.5)^2 = 1
    assert close(FocalLoss("binary", reduced_threshold=0.5)(x0, t1), LN2)
    # x = ln 3 (p = 0.75), t = 1: BCE = -ln 0.75 = 0.287682, term 0.0625 -> 0.017980; reduced: (0.25/0.5)^2 = 0.25
    x = torch.tensor([0.0, LN3]).reshape(1, 1, 1, 2)
    t = torch.ones(1, 1, 1, 2)
    bce = [LN2, -math.log(0.75)]
    assert close(FocalLoss("binary")(x, t), (0.25 * bce[0] + 0.0625 * bce[1]) / 2)
    assert close(FocalLoss("binary", reduced_threshold=0.5)(x[..., 1:], t[..., 1:]), 0.25 * bce[1])
    # normalized: sum of focal terms 0.3125; mean of (losses / 0.3125)
    assert close(FocalLoss("binary", normalized=True)(x, t), (0.25 * bce[0] + 0.0625 * bce[1]) / 0.3125 / 2)
    assert close(FocalLoss("binary", reduction="sum")(x, t), 0.25 * bce[0] + 0.0625 * bce[1])
    assert FocalLoss("binary", reduction="none")(x, t).shape == (2,)
    # an ignored element changes nothing
    x3 = torch.tensor([0.0, LN3, 5.0]).reshape(1, 1, 1, 3)
    t3 = torch.tensor([1.0, 1.0, 255.0]).reshape(1, 1, 1, 3)
    assert close(FocalLoss("binary", ignore_index=255)(x3, t3), (0.25 * bce[0] + 0.0625 * bce[1]) / 2)


def test_multiclass_focal_is_the_mean_over_classes():
    # one pixel, logits (0, ln 3), label 1: class 0 channel x = 0 vs 0 -> 0.25 ln 2;
    # class 1 channel x = ln 3 vs 1 -> 0.0625 * 0.287682; mean over the 2 classes
    # (segmentation_models_pytorch 0.5.0 sums: twice this value)
    logits = torch.tensor([0.0, LN3]).reshape(1, 2, 1, 1)
    expected = (0.25 * LN2 + 0.0625 * -math.log(0.75)) / 2
    assert close(FocalLoss("multiclass")(logits, torch.tensor([[[1]]])), expected)
    logits2 = torch.tensor([[0.0, 3.0], [LN3, -2.0]]).reshape(1, 2, 1, 2)
    assert close(FocalLoss("multiclass", ignore_index=7)(logits2, torch.tensor([[[1, 7]]])), expected)


# ---------------------------------------------------------------- lovasz, by hand
def test_lovasz_hinge_and_symmetric_by_hand():
    # logits (0.5, 0.5), labels (1, 0): errors 1 - 0.5 = 0.5 and 1 + 0.5 = 1.5; sorted (1.5: label 0,
    # 0.5: label 1); Jaccard along the sort: 1 - (1 - 0)/(1 + 1) = 0.5, 1 - 0/2 = 1 -> grad (0.5, 0.5)
    # -> 1.5 * 0.5 + 0.5 * 0.5 = 1.0
    logits = torch.tensor([0.5, 0.5]).reshape(1, 1, 1, 2)
    labels = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    assert close(LovaszLoss("binary")(logits, labels), 1.0)
    # flipped: logits (-0.5, -0.5) vs labels (0, 1): errors 0.5, 1.5; sorted (1.5: label 1, 0.5: label 0)
    # Jaccard: 1 - 0/1 = 1, 1 - 0/2 = 1 -> grad (1, 0) -> 1.5; symmetric mean (1.0 + 1.5) / 2
    assert close(SymmetricLovaszLoss()(logits, labels), 1.25)
    # ignored third pixel changes nothing
    logits3 = torch.tensor([0.5, 0.5, 9.0]).reshape(1, 1, 1, 3)
    labels3 = torch.tensor([1.0, 0.0, 255.0]).reshape(1, 1, 1, 3)
    assert close(LovaszLoss("binary", ignore_index=255)(logits3, labels3), 1.0)
    assert close(SymmetricLovaszLoss(ignore_index=255)(logits3, labels3), 1.25)
    # per image: the same image twice has the same mean
    assert close(LovaszLoss("binary", per_image=True)(logits.repeat(2, 1, 1, 1), labels.repeat(2, 1, 1, 1)), 1.0)


def test_lovasz_softmax_by_hand():
    # p0 = (0.8, 0.2) label 0, p1 = (0.3, 0.7) label 1
    # class 0: errors |(1, 0) - (0.8, 0.3)| = (0.2, 0.3); sorted (0.3: fg 0, 0.2: fg 1) -> grad (0.5, 0.5) -> 0.25
    # class 1: errors |(0, 1) - (0.2, 0.7)| = (0.2, 0.3); sorted (0.3: fg 1, 0.2: fg 0) -> grad (1, 0) -> 0.3
    probs = torch.tensor([[0.8, 0.3], [0.2, 0.7]]).reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    assert close(LovaszLoss("multiclass", from_logits=False)(probs, labels), (0.25 + 0.3) / 2)
    # an image with every pixel ignored scores 0 in the per-image mean
    probs2 = torch.cat([probs, probs])
    labels2 = torch.tensor([[[0, 1]], [[9, 9]]])
    assert close(
        LovaszLoss("multiclass", per_image=True, ignore_index=9, from_logits=False)(probs2, labels2), 0.275 / 2
    )
    with pytest.raises(ValueError, match="from_logits=False"):
        LovaszLoss("binary", from_logits=False)


# ---------------------------------------------------------------- cross-entropies and MCC, by hand
def test_soft_bce_by_hand():
    x = torch.full((1, 1, 1, 1), LN3)  # p = 0.75
    t = torch.ones(1, 1, 1, 1)
    assert close(SoftBCEWithLogitsLoss()(x, t), -math.log(0.75))
    # smoothed target 0.9: -(0.9 ln 0.75 + 0.1 ln 0.25)
    assert close(SoftBCEWithLogitsLoss(smooth_factor=0.1)(x, t), -(0.9 * math.log(0.75) + 0.1 * math.log(0.25)))
    assert close(SoftBCEWithLogitsLoss(pos_weight=2.0)(x, t), -2 * math.log(0.75))
    assert close(SoftBCEWithLogitsLoss(weight=[0.5])(x, t), -0.5 * math.log(0.75))
    # ignored elements are 0 but stay in the mean's count (segmentation_models_pytorch semantics)
    x2 = torch.tensor([LN3, 4.0]).reshape(1, 1, 1, 2)
    t2 = torch.tensor([1.0, -100.0]).reshape(1, 1, 1, 2)
    assert close(SoftBCEWithLogitsLoss()(x2, t2), -math.log(0.75) / 2)
    assert close(SoftBCEWithLogitsLoss(reduction="sum")(x2, t2), -math.log(0.75))
    with pytest.raises(ValueError, match=r"shape \(3, 1, 1\)"):
        SoftBCEWithLogitsLoss(pos_weight=[1.0, 2.0, 3.0])(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([0.0, LN3]).reshape(1, 2, 1, 1)  # p = (0.25, 0.75)
    label = torch.tensor([[[1]]])
    nll = -math.log(0.75)
    assert close(SoftCrossEntropyLoss()(logits, label), nll)
    # 0.9 * NLL + 0.1 / 2 * (-ln 0.25 - ln 0.75)
    assert close(SoftCrossEntropyLoss(smooth_factor=0.1)(logits, label), 0.9 * nll + 0.05 * (math.log(4) + nll))
    logits2 = torch.tensor([[0.0, 2.0], [LN3, 0.0]]).reshape(1, 2, 1, 2)
    labels2 = torch.tensor([[[1, 255]]])
    assert close(SoftCrossEntropyLoss(ignore_index=255, reduction="sum")(logits2, labels2), nll)
    assert SoftCrossEntropyLoss(reduction="none")(logits2, torch.tensor([[[1, 0]]])).shape == (1, 1, 2)


def test_mcc_by_hand():
    # p = (1, 0, 1, 0), t = (1, 0, 0, 0): TP 1, TN 2, FP 1, FN 0 -> (2 - 0) / sqrt(2 * 1 * 3 * 2)
    probs = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    assert close(MCCLoss()(probs, target), 1 - 2 / math.sqrt(12), tol=1e-4)
    logits = (probs * 2 - 1) * 50  # sigmoid = the probabilities above
    assert close(MCCLoss(from_logits=True)(logits, target), 1 - 2 / math.sqrt(12), tol=1e-4)


# ---------------------------------------------------------------- reference values (independent route)
def _fixed_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = (torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4) * 0.37).sin() * 3
    multilabel = ((torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4) * 7) % 5 == 0).float()
    multiclass = (torch.arange(2 * 4 * 4).reshape(2, 4, 4) * 5) % 3
    return x, multilabel, multiclass


def test_values_match_segmentation_models_pytorch():
    # measured with segmentation_models_pytorch 0.5.0 on the same tensors
    x, yl, ym = _fixed_inputs()
    ymi = ym.clone()
    ymi[0, 0] = 255
    assert close(DiceLoss("multilabel")(x, yl), 0.7122567296028137)
    assert close(JaccardLoss("multiclass")(x, ym), 0.7927083969116211)
    assert close(TverskyLoss("multilabel", alpha=0.3, beta=0.7, gamma=1.5)(x, yl), 0.5264403223991394)
    assert close(FocalLoss("multilabel", alpha=0.25)(x, yl), 0.5729749202728271)
    assert close(LovaszLoss("multiclass", per_image=True)(x, ym), 0.6867771148681641)
    assert close(LovaszLoss("multilabel")(x, yl), 2.8546805381774902)
    assert close(SoftCrossEntropyLoss(smooth_factor=0.1, ignore_index=255)(x, ymi), 1.1027230024337769)
    assert close(DiceLoss("multiclass", ignore_index=255)(x, ymi), 0.6657188534736633)
    assert close(MCCLoss()(x[:, :1].sigmoid(), yl[:, :1]), 1.0529240369796753)


# ---------------------------------------------------------------- gradients for every registered loss
def _mode_for(name: str) -> str:
    return {"ce": "multiclass", "mcc": "binary", "lovasz_hinge_symmetric": "binary", "bce": "multilabel"}.get(
        name, "multilabel"
    )


@pytest.mark.parametrize("name", list_losses())
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_gradients_flow_for_every_loss(name, mode):
    try:
        loss = build_loss([{"name": name}], mode)
    except ValueError as error:
        assert "does not support mode" in str(error)
        return
    classes = 1 if mode == "binary" else 3
    logits = torch.randn(2, classes, 8, 8, requires_grad=True)
    if mode == "multiclass":
        target = torch.randint(0, classes, (2, 8, 8))
    else:
        target = (torch.rand(2, classes, 8, 8) > 0.5).float()
    value = loss(logits, target)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("loss", "y_pred", "y_true", "match"),
    [
        (DiceLoss("binary"), torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 2, 2), "y_pred contains NaN"),
        (DiceLoss("multiclass"), torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 3]]]), r"y_true holds class"),
        (DiceLoss("multiclass", ignore_index=9), torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 9], [2, 3]]]), r"3, 3"),
        (DiceLoss("multiclass"), torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2), "integer class indices"),
        (DiceLoss("multiclass"), torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2).long(), "y_true must be class"),
        (DiceLoss("binary"), torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 255.0), "divided by 255"),
        (DiceLoss("binary"), torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), "one channel"),
        (DiceLoss("multilabel"), torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 3, 2), "y_true must have shape"),
        (DiceLoss("multilabel"), torch.zeros(2, 2, 2, 2), torch.zeros(1, 2, 2, 2), "batch size"),
        (DiceLoss("binary"), torch.zeros(1, 1, 2, 2, dtype=torch.long), torch.zeros(1, 1, 2, 2), "floating-point"),
        (FocalLoss("multiclass"), torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), -1), "outside"),
        (SoftCrossEntropyLoss(), torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 2), "outside"),
        (LovaszLoss("binary"), torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 2, 2), "NaN"),
        (DiceLoss("multilabel", classes=[4]), torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), "classes="),
    ],
)
def test_bad_inputs_raise_value_errors(loss, y_pred, y_true, match):
    with pytest.raises(ValueError, match=match):
        loss(y_pred, y_true)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="mode='sparse'"):
        DiceLoss("sparse")
    with pytest.raises(ValueError, match="not supported with mode='binary'"):
        DiceLoss("binary", classes=[0])
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss("binary", reduction="avg")
    with pytest.raises(ValueError, match="smooth_factor"):
        SoftBCEWithLogitsLoss(smooth_factor=1.5)


# ---------------------------------------------------------------- registry, joint, deep supervision, aux
def test_registry_names_and_errors():
    assert set(list_losses()) >= {
        "dice",
        "jaccard",
        "tversky",
        "focal",
        "lovasz",
        "lovasz_hinge_symmetric",
        "bce",
        "ce",
        "mcc",
        "dice_image",
    }
    assert isinstance(get_loss("dice", mode="binary", smooth=1.0), DiceLoss)
    assert get_loss("mcc").from_logits is True
    with pytest.raises(ValueError, match="unknown loss 'dise'.*dice"):
        get_loss("dise")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['smoth'\]"):
        get_loss("dice", mode="binary", smoth=1.0)
    with pytest.raises(ValueError, match="needs a mode"):
        get_loss("dice")
    with pytest.raises(ValueError, match=r"loss.terms\[0\] \(ce\).*does not support mode='binary'"):
        build_loss([{"name": "ce"}], "binary")
    with pytest.raises(ValueError, match="contradicts"):
        build_loss([{"name": "dice", "params": {"mode": "multiclass"}}], "binary")


def test_joint_loss_and_build_loss_by_hand():
    # logits (0, ln 3) -> p = (0.5, 0.75), targets (1, 1)
    # BCE mean = (ln 2 - ln 0.75) / 2 = 0.490415; Dice: I = 1.25, sum = 3.25 -> 1 - 2.5 / 3.25 = 0.230769
    logits = torch.tensor([0.0, LN3]).reshape(1, 1, 1, 2)
    target = torch.ones(1, 1, 1, 2)
    expected = 0.5 * (LN2 - math.log(0.75)) / 2 + 0.5 * (1 - 2.5 / 3.25)
    joint = JointLoss([(SoftBCEWithLogitsLoss(), 0.5), (DiceLoss("binary"), 0.5)])
    assert close(joint(logits, target), expected)
    built = build_loss([{"name": "bce", "weight": 0.5}, {"name": "dice", "weight": 0.5, "params": {}}], "binary")
    assert close(built(logits, target), expected)
    parts = built.components(logits, target)
    assert list(parts) == ["bce", "dice"] and close(parts["dice"], 1 - 2.5 / 3.25)


def test_build_loss_accepts_the_config_terms():
    from segfold.config.train import LossConfig

    cfg = LossConfig()
    loss = build_loss(cfg.terms, "multilabel")
    assert loss.names == [t.name for t in cfg.terms]


def test_deep_supervision_loss_by_hand():
    target = torch.ones(1, 1, 4, 4)
    main = torch.zeros(1, 1, 4, 4)  # BCE ln 2
    deep = [torch.full((1, 1, 4, 4), LN3), torch.full((1, 1, 2, 2), LN3)]  # BCE -ln 0.75 each (after resize)
    loss = DeepSupervisionLoss(SoftBCEWithLogitsLoss(), weights=[0.5, 0.25])
    assert close(loss(main, target, deep), LN2 + 0.75 * -math.log(0.75))
    with pytest.raises(ValueError, match="2 weights"):
        loss(main, target, deep[:1])


def test_aux_presence_loss_and_presence_from_target():
    logits = torch.tensor([[0.0, LN3]])
    presence = torch.tensor([[1.0, 1.0]])
    assert close(AuxPresenceLoss("bce")(logits, presence), (LN2 - math.log(0.75)) / 2)
    assert close(AuxPresenceLoss("focal")(logits, presence), (0.25 * LN2 - 0.0625 * math.log(0.75)) / 2)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        AuxPresenceLoss()(logits, presence[:, :1])
    labels = torch.tensor([[[0, 0], [2, 255]], [[1, 1], [255, 255]]])
    got = presence_from_target(labels, "multiclass", num_classes=3, ignore_index=255)
    assert got.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    masks = torch.zeros(2, 2, 3, 3)
    masks[1, 0, 2, 2] = 1
    assert presence_from_target(masks, "multilabel").tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_masked_by_presence_skips_absent_pairs():
    # class 0 present in image 0 only, class 1 nowhere: only image 0 / class 0 is scored (logits 0 -> ln 2)
    logits = torch.full((2, 2, 3, 3), 5.0, requires_grad=True)
    with torch.no_grad():
        logits[0, 0] = 0.0
    masks = torch.zeros(2, 2, 3, 3)
    masks[0, 0, :, :2] = 1
    loss = MaskedByPresenceLoss(SoftBCEWithLogitsLoss())
    assert close(loss(logits, masks), (6 * LN2 + 3 * LN2) / 9)
    # no present pair: 0, still differentiable
    empty = loss(logits, torch.zeros(2, 2, 3, 3))
    empty.backward()
    assert float(empty.detach()) == 0.0 and logits.grad is not None
    with pytest.raises(ValueError, match="presence must be"):
        loss(logits, masks, torch.ones(2, 3))


def test_build_loss_passes_the_data_ignore_index_to_losses_that_take_it():
    from segfold.losses import build_loss

    # 1 image, 2 classes, 2 pixels: pixel 0 is class 1, pixel 1 is ignored (255).
    logits = torch.tensor([[[[0.0, 5.0]], [[0.0, -5.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 255]]])
    loss = build_loss([{"name": "ce"}, {"name": "dice"}], "multiclass", ignore_index=255)
    # CE of the kept pixel: -log softmax([0, 0])[1] = log 2; the ignored pixel contributes 0 and, as in the
    # reference's SoftCrossEntropyLoss, still counts in the mean over the 2 pixels: log 2 / 2
    assert torch.isfinite(loss(logits, target))
    assert loss.losses[0](logits, target).item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    explicit = build_loss([{"name": "ce", "params": {"ignore_index": 7}}], "multiclass", ignore_index=255)
    with pytest.raises(ValueError):
        explicit(logits, target)  # the term's own ignore_index wins, so 255 is an out-of-range label
