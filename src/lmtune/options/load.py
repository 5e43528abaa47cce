"""Flat, readable recipe configs: a YAML file, then ``--config key=value`` on top.

A config is a dataclass whose fields are the keys users write. Nested dataclasses
are sections reached with dotted keys (``optimizer.weight_decay=0.1``). Every
value is checked against the field's type; an unknown key gets the closest
known one suggested.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from lmtune.errors import UserError, did_you_mean
from lmtune.files import deep_merge
from lmtune.options.training import key_fields

T = TypeVar("T")


# The verb whose --help lists each options class's keys (`lmtune sweep` takes instruction_finetune's).
KEYS_HELP = {"FinetuneOptions": "instruction_finetune", "PretrainOptions": "pretrain", "GenerateOptions": "generate"}


def load_config(kls: type[T], config_file: Path | None, overrides: list[str]) -> T:
    verb = KEYS_HELP.get(kls.__name__)
    keys_help = f"lmtune {verb} --help" if verb else "--help"
    values: dict[str, Any] = {}
    if config_file is not None:
        values = _read_yaml(config_file)
        _check_keys(values, kls, "", str(config_file), keys_help)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--config {item!r} is not of the form key=value.")
        nested = _dotted(key.strip(), parse_scalar(raw))
        _check_keys(nested, kls, "", "--config", keys_help)
        values = deep_merge(values, nested)
    return build(kls, values, "", "config")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise UserError(f"--config-file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as ex:
        line = f":{ex.problem_mark.line + 1}" if ex.problem_mark else ""
        raise UserError(f"{path}{line}: YAML syntax error: {ex.problem}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of keys to values.")
    # Dotted keys in a file mean the same as nested mappings.
    out: dict[str, Any] = {}
    for k, v in data.items():
        out = deep_merge(out, _dotted(str(k), v))
    return out


def parse_scalar(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def _dotted(key: str, value: Any) -> dict[str, Any]:
    parts = key.split(".")
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def _check_keys(values: dict[str, Any], kls: type, prefix: str, source: str, keys_help: str) -> None:
    hints = get_type_hints(kls)
    for key, value in values.items():
        if key not in hints:
            raise UserError(f"{source}: unknown config key '{prefix}{key}'; {did_you_mean(prefix + key, [prefix + h for h in hints], see=keys_help)}")
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{prefix}{key}' is a section; set its keys, e.g. {prefix}{key}.{next(iter(get_type_hints(tp)))}=...")
            _check_keys(value, tp, f"{prefix}{key}.", source, keys_help)


def build(kls: type[T], values: dict[str, Any], prefix: str, source: str) -> T:
    hints = get_type_hints(kls)
    kwargs = {}
    for f in dataclasses.fields(kls):  # type: ignore[arg-type]
        if f.name not in values:
            continue
        tp = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, values[f.name], key + ".", source)  # type: ignore[arg-type]
        else:
            kwargs[f.name] = coerce(values[f.name], tp, key)
    return kls(**kwargs)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
    if origin is tuple:
        return "a list of " + ", ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return "a list"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except UserError:
                continue
        raise _bad(key, value, tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _bad(key, value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(key, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad(key, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(key, value, tp)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(key, value, tp)
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value).expanduser()
        raise _bad(key, value, tp)
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(coerce(v, a, key) for v, a in zip(value, args))
        raise _bad(key, value, tp)
    if origin is list:
        (a,) = get_args(tp)
        if isinstance(value, list):
            return [coerce(v, a, key) for v in value]
        raise _bad(key, value, tp)
    return value


def _bad(key: str, value: Any, tp: Any) -> UserError:
    return UserError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in key_fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def dump_yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)
