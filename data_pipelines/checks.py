"""The checks every config section runs on itself: one error format, `dotted.key: what is wrong`.

Allowed values of a field are its `Literal[...]` type hint and nothing else: the loader checks them while it
converts YAML (vjepa.config), and `check_choices` checks them on a section built in Python.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any, Literal


def check(ok: bool, key: str, message: str) -> None:
    """ValueError `key: message` unless `ok`."""
    if not ok:
        raise ValueError(f"{key}: {message}")


def check_range(pair: tuple[float, float], key: str, *, lo: float, hi: float) -> None:
    """A (min, max) pair with lo < min <= max <= hi."""
    check(len(pair) == 2, key, f"expected two numbers [min, max], got {list(pair)}")
    a, b = pair
    check(lo < a <= b <= hi, key, f"need {lo} < min <= max <= {hi}, got {list(pair)}")


def literal_values(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal[...]` annotation, else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return None


def check_choice(value: Any, choices: tuple[Any, ...], key: str) -> None:
    """`value` is one of `choices`, with the same type (a YAML `true` is not the stage `1`)."""
    ok = any(value == c and type(value) is type(c) for c in choices)
    check(ok, key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field types, once per class (the mask generator validates its specs per draw,
    and resolving the hints was 40 % of a batch's masks)."""
    return typing.get_type_hints(cls)


def check_choices(section: Any, prefix: str) -> None:
    """Checks every `Literal`-typed field of the dataclass instance `section` (errors name `prefix.field`)."""
    hints = _type_hints(type(section))
    for f in dataclasses.fields(section):
        choices = literal_values(hints[f.name])
        if choices is not None:
            check_choice(getattr(section, f.name), choices, f"{prefix}.{f.name}")


def check_finite(value: Any, key: str) -> None:
    """No NaN or infinity in `value` (a number, or lists, tuples and mappings of them, walked with their
    keys): a NaN passes every `<`/`>` bound check, and an infinite rate or scale silently ruins a run."""
    if isinstance(value, float):
        check(math.isfinite(value), key, f"must be a finite number, got {value}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{key}.{i}")
    elif isinstance(value, dict):
        for name, item in value.items():
            check_finite(item, f"{key}.{name}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            check_finite(getattr(value, f.name), f"{key}.{f.name}")


def check_fields(section: Any, prefix: str) -> None:
    """What every section checks first: allowed values (`check_choices`) and finite numbers."""
    check_choices(section, prefix)
    for f in dataclasses.fields(section):
        check_finite(getattr(section, f.name), f"{prefix}.{f.name}")
