"""The checks every config section runs on itself: one error format, `dotted.key: what is wrong`.

Allowed values of a field are its `Literal[...]` type hint and nothing else: the loader checks them while it
converts YAML (vjepa.config), and `check_choices` checks them on a section built in Python.
"""

from __future__ import annotations

import dataclasses
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


def check_choices(section: Any, prefix: str) -> None:
    """Checks every `Literal`-typed field of the dataclass instance `section` (errors name `prefix.field`)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        choices = literal_values(hints[f.name])
        if choices is not None:
            check_choice(getattr(section, f.name), choices, f"{prefix}.{f.name}")
