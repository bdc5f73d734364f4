"""Config machinery: frozen-dataclass fields with help strings, building dataclasses from mappings
with key and type checks, dotted overrides, conversion back to dicts, overrides and commented YAML,
and pinning a config's relative paths.

The project's sections and root `Config` live in `moon_ray/config/`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the offending key."""


def opt(default: Any, help: str, aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field with a default and a help string (mutable defaults become factories).
    `aliases`: other names the key may be given by in YAML or overrides (e.g. `async`, a Python keyword,
    for `asynchronous`)."""
    meta = {"help": help, "aliases": tuple(aliases)}
    if dataclasses.is_dataclass(default) or isinstance(default, (dict, list)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def _resolve_aliases(cls: type, raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    aliases = {a: f.name for f in dataclasses.fields(cls) for a in f.metadata.get("aliases", ())}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = aliases.get(key, key)
        if name in out:
            raise ConfigError(f"config key {prefix + name!r} is given twice (as {prefix + key!r} too)")
        out[name] = value
    return out


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
    raw = _resolve_aliases(cls, raw, prefix)
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


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a config (a dataclass, or a nested dict whose keys may be dotted already) under its
    dotted key: {"serve": {"port": 8001}, "data.limit": 5} -> {"serve.port": 8001, "data.limit": 5}.

    The one walk over a config's leaves: overrides, path rewriting and builder args all start from it."""
    if dataclasses.is_dataclass(tree):
        tree = to_dict(tree)
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            out[prefix + key] = value
    return out


def to_overrides(cfg: Any, prefix: str = "", *, verbatim_strings: bool = False) -> list[str]:
    """Every leaf as 'a.b=value', the inverse of `load_config` overrides: values are YAML-encoded, so they
    parse back to themselves. With `verbatim_strings`, a string goes as it is, i.e. it is read as override
    text ("7" -> 7): for values that were override text already (a Serve config's builder args)."""
    return [f"{key}={_override_text(value, verbatim_strings)}" for key, value in flatten(cfg, prefix).items()]


def _override_text(value: Any, verbatim_strings: bool) -> str:
    if verbatim_strings and isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def absolute_path(path: str | os.PathLike, *, cwd: str | os.PathLike | None = None,
                  search: Sequence[str | os.PathLike] = ()) -> str:
    """`path` made absolute (`~` expanded): a relative path is taken under `cwd` (default: the current
    directory), or under the first directory of `search` that holds it when `cwd` does not; an absolute
    path is returned as given.

    Config paths are relative to where the config is read, but Ray workers, Serve replicas and jobs run
    elsewhere: the process that reads the config pins its paths with this before handing it on."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    base = Path(cwd) if cwd is not None else Path.cwd()
    for where in (base, *map(Path, search)):
        if (where / p).exists():
            return str((where / p).resolve())
    return str((base / p).resolve())


def with_absolute_paths(cfg: Any, keys: Iterable[str], *, cwd: str | os.PathLike | None = None,
                        search: Sequence[str | os.PathLike] = ()) -> Any:
    """A copy of the frozen config `cfg` whose values under the dotted `keys` are `absolute_path`s
    (None and "" stay: an unset path)."""
    for key in keys:
        value = _get_dotted(cfg, key)
        if value not in (None, ""):
            cfg = _replace_dotted(cfg, key, absolute_path(value, cwd=cwd, search=search))
    return cfg


def _get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _replace_dotted(cfg: Any, key: str, value: Any) -> Any:
    head, _, rest = key.partition(".")
    if rest:
        value = _replace_dotted(getattr(cfg, head), rest, value)
    return dataclasses.replace(cfg, **{head: value})


def to_yaml(cfg: Any, header: Sequence[str] = ()) -> str:
    """`cfg` as YAML that loads back to it, every field under its help string as a comment, sections
    apart: the generated pipelines/configs/default.yaml (`moon-ray config --write`). `header` lines open
    the file as comments."""
    lines = [f"# {line}".rstrip() for line in header]
    _yaml_section(cfg, 0, lines)
    return "\n".join(lines) + "\n"


def _yaml_section(obj: Any, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    for f in dataclasses.fields(obj):
        if depth == 0 and out:
            out.append("")  # a blank line before each top-level section
        help_text = f.metadata.get("help", "")
        out.extend(f"{pad}# {line}" for line in textwrap.wrap(help_text, width=max(40, 108 - len(pad)), break_on_hyphens=False))
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:")
            _yaml_section(value, depth + 1, out)
        else:
            plain = to_dict(value)
            flow = None if isinstance(plain, (list, dict)) else False  # [a, b] on one line; scalars plain
            text = yaml.safe_dump({f.name: plain}, default_flow_style=flow, sort_keys=False, width=10_000,
                                  allow_unicode=True)
            out.append(textwrap.indent(text.rstrip("\n"), pad))
