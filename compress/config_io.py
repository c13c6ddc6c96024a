"""Versioned dict round trips for the frozen config dataclasses (PruneConfig, DistillConfig, QATPlan,
GGUFConfig, ...): `to_dict` adds the class's VERSION; `from_dict` checks the version, the field names
and the value types, each failure a one-line SlimkitError naming the field, before the class's own
__post_init__ checks the values. Lists become tuples where a field is a tuple (YAML and JSON have
no tuples), so `cls.from_dict(cfg.to_dict()) == cfg`."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from compress.errors import SlimkitError

_SCALARS = (bool, int, float, str)


def to_dict(cfg: Any) -> dict[str, Any]:
    """{"version": VERSION, field: value, ...}; nested configs as their own dicts, tuples as lists."""
    out: dict[str, Any] = {"version": type(cfg).VERSION}
    for f in dataclasses.fields(cfg):
        out[f.name] = _plain(getattr(cfg, f.name))
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict") and dataclasses.is_dataclass(value):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """The config `d` describes; missing fields take their defaults."""
    name = cls.__name__
    if not isinstance(d, Mapping):
        raise SlimkitError(f"{name}: expected a mapping of options, got {type(d).__name__}")
    d = dict(d)
    version = d.pop("version", cls.VERSION)
    if version != cls.VERSION:
        raise SlimkitError(f"{name} version {version!r} is not the supported version {cls.VERSION}; "
                           "rewrite the config for this slimkit (its fields: `help(slimkit)`)")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in d if k not in fields]
    if unknown:
        raise SlimkitError(f"{name} has no field {unknown[0]!r}; fields: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(name, k, v, hints[k]) for k, v in d.items()})


def _coerce(owner: str, field: str, value: Any, hint: Any) -> Any:
    """`value` as the field's type (list -> tuple, int -> float, dict -> nested config), or a one-line error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(owner, field, value, option)
            except SlimkitError as exc:
                errors.append(exc)
        raise errors[0]
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else hint.from_dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong(owner, field, value, "a list")
        inner = args[0] if args and (len(args) == 1 or args[1] is Ellipsis) else None
        if inner is None and args and len(args) != len(value):
            raise _wrong(owner, field, value, f"a list of {len(args)}")
        return tuple(_coerce(owner, field, v, inner if inner is not None else a)
                     for v, a in zip(value, [inner] * len(value) if inner is not None else args))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _wrong(owner, field, value, "a mapping")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(owner, field, v, vt) for k, v in value.items()}
    if hint in _SCALARS:
        ok = (isinstance(value, hint) and not (hint is int and isinstance(value, bool))
              or hint is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise _wrong(owner, field, value, {bool: "true or false", int: "an integer", float: "a number",
                                               str: "a string"}[hint])
        return float(value) if hint is float else value
    return value


def _wrong(owner: str, field: str, value: Any, what: str) -> SlimkitError:
    return SlimkitError(f"{owner}.{field} must be {what}, got {value!r}")
