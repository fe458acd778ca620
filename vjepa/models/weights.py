"""The one place where saved encoder/predictor weights meet a model.

Every path that puts weights into an encoder, a predictor or an EMA target goes through here: resuming a
new phase (`train.init_from`), loading a checkpoint for feature extraction, DeepSpeed's weight loading. Fixed
position tables are buffers rebuilt for the model's own token grid, so a saved one is dropped; everything
else must match by name, and a mismatch names the missing and unexpected keys.

Foreign checkpoint formats (official V-JEPA files, key prefixes) are translated here too, before the check.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["LOAD_ERRORS", "checked_weights", "load_weights", "read_torch_file"]

# what torch.load raises for a file that is not a (weights-only loadable) torch file; a pickle that would
# run code raises UnpicklingError under weights_only=True
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError)


def read_torch_file(path: str | Path, *, what: str, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a missing, damaged or code-carrying file is a ValueError
    naming `what` (the key or flag the path came from) and the path."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as err:
        raise ValueError(
            f"{what}: {path} is not a weights-only torch file ({type(err).__name__}: {err})"
        ) from err


def _is_position_table(name: str) -> bool:
    return name.endswith("pos_embed")


def checked_weights(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The parameter tensors of `state` for `module` by parameter name, checked: every parameter present,
    nothing unknown (buffers such as fixed position tables are ignored on both sides). `name` says which
    weights these are in the error (e.g. "train.init_from: 'encoder'")."""
    buffers = {n for n, _ in module.named_buffers()}
    expected = {n for n, _ in module.named_parameters() if not _is_position_table(n)}
    given = {k for k in state if not _is_position_table(k) and k not in buffers}
    if expected != given:
        raise ValueError(
            f"{name} weights do not fit: missing {sorted(expected - given)[:8]}, "
            f"unexpected {sorted(given - expected)[:8]}"
        )
    # a ZeRO-3 parameter is an empty placeholder outside a gather; its real shape is `ds_shape`
    shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in module.named_parameters()}
    wrong = [k for k in sorted(expected) if tuple(state[k].shape) != shapes[k]]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{name} weights do not fit: {k} is {tuple(state[k].shape)} in the file and "
            f"{shapes[k]} in the model ({len(wrong)} such tensors)"
        )
    return {k: state[k] for k in expected}


@torch.no_grad()
def load_weights(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Copies the checked parameters of `state` into a plain (unpartitioned) `module`; buffers keep the
    values the module built for its own grid."""
    weights = checked_weights(module, state, name)
    for key, param in module.named_parameters():
        if key in weights:
            param.copy_(weights[key].to(device=param.device, dtype=param.dtype))
