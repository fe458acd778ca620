"""Consolidating a training checkpoint (single, DDP or DeepSpeed ZeRO 0-3) into one plain torch file:

    {"encoder": state_dict, "predictor": state_dict, "target_encoder": state_dict, "config": dict}

in fp32 on CPU, loadable without DeepSpeed or a process group (feature extraction, probes, `train.init_from`).
`format="safetensors"` writes the same tensors flat as `<part>.<key>` with the config as JSON in the metadata
(read back by `vjepa.models.weights.read_safetensors`).
DeepSpeed's shards are merged with its own `zero_to_fp32` reader (fp32 master weights); the ZeRO-3 target
shards written by `zero_ema.save_shard` are concatenated here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from vjepa.checkpoint import (
    CONFIG_FILE,
    DEEPSPEED_TAG,
    MODEL_FILE,
    TARGET_FILE,
    TARGET_SHARD_FILE,
    atomic_torch_save,
    resolve_checkpoint,
)
from vjepa.distributed import zero_ema
from vjepa.models.weights import MODEL_PARTS, SAFETENSORS_FORMAT, read_torch_file
from vjepa.utils import atomic_write

ExportFormat = Literal["torch", "safetensors"]
EXPORT_FORMATS = ("torch", "safetensors")


def _split(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {
        k[len(prefix) :]: v.detach().float().cpu().clone() for k, v in state.items() if k.startswith(prefix)
    }


def _deepspeed_model_state(folder: Path) -> dict[str, torch.Tensor]:
    """The JepaModel state dict (fp32) from DeepSpeed's files under `folder/deepspeed/`."""
    ds_dir = folder / DEEPSPEED_TAG
    if any(ds_dir.glob("*optim_states.pt")):  # ZeRO 1-3: the fp32 master partitions live with the optimizer
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DEEPSPEED_TAG))
    files = sorted(ds_dir.glob("mp_rank_*_model_states.pt"))  # ZeRO 0: full weights in the model file
    if not files:
        raise ValueError(f"{ds_dir}: no DeepSpeed model or optimizer state files")
    return dict(read_torch_file(files[0], what=f"checkpoint {folder}")["module"])


def _target_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / TARGET_SHARD_FILE.format(rank=0)).is_file():
        return zero_ema.consolidate_shards(folder)
    if (folder / TARGET_FILE).is_file():
        return read_torch_file(folder / TARGET_FILE, what=f"checkpoint {folder}")
    raise ValueError(f"{folder}: no EMA target ({TARGET_FILE} or {TARGET_SHARD_FILE.format(rank=0)})")


def consolidate(checkpoint: str | Path) -> dict:
    """The plain {"encoder", "predictor", "target_encoder", "config"} dict for a checkpoint folder."""
    folder = resolve_checkpoint(checkpoint)
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise ValueError(f"{folder}: missing {CONFIG_FILE} (needed to rebuild the models)")
    config = yaml.safe_load(config_file.read_text())
    if (folder / MODEL_FILE).is_file():  # single process or DDP
        state = read_torch_file(folder / MODEL_FILE, what=f"checkpoint {folder}")
        parts = {k: _split(state[k], "") for k in ("encoder", "predictor", "target_encoder")}
    else:
        model = _deepspeed_model_state(folder)
        parts = {
            "encoder": _split(model, "encoder."),
            "predictor": _split(model, "predictor."),
            "target_encoder": _split(_target_state(folder), ""),
        }
    for key, sd in parts.items():
        if not sd:
            raise ValueError(f"{folder}: the checkpoint holds no {key} weights")
    return {**parts, "config": config}


def save_model_file(state: dict[str, Any], out: str | Path, *, format: ExportFormat = "torch") -> Path:
    """Writes a {"encoder", "predictor", "target_encoder", "config"} dict atomically as a torch or a
    safetensors file; returns its path."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"--format: must be one of {EXPORT_FORMATS}, got {format!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "source" in state:  # a translated official file: say what it was converted from
        source = state["source"]
        converted = {**source, "format": f"vjepa export ({format})"}
        converted["converted_from"] = source.get("converted_from", source["format"])
        state = {**state, "source": converted}
    if format == "torch":
        atomic_torch_save(state, out)
        return out
    from safetensors.torch import save_file

    # safetensors refuses shared or strided storage: every tensor gets its own contiguous copy
    flat = {
        f"{part}.{key}": value.detach().cpu().contiguous().clone()
        for part in MODEL_PARTS
        for key, value in state.get(part, {}).items()
    }
    meta = {"format": SAFETENSORS_FORMAT, "config": json.dumps(state["config"])}
    if "source" in state:
        meta["source"] = json.dumps(state["source"])
    with atomic_write(out) as tmp:
        save_file(flat, str(tmp), metadata=meta)
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, format: ExportFormat = "torch") -> Path:
    """Writes the consolidated file of a checkpoint folder atomically; returns its path."""
    return save_model_file(consolidate(checkpoint), out, format=format)
