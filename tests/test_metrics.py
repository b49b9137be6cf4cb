"""Metrics: confusion counts, metric functions and reductions, competition scores (numpy and torch)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from segfold import metrics as M
from segfold.metrics import competition as C


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# ---------------------------------------------------------------- get_stats
def test_get_stats_binary_by_hand():
    # output 1 1 / 0 0, target 1 0 / 1 0 -> TP 1 (top-left), FP 1, FN 1, TN 1
    output = t([[[[1, 1], [0, 0]]]])
    target = t([[[[1, 0], [1, 0]]]])
    assert [s.tolist() for s in M.get_stats(output, target, "binary")] == [[[1]], [[1]], [[1]], [[1]]]
    # scores: >= threshold is positive (0.5 itself counts)
    scores = torch.tensor([[[[0.7, 0.5], [0.2, 0.49]]]])
    tp, fp, fn, tn = M.get_stats(scores, target, "binary", threshold=0.5)
    assert (tp.item(), fp.item(), fn.item(), tn.item()) == (1, 1, 1, 1)
    assert all(s.dtype == torch.long and s.shape == (1, 1) for s in (tp, fp, fn, tn))


def test_get_stats_multiclass_with_ignore_index_by_hand():
    # output 0 1 2 2, target 0 2 2 255 (ignored): 3 scored pixels
    # class 0: TP 1, TN 2; class 1: FP 1 (pixel 1), TN 2; class 2: TP 1 (pixel 2), FN 1 (pixel 1), TN 1
    tp, fp, fn, tn = M.get_stats(t([[0, 1, 2, 2]]), t([[0, 2, 2, 255]]), "multiclass", num_classes=3, ignore_index=255)
    assert tp.tolist() == [[1, 0, 1]]
    assert fp.tolist() == [[0, 1, 0]]
    assert fn.tolist() == [[0, 0, 1]]
    assert tn.tolist() == [[2, 2, 1]]


def test_get_stats_multilabel_ignore_index_and_per_class_threshold():
    # class 0: out (1, 0, 1), target (1, ignored, 0) -> TP 1, FP 1 ; class 1: out (0, 1, 1), target (ignored, 1, 0)
    output = t([[[1, 0, 1], [0, 1, 1]]])
    target = t([[[1, -1, 0], [-1, 1, 0]]])
    tp, fp, fn, tn = M.get_stats(output, target, "multilabel", ignore_index=-1)
    assert tp.tolist() == [[1, 1]] and fp.tolist() == [[1, 1]] and fn.tolist() == [[0, 0]] and tn.tolist() == [[0, 0]]
    # thresholds 0.2 for class 0 and 0.7 for class 1 -> class 0 all positive, class 1 none
    scores = torch.tensor([[[0.3, 0.6], [0.3, 0.6]]])
    tp, fp, fn, tn = M.get_stats(scores, t([[[1, 1], [1, 1]]]), "multilabel", threshold=[0.2, 0.7])
    assert tp.tolist() == [[2, 0]] and fn.tolist() == [[0, 2]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(output=torch.ones(1, 1, 2), target=torch.ones(1, 1, 2), mode="binary"), "target must be an integer"),
        (dict(output=torch.ones(1, 1, 2), target=t([[[1, 0]]]), mode="binary"), "needs a threshold"),
        (dict(output=t([[1, 0]]), target=t([[1, 0]]), mode="multiclass"), "num_classes"),
        (dict(output=t([[1, 0]]), target=t([[1, 0]]), mode="multiclass", num_classes=2, threshold=0.5), "threshold"),
        (dict(output=torch.ones(1, 2), target=t([[1, 0]]), mode="multiclass", num_classes=2), "integer class"),
        (dict(output=t([[1, 0]]), target=t([[1, 0]]), mode="multiclass", num_classes=2, ignore_index=1), "outside"),
        (dict(output=t([[1, 0]]), target=t([[1, 2]]), mode="multiclass", num_classes=2), "target holds values"),
        (dict(output=t([[1, 2]]), target=t([[1, 0]]), mode="multiclass", num_classes=2), "output holds values"),
        (dict(output=t([[[1, 0]]]), target=t([[[1, 0], [0, 0]]]), mode="multilabel"), "must equal target shape"),
        (dict(output=t([[[1, 0], [0, 0]]]), target=t([[[1, 0], [0, 0]]]), mode="binary"), r"\(N, 1, \.\.\.\)"),
        (dict(output=t([[[1, 0]]]), target=t([[[1, 255]]]), mode="binary"), r"outside \[0, 1\]"),
        (dict(output=t([[[1, 0]]]), target=t([[[1, 0]]]), mode="binary", ignore_index=-1), "not supported"),
        (dict(output=t([[[1, 0]]]), target=t([[[1, 0]]]), mode="multi"), "mode='multi'"),
        (dict(output=torch.tensor([[[float("nan")]]]), target=t([[[1]]]), mode="binary", threshold=0.5), "NaN"),
    ],
)
def test_get_stats_input_rules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.get_stats(**kwargs)


# ---------------------------------------------------------------- metric functions and reductions
def test_each_metric_by_hand():
    # TP 2, FP 1, FN 3, TN 4
    counts = (t([[2]]), t([[1]]), t([[3]]), t([[4]]))
    expected = {
        "f1_score": 4 / 8,  # 2TP / (2TP + FN + FP)
        "iou_score": 2 / 6,
        "accuracy": 6 / 10,
        "precision": 2 / 3,
        "positive_predictive_value": 2 / 3,
        "recall": 2 / 5,
        "sensitivity": 2 / 5,
        "specificity": 4 / 5,
        "balanced_accuracy": (0.4 + 0.8) / 2,
        "negative_predictive_value": 4 / 7,
        "false_negative_rate": 3 / 5,
        "false_positive_rate": 1 / 5,
        "false_discovery_rate": 1 / 3,
        "false_omission_rate": 3 / 7,
        "positive_likelihood_ratio": 0.4 / 0.2,
        "negative_likelihood_ratio": 0.6 / 0.8,
    }
    for name, value in expected.items():
        assert getattr(M, name)(*counts).item() == pytest.approx(value, abs=1e-6), name
    # F2 = 5 TP / (5 TP + 4 FN + FP) = 10 / 23
    assert M.fbeta_score(*counts, beta=2.0).item() == pytest.approx(10 / 23, abs=1e-6)


# two images, two classes; class 1 has nothing at all (IoU 0/0)
TP, FP, FN, TN = t([[1, 0], [2, 0]]), t([[0, 0], [1, 0]]), t([[1, 0], [0, 0]]), t([[2, 4], [1, 4]])


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("micro", 3 / 5),  # TP 3, FP 1, FN 1 over everything
        ("macro", (3 / 5 + 1.0) / 2),  # class 0: 3 / 5; class 1: 0/0 -> zero_division 1
        ("weighted", 0.25 * 3 / 5 + 0.75 * 1.0),  # weights 1 : 3
        ("micro-imagewise", (1 / 2 + 2 / 3) / 2),  # image 0: 1 / 2, image 1: 2 / 3
        ("macro-imagewise", ((1 / 2 + 2 / 3) / 2 + 1.0) / 2),  # class 0 mean over images 7/12, class 1 1
        ("weighted-imagewise", 0.25 * (1 / 2 + 2 / 3) / 2 + 0.75 * 1.0),
    ],
)
def test_reductions_where_micro_and_macro_differ(reduction, expected):
    weights = [1.0, 3.0] if "weighted" in reduction else None
    value = M.iou_score(TP, FP, FN, TN, reduction=reduction, class_weights=weights)
    assert value.dim() == 0 and value.item() == pytest.approx(expected, abs=1e-6)


def test_reduction_none_zero_division_and_errors():
    assert M.iou_score(TP, FP, FN, TN).flatten().tolist() == pytest.approx([0.5, 1.0, 2 / 3, 1.0])
    assert M.iou_score(TP, FP, FN, TN, reduction="none", zero_division=0.0)[:, 1].tolist() == [0.0, 0.0]
    # macro with zero_division 0: (3/5 + 0) / 2
    assert M.iou_score(TP, FP, FN, TN, reduction="macro", zero_division=0).item() == pytest.approx(0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = M.iou_score(TP, FP, FN, TN, reduction="macro", zero_division="warn")
    assert value.item() == pytest.approx(0.3) and any("Zero division" in str(w.message) for w in caught)
    # micro with no positive anywhere: 0/0 -> zero_division (not NaN)
    zero = t([[0]])
    assert M.iou_score(zero, zero, zero, t([[4]]), reduction="micro").item() == 1.0
    with pytest.raises(ValueError, match="needs class_weights"):
        M.iou_score(TP, FP, FN, TN, reduction="weighted")
    with pytest.raises(ValueError, match="reduction='mean'"):
        M.iou_score(TP, FP, FN, TN, reduction="mean")
    with pytest.raises(ValueError, match="2 weights"):
        M.iou_score(TP, FP, FN, TN, reduction="weighted", class_weights=[1.0])


def test_stats_to_score_end_to_end_multiclass():
    # 4 pixels, 2 classes: output 0 0 1 1, target 0 1 1 1 -> class 0: TP 1 FP 1; class 1: TP 2 FN 1
    stats = M.get_stats(t([[0, 0, 1, 1]]), t([[0, 1, 1, 1]]), "multiclass", num_classes=2)
    assert M.iou_score(*stats, reduction="macro").item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert M.accuracy(*stats, reduction="micro").item() == pytest.approx((1 + 2 + 2 + 1) / 8)


# ---------------------------------------------------------------- competition scores
def _pairs_example() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((2, 2, 2, 2), dtype=np.uint8)
    truth = np.zeros((2, 2, 2, 2), dtype=np.uint8)
    pred[0, 0, 0] = 1  # 2 pixels
    truth[0, 0, 0, 0] = 1  # 1 pixel inside -> 2 * 1 / (2 + 1)
    truth[1, 0, 1, 1] = 1  # empty prediction vs 1 pixel -> 0
    pred[1, 1] = 1
    truth[1, 1] = 1  # full vs full -> 1 ; [0, 1] empty vs empty
    return pred, truth


def test_dice_pairs_by_hand_and_empty_score_switch():
    pred, truth = _pairs_example()
    np.testing.assert_allclose(C.dice_pairs(pred, truth), [[2 / 3, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(C.dice_pairs(pred, truth, empty_score=0.0), [[2 / 3, 0.0], [0.0, 1.0]])
    torch_scores = C.dice_pairs(torch.from_numpy(pred), torch.from_numpy(truth).bool(), empty_score=0.0)
    assert isinstance(torch_scores, torch.Tensor)
    np.testing.assert_allclose(torch_scores.numpy(), [[2 / 3, 0.0], [0.0, 1.0]])
    assert C.mean_score("dice_pairs", pred, truth) == pytest.approx((2 / 3 + 1 + 0 + 1) / 4)


def test_dice_image_by_hand():
    pred = np.zeros((3, 2, 2), dtype=bool)
    truth = np.zeros((3, 2, 2), dtype=bool)
    pred[0, 0] = True  # 2 pixels
    truth[0, :, 0] = True  # 2 pixels, 1 shared -> 2 * 1 / 4
    truth[1, 0, 0] = True  # empty prediction -> 0 ; image 2 empty vs empty
    np.testing.assert_allclose(C.dice_image(pred, truth), [0.5, 0.0, 1.0])
    np.testing.assert_allclose(C.dice_image(pred[:, None], truth[:, None], empty_score=0.0), [0.5, 0.0, 0.0])
    single = C.dice_image(torch.ones(1, 1, 1, dtype=torch.uint8), torch.ones(1, 1, 1, dtype=torch.uint8))
    assert single.tolist() == [1.0]  # a single pixel, batch of one


def test_tgs_iou_precision_by_hand():
    pred = np.zeros((6, 1, 2, 5), dtype=np.uint8)
    truth = np.zeros((6, 1, 2, 5), dtype=np.uint8)
    truth[0, 0, 0] = 1
    pred[0, 0, 0, :3] = 1  # IoU 3/5 = 0.6 exactly: hits at 0.50, 0.55 only (strictly greater) -> 0.2
    truth[1, 0, 0, :4] = 1
    pred[1, 0, 0, :3] = 1  # IoU 3/4 = 0.75: hits at 0.50 ... 0.70 -> 0.5
    pred[2, 0, 0, 0] = 1  # prediction on an empty truth -> 0
    truth[3, 0, 1, 1] = 1  # empty prediction on a non-empty truth -> 0 ; image 4: empty vs empty -> 1
    pred[5] = 1
    truth[5] = 1  # full vs full -> 1
    expected = [0.2, 0.5, 0.0, 0.0, 1.0, 1.0]
    np.testing.assert_allclose(C.tgs_iou_precision(pred, truth), expected)
    np.testing.assert_allclose(C.tgs_iou_precision(torch.from_numpy(pred), torch.from_numpy(truth)).numpy(), expected)
    assert C.mean_score("tgs_iou", pred[:, 0], truth[:, 0]) == pytest.approx(sum(expected) / 6)


@pytest.mark.parametrize("name", ["dice_pairs", "dice_image", "tgs_iou"])
def test_numpy_and_torch_agree_and_batches_concatenate(name):
    rng = np.random.default_rng(0)
    shape = (8, 3, 16, 16) if name == "dice_pairs" else (8, 16, 16)
    pred = rng.random(shape) > 0.6
    truth = rng.random(shape) > 0.7
    pred[:2], truth[:2] = False, False  # some empty-vs-empty items
    score = C.get_competition_score(name)
    from_numpy = score(pred, truth)
    from_torch = score(torch.from_numpy(pred), torch.from_numpy(truth.astype(np.float32)))
    np.testing.assert_array_equal(from_numpy, from_torch.numpy())
    mixed = score(torch.from_numpy(pred), truth.astype(np.uint8))
    np.testing.assert_array_equal(from_numpy, mixed.numpy())
    batches = np.concatenate([score(pred[:3], truth[:3]), score(pred[3:], truth[3:])])
    assert batches.mean() == pytest.approx(C.mean_score(name, pred, truth))


@pytest.mark.parametrize(
    ("function", "pred", "truth", "match"),
    [
        (C.dice_pairs, np.full((1, 1, 2, 2), 0.7), np.zeros((1, 1, 2, 2)), "threshold probabilities"),
        (C.dice_pairs, np.full((1, 1, 2, 2), 255, np.uint8), np.zeros((1, 1, 2, 2), np.uint8), "only 0 and 1"),
        (C.dice_pairs, np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool), r"\(N, C, H, W\)"),
        (C.dice_pairs, np.zeros((1, 1, 2, 2), bool), np.zeros((1, 1, 2, 3), bool), "differs"),
        (C.dice_image, np.zeros((1, 2, 2, 2), bool), np.zeros((1, 2, 2, 2), bool), "one class"),
        (C.tgs_iou_precision, torch.full((1, 2, 2), float("nan")), torch.zeros(1, 2, 2), "only 0 and 1"),
        (C.dice_image, [[0, 1]], [[0, 1]], "numpy array or a torch tensor"),
    ],
)
def test_competition_input_checks(function, pred, truth, match):
    with pytest.raises(ValueError, match=match):
        function(pred, truth)


def test_get_competition_score_names():
    assert C.get_competition_score("dice_pairs") is C.dice_pairs
    assert C.get_competition_score("dice_image") is C.dice_image
    assert C.get_competition_score("tgs_iou") is C.tgs_iou_precision
    with pytest.raises(ValueError, match="choose one of"):
        C.get_competition_score("dice")
