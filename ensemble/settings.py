"""One validator for settings dataclasses: types from the annotations, ranges declared once.

A setting is declared with `setting(default, low=..., high=..., choices=...)`; `check(obj)`
then checks every field's type (TOML and JSON can hold anything) and range, and raises
one UserError naming the key (and the file, when given). Ranges live next to the
default, so the CLI help, the TOML loader and the server all agree.
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, field, fields

from ensemble.errors import UserError


def setting(default=MISSING, *, default_factory=MISSING, low=None, high=None, low_open=False,
            choices=None):
    """A dataclass field with its accepted range: low <= v <= high (low < v if low_open)."""
    meta = {"low": low, "high": high, "low_open": low_open, "choices": choices}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _type_ok(value, hint) -> tuple[bool, str]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return True, ""
        for option in options:
            if option is not type(None):
                ok, want = _type_ok(value, option)
                if ok:
                    return True, ""
        return False, " or ".join(_type_ok(None, o)[1] for o in options if o is not type(None))
    if hint is bool:
        return isinstance(value, bool), "true or false"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, "a finite number"
    if hint is str:
        return isinstance(value, str), "a string"
    if origin is list:
        (item,) = typing.get_args(hint) or (object,)
        ok = isinstance(value, list) and all(item is object or _type_ok(v, item)[0] for v in value)
        return ok, f"a list of {_type_ok(None, item)[1] if item is not object else 'values'}"
    if hint is dict or origin is dict:
        return isinstance(value, dict), "a table"
    return True, ""


def check(obj, where: str = "") -> None:
    """Check (and normalise: ints given for floats become floats) every field of `obj`."""
    prefix = f"{where}: " if where else ""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        ok, want = _type_ok(value, hints[f.name])
        if not ok:
            raise UserError(f"{prefix}{f.name} must be {want}, got {value!r}")
        if hints[f.name] is float:
            value = float(value)
            setattr(obj, f.name, value)
        _check_field(f, hints[f.name], value, prefix)


def check_value(cls, name: str, value):
    """One setting of dataclass `cls` checked on its own (a live /ensemble/set, a MIDI CC):
    the same type and range rules as `check`; returns the value converted (int -> float)."""
    hint = typing.get_type_hints(cls)[name]
    if hint is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # OSC and MIDI deliver numbers as floats
    ok, want = _type_ok(value, hint)
    if not ok:
        raise UserError(f"{name} must be {want}, got {value!r}")
    _check_field({f.name: f for f in fields(cls)}[name], hint, value, "")
    return float(value) if hint is float else value


def _check_field(f, hint, value, prefix: str) -> None:
    meta = f.metadata
    if not meta or value is None:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise UserError(f"{prefix}{f.name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        raise UserError(f"{prefix}{f.name} must be {'>' if meta.get('low_open') else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise UserError(f"{prefix}{f.name} must be <= {high}, got {value}")


def describe_range(cls, name: str) -> str:
    """The accepted range of one setting, for help texts: e.g. '(0, 1]'."""
    meta = {f.name: f.metadata for f in fields(cls)}[name]
    if meta.get("choices"):
        return ", ".join(map(str, meta["choices"]))
    low, high = meta.get("low"), meta.get("high")
    left = "(" if meta.get("low_open") else "["
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
