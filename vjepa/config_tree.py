"""The schema-independent half of the config machinery: typed conversion of plain YAML data into a dataclass
tree (`from_dict`, `to_dict`), `key=value` overrides, finding a config file (a path or a bundled name), and
`load_tree`, which every config tree of the project (training, evaluation, the world model) loads through.
An unknown key or a wrong type raises a ValueError that names the dotted key.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipelines import check_choice, check_finite, literal_values
from vjepa.utils import deep_merge
from vjepa.yaml_reader import read_yaml

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["apply_override", "bundled_configs", "find_config", "from_dict", "load_tree", "to_dict"]


# ----------------------------------------------------------------------------- typed conversion


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp` and converts containers; errors name `key`."""
    origin = typing.get_origin(tp)
    choices = literal_values(tp)
    if choices is not None:
        check_choice(value, choices, key)
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}.{i}") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        check_finite(value, key)
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf, or an overflowing 1e999
            raise ValueError(f"{key}: must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")


def from_dict(cls: type, data: dict[str, Any], *, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a plain dict; unknown keys and wrong types are errors naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ValueError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """The config as plain YAML-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


# ----------------------------------------------------------------------------- merging and overrides


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Applies one `dotted.key=value` override in place; the value is parsed as YAML (so 1e-3, true, [1, 2])."""
    if "=" not in assignment:
        raise ValueError(f"override '{assignment}' is not of the form key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"unknown config key '{here}' (list of {len(node)} entries)")
            part = int(part)
        elif not isinstance(node, dict) or (part not in node and not here.startswith("dist.deepspeed.")):
            raise ValueError(f"unknown config key '{here}'")
        if last:
            where = f"override '{assignment}'"
            value = read_yaml(raw, where, key=dotted.strip(), column_offset=len(dotted) + 1)
            node[part] = value if raw.strip() else ""
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


def bundled_configs() -> list[str]:
    """Names of the config files shipped inside the package (vjepa/configs/*.yaml), e.g. `quickstart`."""
    files = importlib.resources.files("vjepa.configs").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def find_config(path: str | Path) -> Path | Traversable:
    """The config file `path` names: the file itself when it exists, else a bundled config of that name
    (`quickstart` or `quickstart.yaml`), read through importlib.resources so that it works from any install."""
    if Path(path).is_file():
        return Path(path)
    name = str(path).removesuffix(".yaml")
    bundled = bundled_configs()
    if name in bundled:
        return importlib.resources.files("vjepa.configs").joinpath(f"{name}.yaml")
    raise ValueError(f"config file not found: {path} (bundled configs: {', '.join(bundled)})")


def load_tree(
    schema: type,
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    open_keys: tuple[str, ...] = (),
) -> Any:
    """Defaults of the dataclass `schema`, then the YAML file, then `key=value` overrides, built into
    `schema`; unknown keys and wrong types stop here, naming the key (and the file)."""
    data = to_dict(schema())
    if path is not None:
        path = find_config(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: cannot read the config file: {err}") from None
        loaded = read_yaml(text, str(path)) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must hold a mapping at the top level")
        try:
            data = deep_merge(data, loaded, strict=True, open_keys=open_keys)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(schema, data)
