"""Blending: hand-computed blends, alignment and its errors, weight search on cases whose answer is known,
and run_blend / scripts/blend.py end to end."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from segfold.blend import align, blend_probs, run_blend, search_weights
from segfold.config import load_config, validate_config
from segfold.errors import DataError
from segfold.postprocess.rules import ClassRules, PostprocessParams
from segfold.probs import StoreView
from segfold.probs.store import ProbStore, to_uint8

THRESHOLDS = [round(0.02 * i, 2) for i in range(10, 41)]  # 0.20 ... 0.80


def write_store(folder, name, ids, probs, classes=("a",), cls=None):
    store = ProbStore.create(folder, name, ids, list(classes), probs.shape[-2], probs.shape[-1])
    store.write(np.arange(len(ids)), probs)
    if cls is not None:
        store.write_cls(np.arange(len(ids)), cls)
    return store.finalize()


def test_blend_probs_by_hand():
    a = np.array([0, 255, 51], dtype=np.uint8)  # 0, 1, 0.2
    b = np.array([255, 255, 204], dtype=np.uint8)  # 1, 1, 0.8
    np.testing.assert_allclose(blend_probs([a, b], [9, 1], "mean"), [0.5, 1.0, 0.5], atol=1e-6)  # weights ignored
    np.testing.assert_allclose(blend_probs([a, b], [3, 1], "weighted"), [0.25, 1.0, 0.35], atol=1e-6)
    # geometric: sqrt(0.2 * 0.8) = 0.4; a 0 is floored at 0.5/255: sqrt(0.5/255 * 1) = 0.04428
    np.testing.assert_allclose(blend_probs([a, b], [1, 1], "geometric"), [np.sqrt(0.5 / 255), 1.0, 0.4], atol=1e-6)
    # weighted geometric 0.75 / 0.25: 0.2 ** 0.75 * 0.8 ** 0.25 = 0.28284
    assert blend_probs([a[2:], b[2:]], [3, 1], "geometric")[0] == pytest.approx(0.2 ** 0.75 * 0.8 ** 0.25, abs=1e-6)
    with pytest.raises(ValueError, match="unknown blend method"):
        blend_probs([a, b], [1, 1], "median")
    with pytest.raises(ValueError, match="non-negative"):
        blend_probs([a, b], [1, -1], "weighted")


def test_align_reorders_and_rejects_mismatches(tmp_path):
    probs = np.random.default_rng(0).random((3, 1, 4, 4))
    first = StoreView([write_store(tmp_path / "m1", "oof", ["x", "y", "z"], probs)])
    second = StoreView([write_store(tmp_path / "m2", "oof", ["z", "x", "y"], probs[[2, 0, 1]])])
    rows = align({"m1": first, "m2": second})
    assert rows[0].tolist() == [0, 1, 2] and rows[1].tolist() == [1, 2, 0]  # x is row 1 of m2, y row 2, z row 0
    missing = StoreView([write_store(tmp_path / "m3", "oof", ["x", "y", "w"], probs)])
    with pytest.raises(DataError, match=r"member 'm3' .* lacks 1 images of 'm1' \(e.g. z\) and has 1 images 'm1' "
                                        r"lacks \(e.g. w\)"):
        align({"m1": first, "m3": missing})
    other_classes = StoreView([write_store(tmp_path / "m4", "oof", ["x", "y", "z"], probs, classes=("b",))])
    with pytest.raises(DataError, match=r"member 'm4' .*classes \['b'\] differ from 'm1': \['a'\]"):
        align({"m1": first, "m4": other_classes})
    smaller = StoreView([write_store(tmp_path / "m5", "oof", ["x", "y", "z"], probs[..., :2, :])])
    with pytest.raises(DataError, match=r"member 'm5'.*masks of \(2, 4\)"):
        align({"m1": first, "m5": smaller})


def _search(tmp_path, p1, p2, truth, trials=25):
    ids = [f"i{k}" for k in range(len(truth))]
    members = [StoreView([write_store(tmp_path / "m1", "oof", ids, p1)]),
               StoreView([write_store(tmp_path / "m2", "oof", ids, p2)])]
    rows = align({"m1": members[0], "m2": members[1]})
    params = PostprocessParams(("a",), (ClassRules(),))
    truth_of = dict(zip(ids, truth, strict=True)).__getitem__
    return search_weights(members, rows, truth_of, params, "dice_pairs", 1.0, THRESHOLDS, [0], "weighted",
                          trials=trials, seed=0, max_images=1000)


def test_weight_search_finds_the_weighted_average(tmp_path):
    rng = np.random.default_rng(1)
    p1, p2 = rng.random((2, 24, 1, 16, 16))
    truth = 0.7 * p1 + 0.3 * p2 > 0.5  # the truth is a weighted average of the two members, thresholded
    weights, score, study = _search(tmp_path, p1, p2, truth, trials=30)
    assert weights.sum() == pytest.approx(1.0)
    assert abs(weights[0] - 0.7) < 0.06  # 0.7 / 0.3 is the only blend that reproduces the truth
    assert score > 0.97 and score > study.trials[0].value + 0.05  # well above the equal-weight first trial


def test_weight_search_drops_a_noise_member(tmp_path):
    rng = np.random.default_rng(2)
    truth = rng.random((24, 1, 16, 16)) < 0.3
    informative = 0.4 + 0.2 * truth + 0.02 * rng.random(truth.shape)  # separable at any threshold in (0.42, 0.6)
    noise = rng.random(truth.shape)
    weights, score, _ = _search(tmp_path, noise, informative, truth)
    # only blends with noise weight below about 0.15 still separate the classes: (0.6 - 0.42) / (1 + 0.2)
    assert weights[0] < 0.15 and score == pytest.approx(1.0)


def make_member(root, name, ids, probs, with_test=True):
    write_store(root / name / "fold0", "oof", ids, probs, classes=("a", "b"),
                cls=np.full((len(ids), 2), 0.5, dtype=np.float32))
    if with_test:
        write_store(root / name / "test", "test", ["t0", "t1"], probs[:2], classes=("a", "b"))
    return validate_config({"experiment": {"name": name, "output_root": str(root)}, "data": {"classes": ["a", "b"]},
                            "postprocess": {"tune": {"optuna_trials": 3, "thresholds": [0.3, 0.5, 0.7],
                                                     "min_areas": [0, 10]}}})


def test_run_blend_writes_stores_config_and_thresholds(tmp_path, caplog):
    rng = np.random.default_rng(3)
    ids = [f"i{k}" for k in range(10)]
    p1, p2 = rng.random((2, 10, 2, 8, 8)).astype(np.float32)
    truth = {i: t for i, t in zip(ids, (p1 + p2) / 2 > 0.5, strict=True)}
    c1 = make_member(tmp_path, "one", ids, p1)
    c2 = make_member(tmp_path, "two", ids[::-1], p2[::-1])  # same images, another order
    with caplog.at_level(logging.INFO, logger="segfold"):
        result = run_blend([c1, c2], "both", method="weighted", trials=4, truth_fn=truth.__getitem__)
    lines = [line for record in caplog.records for line in record.getMessage().splitlines()]
    w = result["weights"]
    out = tmp_path / "both"
    oof = ProbStore.open(out / "oof", "oof")
    assert oof.image_ids == ids
    # an independent route: quantise both members, blend by hand in float32, quantise again
    u1, u2 = to_uint8(p1).astype(np.float32) / 255, to_uint8(p2).astype(np.float32) / 255
    expected = to_uint8(np.float32(w[0]) * u1 + np.float32(w[1]) * u2)
    assert np.abs(oof.probs.astype(int) - expected.astype(int)).max() <= 1  # float32 rounding at .5
    np.testing.assert_allclose(oof.cls, 0.5, atol=1e-6)
    test = ProbStore.open(out / "test", "test")
    assert test.image_ids == ["t0", "t1"] and test.shape == (2, 2, 8, 8)
    cfg = load_config(out / "config.yaml")
    assert cfg.experiment.name == "both" and cfg.experiment.output_root == str(tmp_path)
    blend = json.loads((out / "blend.json").read_text())
    assert blend["weights"] == {"one": pytest.approx(w[0]), "two": pytest.approx(w[1])} and blend["test"]
    assert [row["name"] for row in result["table"]] == ["one", "two", "both"]
    assert (out / "thresholds.json").is_file() and result["tuning"]["score_after"] >= result["table"][2]["config_rules"]
    assert any(line.startswith("member") for line in lines)


def test_run_blend_rejects_partial_test_stores_and_bad_names(tmp_path):
    ids = ["i0", "i1", "i2"]
    probs = np.random.default_rng(4).random((3, 2, 4, 4)).astype(np.float32)
    truth = {i: np.zeros((2, 4, 4), bool) for i in ids}
    c1 = make_member(tmp_path, "one", ids, probs)
    c2 = make_member(tmp_path, "two", ids, probs, with_test=False)
    with pytest.raises(DataError, match=r"test probabilities missing for 'two'"):
        run_blend([c1, c2], "both", method="mean", truth_fn=truth.__getitem__)
    with pytest.raises(DataError, match="is one of its members"):
        run_blend([c1, c2], "one", method="mean", truth_fn=truth.__getitem__)
    with pytest.raises(DataError, match="2 weights for 3 members"):
        c3 = make_member(tmp_path, "three", ids, probs)
        make_member(tmp_path, "two", ids, probs)
        run_blend([c1, c2, c3], "all", weights=[1, 2], truth_fn=truth.__getitem__)


@pytest.mark.slow
def test_blend_script_on_demo_annotations(tmp_path, capsys):
    from segfold.config.data import DataConfig
    from segfold.data.demo import make_demo_data
    from segfold.data.formats import read_train

    root = make_demo_data(tmp_path / "demo", n_train=5, n_test=2)
    ids = read_train(DataConfig(root=str(root))).image_ids
    rng = np.random.default_rng(5)
    configs = []
    for name in ("m1", "m2"):
        write_store(tmp_path / "out" / name / "oof", "oof", ids, rng.random((len(ids), 4, 32, 64)),
                    classes=("1", "2", "3", "4"))
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"experiment: {{name: {name}, output_root: {tmp_path / 'out'}}}\ndata: {{root: {root}}}\n")
        configs.append(str(path))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import blend as script

    script.main(["--configs", *configs, "--out", "mix", "--method", "geometric", "--no-tune"])
    out = capsys.readouterr().out
    assert "mix" in out and "weights: m1=0.500, m2=0.500 (geometric)" in out
    assert (tmp_path / "out" / "mix" / "oof" / "oof.json").is_file()
    assert load_config(tmp_path / "out" / "mix" / "config.yaml").experiment.name == "mix"
