"""Post-processing rules on hand-made masks, per-class config overrides, and thresholds.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segfold.config import ConfigError, validate_config
from segfold.config.infer import PostprocessConfig
from segfold.errors import DataError
from segfold.postprocess.rules import (
    ClassRules,
    PostprocessParams,
    apply_postprocess,
    apply_postprocess_batch,
    load_thresholds,
    postprocess_for,
    remove_small_components,
    save_thresholds,
    u8_cutoff,
)


def params(*rules: ClassRules, at_least_one: bool = False, one_class_per_pixel: bool = False) -> PostprocessParams:
    return PostprocessParams(tuple(str(i) for i in range(len(rules))), rules, at_least_one, one_class_per_pixel)


def test_threshold_is_strict_on_floats_and_uint8():
    probs = np.array([[[0.2, 0.5, 0.51], [0.9, 0.0, 0.49]]])
    expected = np.array([[[0, 0, 1], [1, 0, 0]]], dtype=np.uint8)  # p > 0.5: only 0.51 and 0.9
    assert apply_postprocess(probs, params(ClassRules(threshold=0.5))).tolist() == expected.tolist()
    # uint8: u > floor(0.5 * 255) = 127, so 128 (0.502) is positive and 127 (0.498) is not
    u8 = np.array([[[51, 127, 128], [230, 0, 125]]], dtype=np.uint8)
    out = apply_postprocess(u8, params(ClassRules(threshold=0.5)))
    assert out.dtype == np.uint8 and out.tolist() == expected.tolist()
    # t = 51/255 = 0.2 exactly: u = 51 is not above it, u = 52 is
    assert u8_cutoff(51 / 255) == 51 and u8_cutoff(0.2) == 51 and u8_cutoff(0.0) == 0 and u8_cutoff(1.0) == 255


def test_total_min_area_empties_small_masks():
    probs = np.zeros((1, 4, 4))
    probs[0, 0, :3] = 0.9  # 3 pixels
    assert apply_postprocess(probs, params(ClassRules(min_area=4))).sum() == 0  # 3 < 4
    assert apply_postprocess(probs, params(ClassRules(min_area=3))).sum() == 3  # 3 >= 3


def test_component_min_area_removes_small_components_8_connected():
    mask = np.array([[1, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0],
                     [0, 0, 1, 1, 0],
                     [0, 0, 0, 1, 0],
                     [0, 0, 0, 0, 1]], dtype=np.uint8)
    # components (8-connected): {(0,0)} of 1 pixel, {(2,2),(2,3),(3,3),(4,4)} of 4 (the corner touches diagonally)
    big = mask.copy()
    big[0, 0] = 0
    assert remove_small_components(mask, 2).tolist() == big.tolist()
    assert remove_small_components(mask, 4).tolist() == big.tolist()
    assert remove_small_components(mask, 5).sum() == 0
    probs = mask[None].astype(np.float32) * 0.8
    assert apply_postprocess(probs, params(ClassRules(min_area=2, area_mode="component")))[0].tolist() == big.tolist()
    # counted over the whole mask, 5 pixels >= 5 keep everything
    assert apply_postprocess(probs, params(ClassRules(min_area=5)))[0].tolist() == mask.tolist()


def test_triplet_rule():
    probs = np.array([[[0.9, 0.4, 0.35, 0.1]]])
    rule = ClassRules(threshold=0.3, top=0.8, min_count=2)
    assert apply_postprocess(probs, params(rule)).sum() == 0  # only 0.9 exceeds top: 1 < 2
    probs[0, 0, 3] = 0.85  # now 0.9 and 0.85 exceed 0.8 -> binarise at 0.3: 0.9, 0.4, 0.35, 0.85
    assert apply_postprocess(probs, params(rule)).tolist() == [[[1, 1, 1, 1]]]
    probs[0, 0, 2] = 0.3  # 0.3 is not above the bottom 0.3
    assert apply_postprocess(probs, params(rule)).tolist() == [[[1, 1, 0, 1]]]


def test_classifier_gate():
    probs = np.full((2, 2, 2), 0.9)
    rules = params(ClassRules(cls_threshold=0.5), ClassRules(cls_threshold=0.5))
    out = apply_postprocess(probs, rules, cls_probs=np.array([0.2, 0.7]))
    assert out[0].sum() == 0 and out[1].sum() == 4  # 0.2 <= 0.5 empties class 0; 0.7 > 0.5 keeps class 1
    with pytest.raises(ValueError, match="no class probabilities"):
        apply_postprocess(probs, rules)


def test_at_least_one_forces_the_best_class():
    # class 1 has 2 pixels above 0.5 but min_area 3 empties it; class 0 has nothing above 0.5
    probs = np.array([[[0.1, 0.3], [0.2, 0.0]],
                      [[0.6, 0.7], [0.1, 0.0]]])
    rules = (ClassRules(min_area=3), ClassRules(min_area=3))
    assert apply_postprocess(probs, params(*rules)).sum() == 0
    out = apply_postprocess(probs, params(*rules, at_least_one=True))
    # best class by highest pixel: class 1 (0.7); its mask at threshold 0.5 without the area rule
    assert out.tolist() == [[[0, 0], [0, 0]], [[1, 1], [0, 0]]]
    # with classifier probabilities the best class is the most probable one: class 0, nothing above 0.5,
    # so its pixels at its highest probability (0.3) are kept
    out = apply_postprocess(probs, params(*rules, at_least_one=True), cls_probs=np.array([0.6, 0.4]))
    assert out.tolist() == [[[0, 1], [0, 0]], [[0, 0], [0, 0]]]


def test_one_class_per_pixel_keeps_the_argmax():
    probs = np.array([[[0.9, 0.6, 0.7]],
                      [[0.8, 0.7, 0.7]]])
    both = apply_postprocess(probs, params(ClassRules(), ClassRules()))
    assert both.tolist() == [[[1, 1, 1]], [[1, 1, 1]]]
    one = apply_postprocess(probs, params(ClassRules(), ClassRules(), one_class_per_pixel=True))
    # pixel 0: class 0 wins (0.9), pixel 1: class 1 (0.7), pixel 2: a tie goes to class 0
    assert one.tolist() == [[[1, 0, 1]], [[0, 1, 0]]]


def test_batch_and_config_input():
    probs = np.random.default_rng(0).random((3, 2, 4, 4))
    cfg = PostprocessConfig(threshold=0.7)
    out = apply_postprocess_batch(probs, cfg)
    assert out.shape == (3, 2, 4, 4) and out.tolist() == (probs > 0.7).astype(np.uint8).tolist()
    with pytest.raises(ValueError, match="class names"):
        apply_postprocess(probs[0], PostprocessConfig(per_class={"0": {"threshold": 0.2}}))
    with pytest.raises(ValueError, match="1 classes"):
        apply_postprocess(probs[0], params(ClassRules()))


def test_per_class_overrides_and_unknown_class():
    cfg = validate_config({"postprocess": {"threshold": 0.4, "min_area": 10,
                                           "per_class": {"Fish": {"threshold": 0.6}, 3: {"area_mode": "component"}}}})
    resolved = PostprocessParams.from_config(cfg.postprocess, ["Fish", "Sugar", "3"])
    assert resolved.rules[0] == ClassRules(threshold=0.6, min_area=10)
    assert resolved.rules[1] == ClassRules(threshold=0.4, min_area=10)
    assert resolved.rules[2] == ClassRules(threshold=0.4, min_area=10, area_mode="component")
    with pytest.raises(ConfigError, match=r"unknown class 'Fsh'.*did you mean 'Fish'"):
        PostprocessParams.from_config(PostprocessConfig(per_class={"Fsh": {"threshold": 0.3}}), ["Fish", "Sugar"])
    with pytest.raises(ConfigError, match=r"unknown key 'postprocess.per_class.Fish.treshold'"):
        validate_config({"postprocess": {"per_class": {"Fish": {"treshold": 0.3}}}})
    with pytest.raises(ConfigError, match=r"postprocess.threshold"):
        validate_config({"postprocess": {"threshold": 1.5}})


def test_thresholds_json_round_trip(tmp_path):
    tuned = PostprocessParams(("a", "b"), (ClassRules(threshold=0.35, min_area=120),
                                           ClassRules(threshold=0.6, top=0.8, min_count=20, cls_threshold=0.3,
                                                      area_mode="component", min_area=7)), at_least_one=True)
    path = save_thresholds(tmp_path / "thresholds.json", tuned, score_before=0.8, score_after=0.85)
    assert [p.name for p in tmp_path.iterdir()] == ["thresholds.json"]  # no temporary file left
    data = json.loads(path.read_text())
    assert data["classes"] == ["a", "b"] and data["score_after"] == 0.85
    assert data["postprocess"]["per_class"]["b"]["top"] == 0.8
    loaded = load_thresholds(path, ["a", "b"])
    assert loaded == tuned and loaded.extra["score_before"] == 0.8
    with pytest.raises(ConfigError, match=r"tuned for classes \['a', 'b'\]"):
        load_thresholds(path, ["a", "c"])
    (tmp_path / "bad.json").write_text('{"classes": ["a"]}')
    with pytest.raises(DataError, match="bad.json: not a thresholds file"):
        load_thresholds(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"classes": ["a"], "postprocess": {"treshold": 0.2}}')
    with pytest.raises(ConfigError, match=r"bad2.json: unknown key 'treshold'"):
        load_thresholds(tmp_path / "bad2.json")
    with pytest.raises(DataError, match="run scripts/tune_thresholds.py"):
        load_thresholds(tmp_path / "missing.json")


def test_postprocess_for_prefers_thresholds_json(tmp_path):
    cfg = validate_config({"experiment": {"name": "e", "output_root": str(tmp_path)},
                           "postprocess": {"threshold": 0.3}})
    params_cfg, source = postprocess_for(cfg, ["x"])
    assert source == "config" and params_cfg.rules[0].threshold == 0.3
    save_thresholds(tmp_path / "e" / "thresholds.json", PostprocessParams(("x",), (ClassRules(threshold=0.7),)))
    params_file, source = postprocess_for(cfg, ["x"])
    assert source.endswith("thresholds.json") and params_file.rules[0].threshold == 0.7
