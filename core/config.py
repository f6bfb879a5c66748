"""Configs are data: YAML files with a comment above every key, merged strictly.

A run config names its defaults with `_base_: <path relative to itself>` and overrides only what
differs. Command-line overrides are `dotted.key=value` with the value parsed as YAML (safe_load:
never evaluated as code). Any key that the defaults do not define is an error, and so is a value
whose type differs from the default's (ints are accepted where floats are expected; a default of
null accepts anything).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from core.cli import UserError


class ConfigError(UserError):
    """A config file or override that cannot be used; the message says why and how to fix it."""


class Config(dict):
    """A nested dict with attribute access (`cfg.optim.lr`), so code reads like the YAML."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(dict(self), memo))

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Config({k: _wrap(v) for k, v in value.items()})
    return value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:  # PyYAML's own text spans lines (a quoted context): keep one line
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _compatible(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float) and isinstance(value, int):
        return True
    return isinstance(value, type(default))


def merge_strict(base: dict, overlay: dict, where: str = "") -> dict:
    """Return `base` updated by `overlay`; every overlay key must exist in base, with a compatible type."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        path = f"{where}{key}"
        if key not in out:
            known = ", ".join(sorted(out)) or "(none)"
            raise ConfigError(f"unknown config key '{path}'. Known keys here: {known}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' is a section; give its sub-keys, e.g. {path}.<key>=...")
            out[key] = merge_strict(out[key], value, path + ".")
        elif not _compatible(out[key], value):
            raise ConfigError(
                f"config key '{path}' expects {type(out[key]).__name__} (default {out[key]!r}), got {value!r}"
            )
        else:
            out[key] = float(value) if isinstance(out[key], float) and isinstance(value, int) else value
    return out


def parse_overrides(items: Iterable[str]) -> dict:
    """['optim.lr=0.1', 'data.root=/x'] -> {'optim': {'lr': 0.1}, 'data': {'root': '/x'}}."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.constructor.ConstructorError as e:  # a tag such as !!python/object/apply: refused, not run
            raise ConfigError(f"override {item!r} uses a YAML tag that safe loading refuses ({e.problem}); "
                              "give a plain value") from None
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def load_yaml_with_bases(path: str | Path) -> dict:
    """Read a config file, resolving its `_base_` chain (the base holds every key)."""
    path = Path(path)
    data = _read_yaml(path)
    base_name = data.pop("_base_", None)
    if base_name is None:
        return data
    base = load_yaml_with_bases(path.parent / base_name)
    try:
        return merge_strict(base, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    cfg = load_yaml_with_bases(path)
    cfg = merge_strict(cfg, parse_overrides(overrides))
    return _wrap(cfg)


def dump_config(cfg: dict, path: str | Path) -> None:
    plain = cfg.to_dict() if isinstance(cfg, Config) else cfg
    Path(path).write_text(yaml.safe_dump(plain, sort_keys=False))
