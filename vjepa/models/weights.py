"""The one place where saved encoder/predictor weights meet a model.

Every path that puts weights into an encoder, a predictor or an EMA target goes through here: resuming a
new phase (`train.init_from`), loading a checkpoint for feature extraction, DeepSpeed's weight loading. Fixed
position tables are buffers rebuilt for the model's own token grid, so a saved one is dropped; everything
else must match by name, and a mismatch names the missing and unexpected keys.

Foreign checkpoint formats are translated here, before the check: `read_model_file` reads our exported
files (torch or safetensors) and the official V-JEPA / V-JEPA 2 files (translated in `official.py`) into one
layout, {"encoder", "predictor", "target_encoder", "config"}. A predictor file with more mask tokens than the
model keeps its first ones (a run may use fewer mask configurations than the checkpoint was trained with).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "LOAD_ERRORS",
    "DamagedFile",
    "SAFETENSORS_SUFFIX",
    "checked_weights",
    "load_weights",
    "read_model_file",
    "read_safetensors",
    "read_torch_file",
]

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
# metadata["format"] of the files `vjepa export --format safetensors` writes
SAFETENSORS_FORMAT = "vjepa-model"
MODEL_PARTS = ("encoder", "predictor", "target_encoder")
_MASK_TOKEN = re.compile(r"mask_tokens\.(\d+)")

# what torch.load raises for a file that is not a (weights-only loadable) torch file; a pickle that would
# run code raises UnpicklingError under weights_only=True
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError)


class DamagedFile(ValueError):
    """A file that is missing or cannot be read (truncated, empty, not a torch file, or a pickle that would
    run code); resume falls back to an older checkpoint on it, unlike on a file that reads but does not fit."""


def read_torch_file(path: str | Path, *, what: str, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a missing, damaged or code-carrying file is a `DamagedFile`
    (a ValueError) naming `what` (the key or flag the path came from) and the path."""
    path = Path(path)
    if not path.is_file():
        raise DamagedFile(f"{what}: no such file {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as err:
        raise DamagedFile(
            f"{what}: {path} is not a weights-only torch file ({type(err).__name__}: {err})"
        ) from err


def read_safetensors(path: str | Path, *, what: str) -> dict[str, Any]:
    """A `vjepa export --format safetensors` file -> {"encoder", "predictor", "target_encoder", "config"}:
    tensors are stored flat as `<part>.<key>`, the config as JSON in the metadata."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            flat = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{what}: {path} is not a readable safetensors file ({err})") from err
    if meta.get("format") != SAFETENSORS_FORMAT or "config" not in meta:
        raise ValueError(
            f"{what}: {path} is a safetensors file without vjepa metadata (format={meta.get('format')!r}); "
            "`vjepa export --format safetensors` writes one"
        )
    state: dict[str, Any] = {part: {} for part in MODEL_PARTS}
    for key, tensor in flat.items():
        part, _, name = key.partition(".")
        if part not in state or not name:
            raise ValueError(f"{what}: {path} holds an unexpected tensor {key!r}")
        state[part][name] = tensor
    state["config"] = json.loads(meta["config"])
    if "source" in meta:  # converted from an official file
        state["source"] = json.loads(meta["source"])
    return state


def read_model_file(
    path: str | Path,
    *,
    what: str,
    heads: int | None = None,
    pred_heads: int | None = None,
    pos_embed: str | None = None,
) -> dict[str, Any]:
    """Any model file -> {"encoder", "predictor", "target_encoder", "config"} (+ "source" for official
    files): a `vjepa export` torch or safetensors file, or an official V-JEPA / V-JEPA 2 checkpoint
    (`heads`, `pred_heads`, `pos_embed`: see `official.translate_official`)."""
    from vjepa.models.official import is_official, translate_official

    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return read_safetensors(path, what=what)
    obj = read_torch_file(path, what=what)
    if is_official(obj):
        return translate_official(
            obj, what=f"{what}: {path}", heads=heads, pred_heads=pred_heads, pos_embed=pos_embed
        )
    if isinstance(obj, dict) and "config" in obj and {"encoder", "target_encoder"} <= set(obj):
        return obj
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"{what}: {path} is neither an exported model file (encoder, target_encoder, config) nor an official "
        f"V-JEPA checkpoint (encoder, target_encoder, predictor, no config); it holds {keys}"
    )


def _is_position_table(name: str) -> bool:
    return name.endswith("pos_embed")


def _surplus_mask_tokens(module: nn.Module, given: set[str]) -> set[str]:
    """`mask_tokens.k` of the file beyond the module's count (kept: the first ones)."""
    count = sum(1 for n, _ in module.named_parameters() if _MASK_TOKEN.fullmatch(n))
    if count == 0:
        return set()
    return {k for k in given if (m := _MASK_TOKEN.fullmatch(k)) and int(m.group(1)) >= count}


def checked_weights(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The parameter tensors of `state` for `module` by parameter name, checked: every parameter present,
    nothing unknown (buffers such as fixed position tables are ignored on both sides). `name` says which
    weights these are in the error (e.g. "train.init_from: 'encoder'")."""
    buffers = {n for n, _ in module.named_buffers()}
    expected = {n for n, _ in module.named_parameters() if not _is_position_table(n)}
    given = {k for k in state if not _is_position_table(k) and k not in buffers}
    surplus = _surplus_mask_tokens(module, given)
    if surplus:
        given -= surplus
        kept = sum(1 for k in given if _MASK_TOKEN.fullmatch(k))
        log.info("%s: using the first %d of %d mask tokens", name, kept, kept + len(surplus))
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
