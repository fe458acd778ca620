"""`train.phases`: the resolved config of every phase, built and checked before any work.

Phase i's config is the base config with the phase's `overrides` applied (dotted keys -> values; a mapping
value merges into a mapping, e.g. `data: {crop_size: 384}` keeps the other data keys), then:
`train.steps` = the phase's `steps`, `train.out_dir` = its folder `<out_dir>/phase-<i>-<name>/`,
`train.phases` = [] (a phase is an ordinary single-phase run); phases after the first also get
`train.init_from` = null (they start from the phase before) and `checkpoint.save_init` = false (their
random initial weights are never trained, so they are no baseline).

A phase may not change what the weights, the optimizer state or the process group carry from one phase
to the next: see FIXED. Errors name the key as `train.phases.<i>.<key>`, so a bad key or value in the
second phase stops the command before the first phase runs. Pure config: importing this module builds
nothing (it is called from `Config.validate`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vjepa.config import ARCHITECTURE_KEYS
from vjepa.utils import deep_merge

# What a phase may not change (dotted keys; a key names its whole subtree). The weights carry over, so the
# architecture stays; the process group and the device are started once for every phase; the run folder,
# the length and the starting point of a phase are the phase list's business.
FIXED = (
    *ARCHITECTURE_KEYS,
    "dist",
    "train.device",
    "train.out_dir",
    "train.steps",
    "train.phases",
    "train.init_from",
    "checkpoint.resume",
)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LEADING_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*): ")


@dataclass(frozen=True)
class Phase:
    index: int
    name: str
    cfg: Any  # the resolved Config of this phase; cfg.train.out_dir is the phase's folder

    @property
    def folder(self) -> Path:
        return Path(self.cfg.train.out_dir)

    @property
    def label(self) -> str:
        return f"phase {self.index} ({self.name})"


def phase_folder_name(index: int, name: str) -> str:
    return f"phase-{index}-{name}"


def phase_list(cfg) -> list[dict[str, Any]]:
    """The phase list as plain data (what the run folder's phases.json records)."""
    from vjepa.config import to_dict

    return [to_dict(p) for p in cfg.train.phases]


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        elif isinstance(tree, dict) and part in tree:
            tree = tree[part]
        else:
            return None
    return tree


def _set(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """`data[dotted] = value` for an existing key (list entries by index); a mapping merges into a mapping."""
    parts = dotted.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        here = f"{where}.{'.'.join(parts[: depth + 1])}"
        key: Any = part
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"unknown config key '{here}' (list of {len(node)} entries)")
            key = int(part)
        elif not isinstance(node, dict) or part not in node:
            raise ValueError(f"unknown config key '{here}'")
        if depth < len(parts) - 1:
            node = node[key]
        elif isinstance(node[key], dict) and isinstance(value, dict):
            node[key] = deep_merge(node[key], value, strict=True, prefix=here)
        else:
            node[key] = copy.deepcopy(value)


def _named(err: ValueError, where: str) -> ValueError:
    """The error of a resolved phase config with its key named as `train.phases.<i>.<key>`."""
    msg = str(err)
    if msg.startswith(f"unknown config key '{where}."):
        return ValueError(msg)
    if msg.startswith("unknown config key '"):
        return ValueError(msg.replace("unknown config key '", f"unknown config key '{where}.", 1))
    if _LEADING_KEY.match(msg):
        return ValueError(f"{where}.{msg}")
    return ValueError(f"{where}: {msg}")


def resolve_phase(base, index: int):
    """The checked config of phase `index` of `base.train.phases`."""
    from vjepa.config import Config, from_dict, to_dict

    phase, where = base.train.phases[index], f"train.phases.{index}"
    base_data = to_dict(base)
    data = copy.deepcopy(base_data)
    for key, value in phase.overrides.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}.overrides: keys are dotted config keys, got {key!r}")
        _set(data, key, value, where)
    for key in FIXED:
        if _get(data, key) != _get(base_data, key):
            changed = key if key in phase.overrides else next(k for k in phase.overrides if _touches(k, key))
            raise ValueError(
                f"{where}.{changed}: a phase cannot change {key} (the weights, the optimizer state and the "
                "process group carry from one phase to the next; the phase list sets the length and folder)"
            )
    train = data["train"]
    folder = Path(base.train.out_dir) / phase_folder_name(index, phase.name)
    train.update(steps=phase.steps, phases=[], out_dir=str(folder))
    if index > 0:
        train["init_from"] = None
        data["checkpoint"]["save_init"] = False
    try:
        cfg = from_dict(Config, data)
        cfg.validate()
    except ValueError as err:
        raise _named(err, where) from None
    if len(cfg.mask) != len(base.mask):
        raise ValueError(
            f"{where}.mask: {len(cfg.mask)} mask configurations, the base config has {len(base.mask)} "
            "(one predictor mask token each: the count carries over between phases)"
        )
    lengths, base_lengths = cfg.data.clip_lengths(), base.data.clip_lengths()
    if len(lengths) != len(base_lengths):
        raise ValueError(
            f"{where}.data.sources: {len(lengths)} clip lengths {lengths}, the base config has "
            f"{len(base_lengths)} {base_lengths} (mask tokens are per clip length: the count carries over)"
        )
    return cfg


def _touches(override: str, fixed: str) -> bool:
    """Whether the override key `override` can change the fixed key `fixed` (one is a prefix of the other)."""
    return override == fixed or fixed.startswith(override + ".") or override.startswith(fixed + ".")


def resolve_phases(base) -> list[Phase]:
    """Every phase of `base.train.phases`, resolved and checked (names unique and usable as folder names,
    steps >= 1). Raises a ValueError naming `train.phases.<i>.<key>`."""
    seen: set[str] = set()
    for i, phase in enumerate(base.train.phases):
        where = f"train.phases.{i}"
        if not NAME.fullmatch(phase.name):
            raise ValueError(
                f"{where}.name: {phase.name!r} must be a non-empty name of letters, digits, '_', '-' or '.' "
                "(it names the phase's folder)"
            )
        if phase.name in seen:
            raise ValueError(f"{where}.name: {phase.name!r} names two phases")
        seen.add(phase.name)
        if phase.steps < 1:
            raise ValueError(f"{where}.steps: must be >= 1, got {phase.steps}")
    return [Phase(i, p.name, resolve_phase(base, i)) for i, p in enumerate(base.train.phases)]
