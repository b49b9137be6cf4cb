"""Threshold search: the histogram route against a brute-force loop scored with segfold.metrics, Optuna
reproducibility, the OOF sources, and tune_thresholds / scripts/tune_thresholds.py end to end."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest

from segfold.config import validate_config
from segfold.errors import ConfigError, DataError
from segfold.metrics.competition import dice_image, dice_pairs, tgs_iou_precision
from segfold.postprocess import histograms as histsearch
from segfold.postprocess.components import ComponentCache
from segfold.postprocess.histograms import class_table, collect_histograms, evaluate, grid_search
from segfold.postprocess.optuna_search import refine_class
from segfold.postprocess.rules import ClassRules, PostprocessParams, apply_postprocess, load_thresholds
from segfold.postprocess.tune import default_min_areas, tune_thresholds
from segfold.probs import StoreView, fit_mask, open_oof
from segfold.probs.store import ProbStore


def make_oof(folder, n=24, classes=("a", "b"), size=(12, 14), seed=0, with_cls=True, name="oof", start=0):
    """A store of smooth random probabilities and truth masks that follow them loosely (some images empty)."""
    rng = np.random.default_rng(seed)
    height, width = size
    noise = rng.random((n, len(classes), height, width)).astype(np.float32)
    probs = np.stack([[cv2.GaussianBlur(x, (5, 5), 1.5) for x in img] for img in noise])
    probs = (probs - probs.min()) / (probs.max() - probs.min())
    ids = [f"img{start + i:03d}" for i in range(n)]
    present = rng.random((n, len(classes))) < 0.6
    truth = (rng.random(probs.shape) < probs ** 2) & present[..., None, None]
    store = ProbStore.create(folder, name, ids, list(classes), height, width)
    store.write(np.arange(n), probs)
    if with_cls:
        store.write_cls(np.arange(n), np.clip(present * 0.5 + rng.random(present.shape) * 0.5, 0, 1))
    store = store.finalize()
    return store, {i: t for i, t in zip(ids, truth, strict=True)}


def brute_score(store, truth, params, metric):
    """Apply the rules to every image and score with segfold.metrics.competition (an independent route)."""
    pred = np.stack([apply_postprocess(store.probs[i], params, None if store.cls is None else store.cls[i])
                     for i in range(len(store))])
    true = np.stack([truth[i] for i in store.image_ids]).astype(np.uint8)
    if metric == "dice_pairs":
        return dice_pairs(pred, true)
    return (dice_image if metric == "dice_image" else tgs_iou_precision)(pred[:, 0], true[:, 0])


def test_grid_table_equals_brute_force_dice_pairs(tmp_path):
    store, truth = make_oof(tmp_path, n=16)
    hist = collect_histograms(StoreView([store]), truth.__getitem__)
    start = PostprocessParams(("a", "b"), (ClassRules(), ClassRules(top=0.7, min_count=3)))
    thresholds, areas = [0.2, 0.35, 0.5, 0.5 + 1 / 255, 0.8], [0, 5, 20, 60]
    for c in range(2):
        table = class_table(hist, start, c, thresholds, areas, "dice_pairs")
        brute = np.array([[brute_score(store, truth, start.with_rule(c, replace(start.rules[c], threshold=t,
                                                                                min_area=a)), "dice_pairs")[:, c].mean()
                           for a in areas] for t in thresholds])
        np.testing.assert_allclose(table, brute, rtol=0, atol=1e-12)
    result = grid_search(hist, start, "dice_pairs", thresholds, areas)
    assert result.method.startswith("exact")
    # per class, the first maximum of the brute-force table (threshold-major order)
    for c in range(2):
        i, j = np.unravel_index(np.argmax(result.tables[c]), result.tables[c].shape)
        assert (result.params.rules[c].threshold, result.params.rules[c].min_area) == (thresholds[i], areas[j])
    assert result.score == pytest.approx(brute_score(store, truth, result.params, "dice_pairs").mean(), abs=1e-12)


@pytest.mark.parametrize("metric", ["dice_image", "tgs_iou"])
def test_grid_table_equals_brute_force_one_class(tmp_path, metric):
    store, truth = make_oof(tmp_path, n=20, classes=("x",), seed=3)
    hist = collect_histograms(StoreView([store]), truth.__getitem__)
    start = PostprocessParams(("x",), (ClassRules(cls_threshold=0.3),))
    thresholds, areas = [0.1, 0.3, 0.45, 0.6], [0, 8, 30]
    table = class_table(hist, start, 0, thresholds, areas, metric)
    brute = np.array([[brute_score(store, truth, start.with_rule(0, replace(start.rules[0], threshold=t, min_area=a)),
                                   metric).mean() for a in areas] for t in thresholds])
    np.testing.assert_allclose(table, brute, rtol=0, atol=1e-12)


def test_coordinate_table_with_at_least_one_equals_brute_force(tmp_path):
    store, truth = make_oof(tmp_path, n=16, seed=5)
    hist = collect_histograms(StoreView([store]), truth.__getitem__)
    start = PostprocessParams(("a", "b"), (ClassRules(min_area=40), ClassRules(threshold=0.6)), at_least_one=True)
    thresholds, areas = [0.3, 0.5, 0.7], [0, 40, 90]
    table = class_table(hist, start, 1, thresholds, areas, "dice_pairs")  # at_least_one: not separable
    brute = np.array([[brute_score(store, truth, start.with_rule(1, ClassRules(threshold=t, min_area=a)),
                                   "dice_pairs").mean() for a in areas] for t in thresholds])
    np.testing.assert_allclose(table, brute, rtol=0, atol=1e-12)
    result = grid_search(hist, start, "dice_pairs", thresholds, areas, rounds=3)
    assert result.method.startswith("coordinate-wise")
    assert result.score >= evaluate(hist, start, "dice_pairs") - 1e-12
    assert result.score == pytest.approx(brute_score(store, truth, result.params, "dice_pairs").mean(), abs=1e-12)


@pytest.mark.parametrize("with_hist", [False, True], ids=["every-image", "images-above-the-cutoff"])
def test_every_rule_scored_from_histograms_matches_brute_force(tmp_path, with_hist):
    store, truth = make_oof(tmp_path, n=12, seed=7)
    source = StoreView([store])
    rng = np.random.default_rng(1)
    for one_class in (False, True):
        hist = collect_histograms(source, truth.__getitem__, one_class)
        components = ComponentCache(source, truth.__getitem__, None, one_class, hist if with_hist else None)
        for _ in range(15):
            # 0.95: most images have no pixel above it (the cache skips them); min_area 0 / 1: nothing dropped
            rules = tuple(ClassRules(threshold=float(rng.choice([0.3, 0.5, 0.7, 0.95])),
                                     min_area=int(rng.choice([0, 1, *rng.integers(2, 30, 3)])),
                                     area_mode=str(rng.choice(["total", "component"])),
                                     top=None if rng.random() < 0.5 else float(rng.random()),
                                     min_count=int(rng.integers(0, 20)),
                                     cls_threshold=None if rng.random() < 0.5 else float(rng.random()))
                          for _ in range(2))
            params = PostprocessParams(("a", "b"), rules, bool(rng.random() < 0.5), one_class)
            expected = brute_score(store, truth, params, "dice_pairs").mean()
            assert evaluate(hist, params, "dice_pairs", 1.0, components) == pytest.approx(expected, abs=1e-12)


def test_component_cache_of_a_sub_sample_matches_its_rows(tmp_path):
    store, truth = make_oof(tmp_path, n=12, seed=3)
    source = StoreView([store])
    rows = np.array([1, 4, 5, 10])
    hist = collect_histograms(source, truth.__getitem__)
    whole = ComponentCache(source, truth.__getitem__, None, False, hist)
    part = ComponentCache(source, truth.__getitem__, rows, False, hist.subset(rows))
    for c, cutoff, area in [(0, 100, 5), (1, 60, 12), (1, 200, 2)]:
        pred, tp = whole.stats(c, cutoff, area)
        assert [a.tolist() for a in part.stats(c, cutoff, area)] == [pred[rows].tolist(), tp[rows].tolist()]
    with pytest.raises(ValueError, match="histograms of 12 images for a cache of 4 rows"):
        ComponentCache(source, truth.__getitem__, rows, False, hist)


def test_oof_reads_equal_the_stores_rows(tmp_path):
    first, _ = make_oof(tmp_path / "f0", n=5, seed=1)
    second, _ = make_oof(tmp_path / "f1", n=4, seed=2, start=5)
    source = StoreView([ProbStore.open(tmp_path / "f0", "oof"), ProbStore.open(tmp_path / "f1", "oof")])
    everything = np.concatenate([np.asarray(first.probs), np.asarray(second.probs)])
    rows = np.array([7, 0, 4, 5, 8, 2])  # across both stores, out of order
    assert np.array_equal(source.read_u8(rows), everything[rows])
    assert np.array_equal(source.read_u8(rows, channel=1), everything[rows, 1])


def test_chunked_reading_gives_the_same_histograms(tmp_path, monkeypatch):
    store, truth = make_oof(tmp_path, n=10)
    whole = collect_histograms(StoreView([store]), truth.__getitem__)
    monkeypatch.setattr(histsearch, "PIXEL_BUDGET", 2 * 12 * 14 * 3)  # 3 images per chunk
    chunked = collect_histograms(StoreView([store]), truth.__getitem__)
    assert np.array_equal(whole.counts, chunked.counts) and np.array_equal(whole.true_counts, chunked.true_counts)
    assert whole.counts.sum() == 10 * 2 * 12 * 14  # every pixel counted once


def test_optuna_search_is_reproducible_and_never_below_its_start(tmp_path):
    store, truth = make_oof(tmp_path, n=16, seed=2)
    source = StoreView([store])
    hist = collect_histograms(source, truth.__getitem__)
    components = ComponentCache(source, truth.__getitem__)
    start = PostprocessParams(("a", "b"), (ClassRules(threshold=0.5), ClassRules(threshold=0.5)))
    runs = [refine_class(hist, start, 1, "dice_pairs", 1.0, trials=12, seed=4, max_area=50, components=components)
            for _ in range(2)]
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert [t.params for t in runs[0][2].trials] == [t.params for t in runs[1][2].trials]
    assert runs[0][1] >= evaluate(hist, start, "dice_pairs") - 1e-12  # the start is the first trial
    best = start.with_rule(1, runs[0][0])
    assert runs[0][1] == pytest.approx(brute_score(store, truth, best, "dice_pairs").mean(), abs=1e-12)


def test_open_oof_gathers_fold_stores_and_checks_them(tmp_path):
    with pytest.raises(DataError, match="no OOF probabilities"):
        open_oof(tmp_path)
    make_oof(tmp_path / "fold1", n=3, start=10)
    make_oof(tmp_path / "fold0", n=4)
    source = open_oof(tmp_path)
    assert source.image_ids == ["img000", "img001", "img002", "img003", "img010", "img011", "img012"]
    assert source.shape == (7, 2, 12, 14) and source.cls.shape == (7, 2)
    fold1 = ProbStore.open(tmp_path / "fold1", "oof")
    assert np.array_equal(source.read_u8([5, 0]), np.stack([fold1.probs[1], ProbStore.open(tmp_path / "fold0",
                                                                                           "oof").probs[0]]))
    assert np.array_equal(source.read_u8([4], channel=1)[0], fold1.probs[0, 1])
    make_oof(tmp_path / "fold2", n=2, start=11)
    with pytest.raises(DataError, match="'img011' is in both"):
        open_oof(tmp_path)
    make_oof(tmp_path / "oof", n=2)  # a gathered store wins
    assert len(open_oof(tmp_path)) == 2


def test_fit_mask_resizes_by_nearest_and_one_hots_index_maps():
    mask = np.array([[[0, 1], [1, 1]]], dtype=np.uint8)  # (1, 2, 2)
    assert fit_mask(mask, 1, 4, 4)[0].astype(int).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1],
                                                                [1, 1, 1, 1], [1, 1, 1, 1]]
    index_map = np.array([[0, 2], [1, 255]], dtype=np.uint8)  # 255 = ignore: no class
    assert fit_mask(index_map, 3, 2, 2).astype(int).tolist() == [[[1, 0], [0, 0]], [[0, 0], [1, 0]],
                                                                 [[0, 1], [0, 0]]]
    with pytest.raises(DataError, match="2 classes"):
        fit_mask(np.zeros((2, 3, 3)), 1, 3, 3)


def test_default_min_areas():
    areas = default_min_areas(256, 1600)
    assert areas[0] == 0 and len(areas) == 20
    assert areas[1] == 41 and areas[-1] == 20480  # 1e-4 and 5e-2 of 409,600 pixels


def test_tune_thresholds_writes_scores_that_brute_force_confirms(tmp_path, caplog):
    store, truth = make_oof(tmp_path / "e" / "fold0", n=20, seed=11)
    cfg = validate_config({"experiment": {"name": "e", "output_root": str(tmp_path)},
                           "data": {"classes": ["a", "b"]},
                           "postprocess": {"threshold": 0.9, "tune": {"optuna_trials": 8, "max_images": 12,
                                                                      "thresholds": [0.2, 0.4, 0.6],
                                                                      "min_areas": [0, 10, 40]}}})
    with caplog.at_level(logging.INFO, logger="segfold"):
        result = tune_thresholds(cfg, truth_fn=truth.__getitem__)
    lines = [record.getMessage() for record in caplog.records]
    data = json.loads((tmp_path / "e" / "thresholds.json").read_text())
    assert data["metric"] == "dice_pairs" and data["images"] == 20 and data["optuna"]["sampled"]
    before = brute_score(store, truth, PostprocessParams(("a", "b"), (ClassRules(threshold=0.9),) * 2), "dice_pairs")
    assert data["score_before"] == pytest.approx(before.mean(), abs=1e-12)
    tuned = load_thresholds(tmp_path / "e" / "thresholds.json", ["a", "b"])
    assert data["score_after"] == pytest.approx(brute_score(store, truth, tuned, "dice_pairs").mean(), abs=1e-12)
    assert data["score_after"] >= data["score_before"] and tuned == result["params"]
    assert (tmp_path / "e" / "threshold_curves.png").stat().st_size > 1000
    assert any("OOF dice_pairs" in line for line in lines)


@pytest.mark.slow
def test_tune_thresholds_script_on_demo_annotations(tmp_path, monkeypatch, capsys):
    """The script with the real data layer: demo labels at 128x256, OOF stored at 64x128 (nearest resize)."""
    from segfold.config.data import DataConfig
    from segfold.data.demo import make_demo_data
    from segfold.data.formats import read_train

    root = make_demo_data(tmp_path / "demo", n_train=6, n_test=2)
    annotations = read_train(DataConfig(root=str(root)))
    ids = annotations.image_ids
    truth = np.stack([fit_mask(annotations.mask(i), 4, 64, 128) for i in ids]).astype(np.float32)
    noisy = np.clip(0.3 * truth + 0.6 * np.random.default_rng(0).random(truth.shape), 0, 1)
    store = ProbStore.create(tmp_path / "out" / "demo" / "fold0", "oof", ids, ["1", "2", "3", "4"], 64, 128)
    store.write(np.arange(len(ids)), noisy)
    store.finalize()
    config = tmp_path / "c.yaml"
    config.write_text(f"experiment: {{name: demo, output_root: {tmp_path / 'out'}}}\ndata: {{root: {root}}}\n")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "scripts"))
    import tune_thresholds as script

    script.main(["--config", str(config), "--trials", "3", "--set", "postprocess.tune.thresholds=[0.3,0.5,0.7]"])
    out = capsys.readouterr().out
    assert "OOF dice_pairs" in out
    data = json.loads((tmp_path / "out" / "demo" / "thresholds.json").read_text())
    # truth pixels hold 0.3 + U(0, 0.6), the others U(0, 0.6): the tuned score beats the 0.5 default
    assert data["score_after"] >= data["score_before"]


def test_tune_thresholds_refuses_an_empty_oof(tmp_path):
    empty = ProbStore.create(tmp_path, "oof", [], ["a"], 4, 4).finalize()
    with pytest.raises(DataError, match="holds no images"):
        tune_thresholds(validate_config({}), source=StoreView([empty]), truth_fn=lambda image_id: None)


def cross_fold_config(tmp_path, name, cross_fold=True):
    return validate_config({"experiment": {"name": name, "output_root": str(tmp_path)},
                            "data": {"classes": ["a", "b"], "folds": {"n_folds": 2}},
                            "postprocess": {"threshold": 0.9, "tune": {"optuna_trials": 6, "max_images": 12,
                                                                       "thresholds": [0.2, 0.4, 0.6],
                                                                       "min_areas": [0, 10, 40],
                                                                       "cross_fold": cross_fold}}})


def test_cross_fold_scores_each_fold_with_rules_tuned_on_the_other_fold_only(tmp_path):
    parts = [make_oof(tmp_path / "e" / f"fold{k}", n=10, seed=3 + k, start=10 * k) for k in range(2)]
    truth = {**parts[0][1], **parts[1][1]}
    ids = [i for store, _ in parts for i in store.image_ids]
    (tmp_path / "e" / "folds.csv").write_text("ImageId,fold\n" + "".join(f"{i},{int(i[3:]) // 10}\n" for i in ids))
    result = tune_thresholds(cross_fold_config(tmp_path, "e"), truth_fn=truth.__getitem__)
    cross = result["cross_fold"]
    assert [row["fold"] for row in cross["folds"]] == [0, 1] and [row["images"] for row in cross["folds"]] == [10, 10]
    start = PostprocessParams(("a", "b"), (ClassRules(threshold=0.9),) * 2)
    for k, (store, part_truth) in enumerate(parts):
        # the independent route: an experiment that holds only the other fold, tuned by the plain search
        other = 1 - k
        make_oof(tmp_path / f"only{other}" / f"fold{other}", n=10, seed=3 + other, start=10 * other)
        alone = tune_thresholds(cross_fold_config(tmp_path, f"only{other}", cross_fold=False),
                                truth_fn=truth.__getitem__)["params"]
        row = cross["folds"][k]
        assert row["tuned_other_folds"] == pytest.approx(brute_score(store, part_truth, alone, "dice_pairs").mean(),
                                                         abs=1e-12)
        assert row["tuned_all"] == pytest.approx(
            brute_score(store, part_truth, result["params"], "dice_pairs").mean(), abs=1e-12)
        assert row["config"] == pytest.approx(brute_score(store, part_truth, start, "dice_pairs").mean(), abs=1e-12)
    mean = (cross["folds"][0]["tuned_other_folds"] + cross["folds"][1]["tuned_other_folds"]) / 2
    assert cross["score"] == pytest.approx(mean) and cross["optimism"] == pytest.approx(result["score_after"] - mean)
    saved = json.loads((tmp_path / "e" / "thresholds.json").read_text())["cross_fold"]
    assert saved["score"] == pytest.approx(cross["score"])
    assert saved["carries_over"] == (cross["score"] > cross["means"]["config"])


def test_cross_fold_warns_when_the_config_rules_beat_the_tuned_ones_on_unseen_folds(tmp_path, caplog):
    # class a: fold 0 scores its mask 0.6 and the rest 0.1 (t=0.5 perfect, 0.8 erases img0's mask); fold 1 scores
    # its mask 0.9 and the rest 0.6 (t=0.8 perfect, 0.5 floods). By hand: the config's t=0.5 scores fold 0
    # (1 + 1) / 2 and fold 1 (a: img2 2*32/96, img3 0; b: 1) (1/3 + 1) / 2, mean 5/6; fold 1's t=0.8 on fold 0
    # gives a (0 + 1) / 2, mean 0.75; fold 0's t (0.2 or 0.5) on fold 1 gives 2/3: mean 17/24 < 5/6.
    # Class b is empty and predicted empty everywhere (1 at any threshold).
    truth = {f"img{i}": np.zeros((2, 8, 8), np.uint8) for i in range(4)}
    truth["img0"][0, :4] = truth["img2"][0, :4] = 1
    probs = {i: np.zeros((2, 8, 8), np.float32) for i in truth}
    levels = {"img0": (0.6, 0.1), "img1": (0.6, 0.1), "img2": (0.9, 0.6), "img3": (0.9, 0.6)}
    for i, (inside, outside) in levels.items():
        probs[i][0] = np.where(truth[i][0] > 0, inside, outside)
    for k, ids in enumerate((["img0", "img1"], ["img2", "img3"])):
        store = ProbStore.create(tmp_path / "w" / f"fold{k}", "oof", ids, ["a", "b"], 8, 8)
        store.write(np.arange(2), np.stack([probs[i] for i in ids]))
        store.finalize()
    (tmp_path / "w" / "folds.csv").write_text("ImageId,fold\nimg0,0\nimg1,0\nimg2,1\nimg3,1\n")
    cfg = validate_config({"experiment": {"name": "w", "output_root": str(tmp_path)},
                           "data": {"classes": ["a", "b"], "folds": {"n_folds": 2}},
                           "postprocess": {"threshold": 0.5, "tune": {"optuna_trials": 0, "thresholds": [0.2, 0.5, 0.8],
                                                                      "min_areas": [0], "cross_fold": True}}})
    with caplog.at_level(logging.WARNING, logger="segfold"):
        cross = tune_thresholds(cfg, truth_fn=truth.__getitem__)["cross_fold"]
    assert cross["means"]["config"] == pytest.approx(5 / 6) and cross["score"] == pytest.approx(17 / 24)
    assert cross["carries_over"] is False
    assert any("does not carry over" in r.getMessage() and "move thresholds.json aside" in r.getMessage()
               for r in caplog.records)
    tuned = json.loads((tmp_path / "w" / "thresholds.json").read_text())
    assert tuned["score_after"] > tuned["score_before"] and "rejected" not in tuned

    # fallback_to_config: the config's rules are what thresholds.json keeps, the tuned ones recorded as rejected
    kept = tune_thresholds(validate_config({**cfg.model_dump(), "postprocess": {
        **cfg.postprocess.model_dump(), "tune": {**cfg.postprocess.tune.model_dump(), "fallback_to_config": True}}}),
        truth_fn=truth.__getitem__)
    assert kept["params"] == PostprocessParams(("a", "b"), (ClassRules(threshold=0.5),) * 2)
    saved = json.loads((tmp_path / "w" / "thresholds.json").read_text())
    assert saved["score_after"] == saved["score_before"] == pytest.approx(5 / 6)
    assert saved["rejected"]["score_after"] == tuned["score_after"]


def test_fallback_to_config_needs_the_cross_fold_check():
    with pytest.raises(ConfigError, match="fallback_to_config needs the cross-fold check"):
        validate_config({"postprocess": {"tune": {"fallback_to_config": True}}})
    assert validate_config({"postprocess": {"tune": {"fallback_to_config": True, "cross_fold": True}}})


def test_cross_fold_needs_two_folds_and_a_folds_file(tmp_path):
    _, truth = make_oof(tmp_path / "e" / "fold0", n=10, seed=3)
    cfg = cross_fold_config(tmp_path, "e")
    with pytest.raises(DataError, match="folds file not found"):
        tune_thresholds(cfg, truth_fn=truth.__getitem__)
    (tmp_path / "e" / "folds.csv").write_text("ImageId,fold\n" + "".join(f"img{i:03d},{i // 10}\n" for i in range(20)))
    with pytest.raises(DataError, match=r"at least two folds.*fold\(s\) \[0\]"):
        tune_thresholds(cfg, truth_fn=truth.__getitem__)


def test_pick_cell_breaks_ties_towards_the_starting_threshold_then_the_smaller_area():
    thresholds = [0.1, 0.3, 0.5, 0.7]
    table = np.array([[0.80, 0.80], [0.80, 0.80], [0.79, 0.75], [0.60, 0.60]])
    assert histsearch.pick_cell(table, thresholds, anchor=0.5) == (1, 0)  # 0.1 and 0.3 tie: 0.3 is nearer 0.5
    assert histsearch.pick_cell(table, thresholds, anchor=0.5, tolerance=0.01) == (2, 0)  # 0.79 is within 0.01
    assert histsearch.pick_cell(table, thresholds, anchor=0.0, tolerance=0.01) == (0, 0)
    assert histsearch.pick_cell(table, thresholds, anchor=0.7, tolerance=0.5) == (3, 0)


def test_grid_tolerance_is_in_units_of_the_overall_score(tmp_path):
    store, truth = make_oof(tmp_path / "fold0", n=16, seed=5, with_cls=False)
    hist = collect_histograms(StoreView([store]), truth.__getitem__)
    start = PostprocessParams(("a", "b"), (ClassRules(threshold=0.5),) * 2)
    thresholds, areas = [0.1, 0.3, 0.5, 0.7, 0.9], [0, 10]
    plain = grid_search(hist, start, "dice_pairs", thresholds, areas)
    loose = grid_search(hist, start, "dice_pairs", thresholds, areas, tolerance=0.01)
    for c, rule in enumerate(loose.params.rules):
        table = plain.tables[c]  # class c's mean Dice: the overall score moves by a half of it (2 classes)
        tied = [(t, a) for i, t in enumerate(thresholds) for j, a in enumerate(areas)
                if table[i, j] >= table.max() - 0.02 - 1e-12]
        nearest = min(abs(t - 0.5) for t, _ in tied)
        expected = min((a, t) for t, a in tied if abs(abs(t - 0.5) - nearest) < 1e-9)
        assert (rule.min_area, rule.threshold) == expected
    # each class may give up 0.01 of the overall score (0.02 of its own mean): at most 2 x 0.01 in all
    assert loose.score >= plain.score - 0.01 * 2 - 1e-12


def test_tune_thresholds_keeps_the_config_rules_unless_beaten_by_more_than_the_tolerance(tmp_path):
    _, truth = make_oof(tmp_path / "e" / "fold0", n=20, seed=11)

    def tune(tolerance, trials, per_class=None):
        cfg = validate_config({"experiment": {"name": "e", "output_root": str(tmp_path)},
                               "data": {"classes": ["a", "b"]},
                               "postprocess": {"threshold": 0.5, "per_class": per_class or {},
                                               "tune": {"optuna_trials": trials, "thresholds": [0.2, 0.4, 0.6],
                                                        "min_areas": [0, 10, 40], "tolerance": tolerance}}})
        return tune_thresholds(cfg, truth_fn=truth.__getitem__)

    best = tune(0.0, 0)["params"].rules
    # the config: the grid's best rules, class a's threshold moved one grid step
    nudged = 0.4 if best[0].threshold != 0.4 else 0.6
    per_class = {"a": {"threshold": nudged, "min_area": best[0].min_area, "area_mode": "total"},
                 "b": {"threshold": best[1].threshold, "min_area": best[1].min_area, "area_mode": "total"}}
    found = {tolerance: tune(tolerance, 0, per_class) for tolerance in (0.0, 0.1)}
    gain = found[0.0]["score_after"] - found[0.0]["score_before"]
    assert 0 < gain < 0.1  # the search finds better rules, which do not win by 0.1
    kept = found[0.1]
    assert [(r.threshold, r.min_area) for r in kept["params"].rules] == [
        (nudged, best[0].min_area), (best[1].threshold, best[1].min_area)]
    assert kept["score_after"] == kept["score_before"]
