"""Config loading: inheritance, overrides, and the one-line errors a user sees."""

from __future__ import annotations

import pytest

from segfold.config import ConfigError, apply_overrides, load_config, read_with_bases, validate_config


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


def test_every_config_in_configs_loads(repo_root):
    from segfold.search.hparams import check_space

    paths = sorted((repo_root / "configs").rglob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        cfg = load_config(path)
        assert cfg.experiment.name
    check_space(load_config(repo_root / "configs" / "default.yaml"))  # the default search runs as it is
