"""Config loading: inheritance, overrides, and the one-line errors a user sees."""

from __future__ import annotations

import pytest
import yaml

from segfold.config import ConfigError, apply_overrides, load_config, read_with_bases, validate_config
from segfold.config.load import UniqueKeySafeLoader, read_yaml


def test_unknown_key_suggests_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  encodr_name: resnet18\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.encodr_name'; did you mean 'model.encoder_name'"):
        load_config(path)


def test_unknown_section_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean 'train'"):
        validate_config({"trian": {}})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"key 'optim.lr' = 'fast'"):
        validate_config({"optim": {"lr": "fast"}})


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("experiment:\n  name: parent\n  seed: 1\noptim:\n  lr: 0.01\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nexperiment:\n  name: child\n")
    merged = read_with_bases(tmp_path / "child.yaml")
    assert merged == {"experiment": {"name": "child", "seed": 1}, "optim": {"lr": 0.01}}
    cfg = load_config(tmp_path / "child.yaml", ["optim.lr=3e-4", "experiment.seed=7"])
    assert cfg.experiment.name == "child"
    assert cfg.experiment.seed == 7
    assert cfg.optim.lr == pytest.approx(3e-4)


def test_inheritance_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        read_with_bases(tmp_path / "a.yaml")


def test_override_values_parse_as_yaml():
    data = apply_overrides({}, ["a.b=null", "a.c=[1, 2]", "a.d=true", "a.e=text"])
    assert data == {"a": {"b": None, "c": [1, 2], "d": True, "e": "text"}}


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])


def test_yaml_is_never_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("experiment: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_duplicate_top_level_section_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("experiment: {name: d}\ntrain: {batch_size: 4}\noptim: {lr: 0.01}\ntrain: {valid_every: 6}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: key 'train' appears twice, at lines 2 and 4; YAML would silently keep only "
                               "the last, so merge the two `train:` blocks into one")


def test_duplicate_nested_key_names_its_path_and_lines(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("model:\n  params:\n    decoder_channels: [64, 32]\n    depth: 3\n"
                    "    decoder_channels: [32, 16]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: key 'model.params.decoder_channels' appears twice, at lines 3 "
                                          r"and 5; .* so keep only the one you mean$"):
        read_with_bases(path)
    path.write_text("stages:\n  - train: {epochs: 1}\n    optim: {lr: 0.1}\n    train: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"key 'stages\[0\].train' appears twice, at lines 2 and 4"):
        read_with_bases(path)


def test_duplicate_key_in_flow_style_and_in_a_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, weight_decay: 0, lr: 0.01}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base.yaml: key 'optim.lr' appears twice, at lines 1 and 1"):
        load_config(tmp_path / "child.yaml")


def test_keys_collide_as_values_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("classes:\n  1: a\n  1.0: b\n")  # one dict key, as in Python
    with pytest.raises(ConfigError, match=r"key 'classes.1.0' appears twice, at lines 2 and 3"):
        read_yaml(path)
    path.write_text("a: {x: 1}\nb: {'x': 1, x: 2}\n")
    with pytest.raises(ConfigError, match=r"key 'b.x' appears twice"):
        read_yaml(path)
    path.write_text("a: &base {x: 1, y: 2}\nb:\n  <<: *base\n  x: 3\nc: [*base, *base]\n")
    assert read_yaml(path) == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}, "c": [{"x": 1, "y": 2}] * 2}
    assert issubclass(UniqueKeySafeLoader, yaml.SafeLoader)


def test_duplicate_key_in_an_override_is_an_error():
    with pytest.raises(ConfigError, match=r"--set 'infer.x=\{a: 1, a: 2\}': key 'a' appears twice"):
        apply_overrides({}, ["infer.x={a: 1, a: 2}"])


def test_every_config_in_configs_loads(repo_root):
    from segfold.search.hparams import check_space

    paths = sorted((repo_root / "configs").rglob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        cfg = load_config(path)
        assert cfg.experiment.name
    check_space(load_config(repo_root / "configs" / "default.yaml"))  # the default search runs as it is
