"""Read YAML configs (safe loader, `base:` inheritance), apply `--set` overrides, validate.

A config file may name a parent with `base: other.yaml` (relative to the file); the child's keys are
merged into the parent's recursively (mappings merge, everything else replaces). Overrides are
`dotted.key=value` strings whose values parse as YAML scalars or lists (`train.epochs=3`,
`model.encoder_weights=null`, `infer.scales=[1.0,1.25]`). Nothing in a config is ever executed, and
a mapping that names the same key twice is an error (PyYAML alone keeps the last one without a word).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from segfold.config.base import format_validation_error
from segfold.config.schema import Config
from segfold.errors import ConfigError
from segfold.io import write_text_atomic

BASE_KEY = "base"


def repo_root() -> Path:
    """The folder that holds `configs/`: the working directory if it has one, else the source checkout."""
    cwd = Path.cwd()
    if (cwd / "configs").is_dir():
        return cwd
    return Path(__file__).resolve().parents[3]


def default_config_path() -> Path:
    """`configs/default.yaml`: the demo experiment that every script runs without `--config`."""
    return repo_root() / "configs" / "default.yaml"


class UniqueKeySafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping holding the same key twice, at any depth.

    Keys are compared as the values they construct to (`1` and `1.0` collide, as they would in a dict).
    Merge keys (`<<: *anchor`) are left out: a key written next to a merge overrides the merged one,
    which is what merges are for. `source` names the text in the error.
    """

    source = "<string>"

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique_keys(node, "", set())
        return super().construct_document(node)

    def _check_unique_keys(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias: its node was checked where its anchor is
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_unique_keys(item, f"{path}[{index}]", seen)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # a non-scalar key is refused by the constructor itself (unhashable)
            key = self.construct_object(key_node)
            key_path = f"{path}.{key}" if path else str(key)
            if key in first:
                earlier, earlier_value = first[key]
                blocks = isinstance(value_node, yaml.MappingNode) and isinstance(earlier_value, yaml.MappingNode)
                fix = f"merge the two `{key}:` blocks into one" if blocks else "keep only the one you mean"
                raise ConfigError(f"{self.source}: key '{key_path}' appears twice, at lines "
                                  f"{earlier.start_mark.line + 1} and {key_node.start_mark.line + 1}; YAML would "
                                  f"silently keep only the last, so {fix}")
            first[key] = (key_node, value_node)
            self._check_unique_keys(value_node, key_path, seen)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with `UniqueKeySafeLoader`.

    Raises:
        ConfigError: a mapping names a key twice (the message names `source`, the key and both lines).
        yaml.YAMLError: the text is not valid YAML, or asks for a Python object.
    """
    loader = UniqueKeySafeLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read one YAML mapping with the safe loader; errors (invalid YAML, duplicate keys) name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass --config with a path to a YAML file in configs/)")
    try:
        data = parse_yaml(path.read_text(), str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(parent: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `child` into a copy of `parent`: nested mappings merge, other values replace."""
    merged = copy.deepcopy(dict(parent))
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_with_bases(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and the chain of `base:` files above it, merged parent-first."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"config inheritance loops: {chain}")
    data = read_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a file name or a list of file names, got {base!r}")
    merged: dict[str, Any] = {}
    for name in bases:
        merged = deep_merge(merged, read_with_bases(path.parent / name, (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and its YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. train.epochs=3")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set '{text}': the key must be a dotted path such as model.encoder_name")
    try:
        value = parse_yaml(raw, f"--set '{text}'") if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set '{text}': the value is not a YAML scalar or list; quote it") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `--set` overrides to a raw config mapping (a copy is returned)."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"--set '{text}': '{where}' is a value, not a section, so it has no key '{keys[depth + 1]}'"
                )
            node = child
        node[keys[-1]] = value
    return data


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load, merge, override and validate a config.

    Args:
        path: a YAML file; None means `configs/default.yaml` (the demo experiment).
        overrides: `dotted.key=value` strings, applied in order after the file is read.

    Returns:
        The validated `segfold.config.Config`.

    Raises:
        ConfigError: one-line message naming the file, key and the accepted values.
    """

    path = Path(path) if path is not None else default_config_path()
    data = apply_overrides(read_with_bases(path), overrides)
    return validate_config(data, source=str(path))


def validate_config(data: Mapping[str, Any], source: str = "config", base_dir: str | os.PathLike | None = None
                    ) -> Config:
    """Validate a raw mapping against the schema, with the one-line error format.

    Relative paths in the config (`data.root`) are resolved here, once: from `base_dir`, by default
    the repository folder (`repo_root()`).
    """
    try:
        cfg = Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Config, source)) from None
    cfg.data.resolve_paths(base_dir if base_dir is not None else repo_root())
    stage_configs(cfg, source)  # every stage must make a valid config too
    return cfg


def stage_configs(config: Config, source: str = "config") -> list[Config]:
    """The configs of the stages of a staged run (`stages:`), or `[config]` without stages.

    Each stage is the experiment config with that stage's overrides merged in (mappings merge, lists
    and values replace); a stage does not inherit the previous stage's overrides. Every stage but
    the last has `train.write_oof` off: the fold's OOF comes from the final stage.

    Raises:
        ConfigError: a stage whose merged config is invalid (named `stages[i]`).
    """
    if not config.stages:
        return [config]
    base = config_to_dict(config)
    base["stages"] = []
    configs = []
    for index, stage in enumerate(config.stages):
        merged = deep_merge(base, stage)
        if index < len(config.stages) - 1:
            merged = deep_merge(merged, {"train": {"write_oof": False}})
        try:
            stage = Config.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, Config, f"{source} stages[{index}]")) from None
        if config.data._base_dir is not None:  # a relative data.root starts where the experiment's does
            stage.data.resolve_paths(config.data._base_dir)
        configs.append(stage)
    return configs


def config_to_dict(config: Config) -> dict[str, Any]:
    """A plain, YAML/JSON-safe mapping of a validated config (round-trips through `validate_config`)."""
    return config.model_dump(mode="json")


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
