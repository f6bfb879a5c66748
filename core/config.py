"""Configs are data: YAML files with a comment above every key, merged strictly.

A run config names its defaults with `_base_: <path relative to itself>` and overrides only what
differs. Command-line overrides are `dotted.key=value` with the value parsed as YAML (safe_load:
never evaluated as code). Any key that the defaults do not define is an error, and so is a value
whose type differs from the default's (ints are accepted where floats are expected; a default of
null accepts anything). Values are then range-checked by the rules the stage declares beside its
loader (`Rule`s per dotted key, passed to load_config), so a bad value is refused when the config is
loaded, naming the key, instead of failing deep inside a run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import yaml

from core.errors import UserError
from core.files import write_yaml


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


@dataclass(frozen=True)
class Rule:
    """What the value of one config key must be: `ok(value)` is true for a usable value, `want` says
    which values are (it ends the error message, so it reads as the fix)."""

    want: str
    ok: Callable[[Any], bool]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def one_of(*choices: Any) -> Rule:
    return Rule(f"one of {', '.join(map(str, choices))}", lambda v: v in choices)


def int_at_least(low: int) -> Rule:
    return Rule(f"an integer >= {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low)


def positive() -> Rule:
    return Rule("a number > 0", lambda v: _number(v) and v > 0)


def at_least(low: float) -> Rule:
    return Rule(f"a number >= {low:g}", lambda v: _number(v) and v >= low)


def in_range(low: float, high: float, low_open: bool = True, high_open: bool = True) -> Rule:
    """A number between low and high; an open end excludes the bound itself."""
    text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(text, lambda v: _number(v) and (low < v if low_open else low <= v) and (v < high if high_open else v <= high))


def _cuda_visible(value: Any) -> bool:
    if value != "cuda":
        return True
    import torch  # only when a GPU is asked for, so loading a config stays light otherwise

    return torch.cuda.is_available()


# device=cuda on a machine without a GPU: refused when the config is loaded, not at the first tensor.
CUDA_VISIBLE = Rule("auto or cpu: no GPU is visible here (torch.cuda.is_available() is false)", _cuda_visible)
DEVICE = (one_of("auto", "cpu", "cuda"), CUDA_VISIBLE)


def _dotted_value(cfg: Mapping, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


Rules = Mapping[str, "Rule | tuple[Rule, ...]"]


def validate(cfg: Mapping, rules: Rules) -> None:
    """Raise ConfigError naming the first key whose value breaks one of its rules (checked in order)."""
    for key, checks in rules.items():
        value = _dotted_value(cfg, key)
        for rule in checks if isinstance(checks, tuple) else (checks,):
            if not rule.ok(value):
                raise ConfigError(f"config key '{key}' is {value!r}, which cannot be used; set {key} to {rule.want}")


def load_config(path: str | Path, overrides: Iterable[str] = (), rules: Rules | None = None) -> Config:
    """The config at `path` with `overrides` applied, checked against `rules` when given."""
    cfg = load_yaml_with_bases(path)
    cfg = merge_strict(cfg, parse_overrides(overrides))
    if rules:
        validate(cfg, rules)
    return _wrap(cfg)


def dump_config(cfg: dict, path: str | Path) -> None:
    write_yaml(path, cfg.to_dict() if isinstance(cfg, Config) else cfg)
