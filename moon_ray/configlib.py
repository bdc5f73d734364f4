"""Config machinery: frozen-dataclass fields with help strings, building dataclasses from mappings
with key and type checks, dotted overrides, and conversion back to dicts/overrides.

The project's sections and root `Config` live in `moon_ray/config.py`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the offending key."""


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help string (mutable defaults become factories)."""
    if dataclasses.is_dataclass(default) or isinstance(default, (dict, list)):
        return field(default_factory=lambda: default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def parse_override(item: str) -> tuple[str, Any]:
    """'data.limit=500' -> ('data.limit', 500); the value is parsed as YAML ('null', '[1, 2]')."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Construct dataclass `cls` from a (partial) mapping, checking keys and types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r} (valid keys under {where}: {', '.join(names)})"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        kwargs[f.name] = _coerce(hints[f.name], raw[f.name], prefix + f.name, f)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def _coerce(tp: Any, value: Any, key: str, f: dataclasses.Field | None = None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return build(tp, value if value is not None else {}, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists), loadable again with `build`."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def to_overrides(cfg: Any, prefix: str = "") -> list[str]:
    """Every leaf as 'a.b=value' (YAML-encoded), the inverse of `load_config` overrides."""
    out = []
    for key, value in to_dict(cfg).items():
        out.extend(_leaves(prefix + key, value))
    return out


def _leaves(key: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _leaves(f"{key}.{k}", v)]
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("..."):
        text = text[: -3].strip()
    return [f"{key}={text}"]
