"""Small helpers used across vjepa: where to run, writing a file atomically, merging nested mappings."""

from __future__ import annotations

import copy
import os
import threading
import typing
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch

DeviceName = Literal["auto", "cpu", "cuda"]  # the config's train.device takes the same names
DEVICE_NAMES: tuple[str, ...] = typing.get_args(DeviceName)


def resolve_device(name: str = "auto", *, index: int | None = None, key: str = "device") -> torch.device:
    """The device for a user's `auto | cpu | cuda` choice: `auto` is CUDA when one is visible, else the CPU;
    `cuda` without a visible device is a ValueError naming `key`. `index` picks the CUDA device (a rank's
    local rank); selecting it as the current device (`torch.cuda.set_device`) is left to the caller."""
    if name not in DEVICE_NAMES:
        raise ValueError(f"{key}: must be one of {DEVICE_NAMES}, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{key}=cuda but no CUDA device is available")
    return torch.device("cuda") if index is None else torch.device("cuda", index)


@contextmanager
def atomic_write(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yields a temporary sibling of `path` (`<name>.<pid>-<thread>.tmp`, this writer's own) to write; when the
    block ends without an error the file is flushed to disk and renamed over `path`, so a reader (or a run
    killed mid-write) sees the old file or the whole new one, never half of it. Writers racing on one path
    (ranks that finish together) each rename a whole file; the last one wins. On an error the temporary file
    is removed.

        with atomic_write(out / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        if fsync:
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def deep_merge(
    base: dict[str, Any],
    over: dict[str, Any],
    *,
    strict: bool = False,
    open_keys: Collection[str] = (),
    prefix: str = "",
) -> dict[str, Any]:
    """`over` merged into a copy of `base`: nested mappings merge, everything else (lists too) is replaced.

    With `strict`, a key of `over` that `base` lacks is a ValueError naming the dotted key (`prefix.key`),
    except below the dotted keys in `open_keys`, whose mappings take any keys (raw pass-through sections).
    Neither input is modified.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if strict and key not in out:
            raise ValueError(f"unknown config key '{full}'")
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            still_strict = strict and full not in open_keys
            out[key] = deep_merge(out[key], value, strict=still_strict, open_keys=open_keys, prefix=full)
        else:
            out[key] = copy.deepcopy(value)
    return out
