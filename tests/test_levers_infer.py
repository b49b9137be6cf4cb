"""The inference-side score levers: blend modes, the soft classifier gate, holdout scores, fold/full models,
the selected checkpoint, and pseudo-labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from segfold.blend import blend_probs, rank_table, run_blend
from segfold.config import validate_config
from segfold.data import rle
from segfold.data.demo import make_demo_data
from segfold.data.pseudo import read_pseudo
from segfold.errors import ConfigError, TrainingError
from segfold.postprocess.histograms import collect_histograms, evaluate
from segfold.postprocess.rules import ClassRules, PostprocessParams, apply_postprocess
from segfold.predict import make_predictor, run
from segfold.predict.tta import build_tta
from segfold.probs import ProbStore, StoreView, fold_checkpoints, selected_checkpoint
from segfold.pseudo import make_pseudo_labels
from segfold.runs import read_runs
from test_blend import make_member, write_store
from test_tuning import brute_score, make_oof

# ------------------------------------------------------------------------------------------ blend modes


def test_power_vote_and_rank_blends_by_hand(tmp_path):
    a = np.array([0, 255, 51, 153], dtype=np.uint8)  # 0, 1, 0.2, 0.6
    b = np.array([255, 255, 204, 102], dtype=np.uint8)  # 1, 1, 0.8, 0.4
    # power (RMS): sqrt((0 + 1) / 2), 1, sqrt((0.04 + 0.64) / 2), sqrt((0.36 + 0.16) / 2)
    np.testing.assert_allclose(blend_probs([a, b], [1, 1], "power"),
                               [np.sqrt(0.5), 1.0, np.sqrt(0.34), np.sqrt(0.26)], atol=1e-6)
    # vote: members above 0.5 are [0, 1, 0, 1] and [1, 1, 1, 0]; weights 3:1
    np.testing.assert_allclose(blend_probs([a, b], [3, 1], "vote"), [0.25, 1.0, 0.25, 0.75], atol=1e-6)

    # rank table of a store holding 0, 51, 51, 255: mid-ranks (0 + 1/2) / 4, (1 + 2/2) / 4, (3 + 1/2) / 4
    store = write_store(tmp_path, "oof", ["x"], (np.array([0, 51, 51, 255], np.float32) / 255).reshape(1, 1, 2, 2))
    table = rank_table(StoreView([store]))
    assert table.shape == (1, 256)
    assert (table[0, 0], table[0, 51], table[0, 255]) == (pytest.approx(0.125), pytest.approx(0.5),
                                                          pytest.approx(0.875))
    other = np.linspace(0, 1, 256, dtype=np.float32)[None]  # a member whose rank is its value
    x = np.array([[[[0, 51], [51, 255]]]], dtype=np.uint8)
    blended = blend_probs([x, x], [1, 1], "rank", tables=[table, other])
    np.testing.assert_allclose(blended[0, 0], [[0.0625, 0.35], [0.35, 0.9375]], atol=1e-6)
    with pytest.raises(ValueError, match="one rank table per member"):
        blend_probs([x, x], [1, 1], "rank")


def test_auto_blend_scores_every_mode_on_the_oof_and_keeps_the_best(tmp_path):
    rng = np.random.default_rng(7)
    ids = [f"i{k}" for k in range(12)]
    hold = [f"h{k}" for k in range(4)]
    p1, p2 = rng.random((2, 12, 2, 8, 8)).astype(np.float32)
    h1, h2 = rng.random((2, 4, 2, 8, 8)).astype(np.float32)
    truth = {i: t for i, t in zip(ids + hold, np.concatenate([(p1 + p2) / 2, (h1 + h2) / 2]) > 0.5, strict=True)}
    members = [make_member(tmp_path, "one", ids, p1), make_member(tmp_path, "two", ids, p2)]
    for name, probs in (("one", h1), ("two", h2)):
        write_store(tmp_path / name / "holdout", "holdout", hold, probs, classes=("a", "b"))
    result = run_blend(members, "both", method="auto", trials=3, truth_fn=truth.__getitem__)
    modes = result["modes"]
    assert sorted(modes) == ["geometric", "mean", "power", "rank", "vote", "weighted"]
    assert result["method"] == max(modes, key=lambda m: modes[m]["score"])
    saved = json.loads((tmp_path / "both" / "blend.json").read_text())
    assert saved["method"] == result["method"] and saved["holdout"] is True
    holdout = ProbStore.open(tmp_path / "both" / "holdout", "holdout")
    assert holdout.image_ids == hold
    tuning = result["tuning"]["holdout"]
    assert tuning["images"] == 4 and 0.0 <= tuning["score_after"] <= 1.0
    thresholds = json.loads((tmp_path / "both" / "thresholds.json").read_text())
    assert thresholds["holdout"]["score_after"] == pytest.approx(tuning["score_after"])

    row = next(r for r in read_runs(tmp_path) if r["experiment"] == "both")
    assert float(row["holdout"]) == pytest.approx(tuning["score_after"], abs=1e-6)
    assert float(row["oof_after"]) == pytest.approx(result["tuning"]["score_after"], abs=1e-6)


# ------------------------------------------------------------------------------------------ soft gate


def test_soft_gate_scales_the_minimum_area_by_the_class_probability():
    probs = np.zeros((1, 6, 6), dtype=np.float32)
    probs[0, :2, :5] = 0.9  # a 10-pixel mask
    rule = PostprocessParams(("a",), (ClassRules(min_area=8, cls_area_power=1.0),))
    # p_cls 0.9: 8 * 2 * 0.1 = 1.6 <= 10 kept; p_cls 0.2: 8 * 2 * 0.8 = 12.8 > 10 dropped; 0.5: 8 kept
    assert apply_postprocess(probs, rule, np.array([0.9])).sum() == 10
    assert apply_postprocess(probs, rule, np.array([0.2])).sum() == 0
    assert apply_postprocess(probs, rule, np.array([0.5])).sum() == 10
    with pytest.raises(ValueError, match="cls_area_power=1.0 but no class probabilities"):
        apply_postprocess(probs, rule)
    with pytest.raises(ConfigError, match="use it with area_mode: total"):
        ClassRules(min_area=8, area_mode="component", cls_area_power=1.0)
    cfg = validate_config({"postprocess": {"cls_area_power": 2.0, "per_class": {"2": {"cls_area_power": 0.5}}}})
    params = PostprocessParams.from_config(cfg.postprocess, cfg.data.classes)
    assert [r.cls_area_power for r in params.rules] == [2.0, 0.5, 2.0, 2.0]


def test_soft_gate_histogram_score_equals_applying_the_rules(tmp_path):
    store, truth = make_oof(tmp_path, n=16)
    hist = collect_histograms(StoreView([store]), truth.__getitem__)
    params = PostprocessParams(("a", "b"), (ClassRules(threshold=0.4, min_area=30, cls_area_power=1.5),
                                            ClassRules(threshold=0.6, min_area=12, cls_area_power=0.5)))
    plain = PostprocessParams(("a", "b"), (ClassRules(threshold=0.4, min_area=30), ClassRules(threshold=0.6,
                                                                                               min_area=12)))
    soft = evaluate(hist, params, "dice_pairs")
    assert soft == pytest.approx(float(np.mean(brute_score(store, truth, params, "dice_pairs"))), abs=1e-9)
    assert soft != pytest.approx(evaluate(hist, plain, "dice_pairs"), abs=1e-9)  # the gate changed something


# ----------------------------------------------------------------------------------- models and checkpoints


def test_fold_checkpoints_auto_takes_the_checkpoint_each_fold_chose(tmp_path):
    for k, chosen in ((0, "averaged.pt"), (1, "best.pt")):
        fold = tmp_path / f"fold{k}"
        fold.mkdir()
        for name in ("best.pt", "averaged.pt"):
            (fold / name).write_bytes(b"x")
        (fold / "result.json").write_text(json.dumps({"checkpoint": chosen}))
    (tmp_path / "fold2").mkdir()
    (tmp_path / "fold2" / "best.pt").write_bytes(b"x")  # an older run without result.json
    paths, missing = fold_checkpoints(tmp_path, "auto")
    assert {k: p.name for k, p in paths.items()} == {0: "averaged.pt", 1: "best.pt", 2: "best.pt"} and not missing
    assert selected_checkpoint(tmp_path / "fold0") == tmp_path / "fold0" / "averaged.pt"
    assert fold_checkpoints(tmp_path, "best.pt")[0][0].name == "best.pt"


class _Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), self.value)


def test_fold_and_full_models_are_averaged_with_the_full_weight(tmp_path, monkeypatch):
    # logits 0 and log(3): probabilities 0.5 and 0.75; weights 0.25 / 0.75 -> 0.6875
    predict = make_predictor([_Constant(0.0), _Constant(float(np.log(3.0)))], build_tta("none"), "binary",
                             weights=[1, 3])
    probs, _ = predict(torch.zeros(1, 3, 4, 4))
    assert torch.allclose(probs, torch.full_like(probs, 0.6875))

    cfg = validate_config({"experiment": {"name": "x", "output_root": str(tmp_path)},
                           "infer": {"models": "both", "full_weight": 0.4}})
    monkeypatch.setattr(run, "load_fold_models", lambda *a, **k: ([_Constant(0.0)] * 3, [0, 1, 2], []))
    with pytest.raises(TrainingError, match="needs the full-data fit's .*full/best.pt: run scripts/train.py"):
        run.load_models(cfg, None, torch.device("cpu"))
    (tmp_path / "x" / "full").mkdir(parents=True)
    (tmp_path / "x" / "full" / "best.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="runs in PyTorch only; predict with --runtime torch"):
        run.load_models(cfg, None, torch.device("cpu"), runtime="onnx")
    full = _Constant(1.0)
    full.checkpoint_epoch = 4
    monkeypatch.setattr(run, "load_checkpoint_model", lambda path, device: (full, None))
    models, used, weights, entries = run.load_models(cfg, None, torch.device("cpu"))
    assert used == [0, 1, 2] and models[-1] is full and weights == pytest.approx([0.2, 0.2, 0.2, 0.4])
    assert entries[-1]["model"] == "full" and entries[-1]["epoch"] == 4 and entries[-1]["path"].endswith("best.pt")


# -------------------------------------------------------------------------------------------- pseudo-labels


def test_pseudo_labels_keep_confident_images_at_native_size(tmp_path):
    root = make_demo_data(tmp_path / "demo", n_train=4, n_test=3)
    cfg = validate_config({"experiment": {"name": "exp", "output_root": str(tmp_path / "out")},
                           "data": {"root": str(root), "metric_size": [64, 128],
                                    "pseudo": {"low": 0.1, "high": 0.9, "confident": 0.95}}})
    ids = ["test_0000.jpg", "test_0001.jpg", "test_0002.jpg"]
    probs = np.full((3, 4, 64, 128), 0.02, dtype=np.float32)
    probs[0, 1, 8:16, 10:30] = 0.98  # confident, class "2" has a block
    probs[1, :, :40] = 0.5  # 40 of 64 rows unsure: 62.5% unsure
    probs[2, 3, 0:2, 0:4] = 0.6  # 8 unsure pixels of 4 * 64 * 128: confident, and empty at threshold 0.5? no: 0.6
    write_store(tmp_path / "out" / "exp" / "test", "test", ids, probs, classes=("1", "2", "3", "4"))
    result = make_pseudo_labels(cfg)
    assert (result["test_images"], result["kept"]) == (3, 2)
    info = json.loads((tmp_path / "out" / "exp" / "pseudo" / "pseudo.json").read_text())
    assert info["image_ids"] == ["test_0000.jpg", "test_0002.jpg"] and "p < 0.1 or p > 0.9" in info["rule"]

    pseudo_cfg = validate_config({"data": {"root": str(root), "pseudo": {"path": result["folder"]}}})
    data_cfg, annotations = read_pseudo(pseudo_cfg.data)
    assert annotations.image_ids == ["test_0000.jpg", "test_0002.jpg"]
    mask = annotations.mask("test_0000.jpg")  # (4, 128, 256): the store's 64 x 128 doubled by nearest
    expected = np.zeros((128, 256), dtype=np.uint8)
    expected[16:32, 20:60] = 1
    assert mask.shape == (4, 128, 256) and np.array_equal(mask[1], expected) and mask[[0, 2, 3]].sum() == 0
    block = annotations.mask("test_0002.jpg")[3]  # 0.6 > 0.5 (the config's threshold): kept, 8 px -> 32 px
    assert int(block.sum()) == 32
    assert rle.encode(expected) in (tmp_path / "out" / "exp" / "pseudo" / "train.csv").read_text()
