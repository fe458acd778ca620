"""Pretrained models in and out: one reader for every checkpoint form, and frozen encoders/predictors from it.

`read_pretrained(path)` -> {"encoder", "predictor", "target_encoder", "config"} from
  - a run folder, a `checkpoints/` folder or a step folder (single process, DDP, DeepSpeed ZeRO 0-3 shards:
    merged by `vjepa.distributed.export.consolidate`), or a step folder's `model.pt`;
  - a `vjepa export` file (torch or safetensors);
  - an official V-JEPA or V-JEPA 2 checkpoint (translated in `vjepa.models.official`).
`load_encoder` / `load_predictor` build the model the file describes for any frames x crop and load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vjepa.checkpoint import CONFIG_FILE, MODEL_FILE
from vjepa.config import Config, ModelConfig, stored_config
from vjepa.models.builder import build_encoder, build_predictor
from vjepa.models.encoder import VisionTransformer3D
from vjepa.models.predictor import Predictor
from vjepa.models.registry import get_size
from vjepa.models.weights import SAFETENSORS_SUFFIX, load_weights, read_model_file

__all__ = ["check_architecture", "load_encoder", "load_predictor", "read_pretrained", "state_config"]

ENCODER_KEYS = {"target": "target_encoder", "context": "encoder"}
# what must agree between a file and the model it is loaded into, beyond what the weights' shapes show
ARCHITECTURE_KEYS = ("name", "patch_size", "tubelet_size", "pos_embed", "rope_layout", "pred_heads")


def read_pretrained(
    path: str | Path,
    *,
    what: str = "--checkpoint",
    model: ModelConfig | None = None,
    heads: int | None = None,
    pred_heads: int | None = None,
    pos_embed: str | None = None,
) -> dict[str, Any]:
    """The weights and config of any supported checkpoint form (see the module doc), fp32 on the CPU.
    With `model` (a run's `model` section, for `train.init_from`), the file must describe that architecture.
    `heads`, `pred_heads`, `pos_embed` only matter for official files (see `official.translate_official`)."""
    path = Path(path)
    if path.is_dir() or (path.name == MODEL_FILE and (path.parent / CONFIG_FILE).is_file()):
        from vjepa.distributed.export import consolidate  # DeepSpeed itself only for ZeRO shards

        state = consolidate(path if path.is_dir() else path.parent)
    elif not path.exists():
        raise ValueError(f"{what}: {path} does not exist")
    else:
        state = read_model_file(path, what=what, heads=heads, pred_heads=pred_heads, pos_embed=pos_embed)
    if model is not None:
        check_architecture(state, model, what=f"{what}: {path}")
    return state


def state_config(state: dict[str, Any]) -> Config:
    """The config stored in a checkpoint or model file (of this or an earlier version)."""
    try:
        return stored_config(state["config"])
    except ValueError as err:
        raise ValueError(f"the checkpoint's config does not load: {err}") from None


def check_architecture(state: dict[str, Any], model: ModelConfig, *, what: str) -> None:
    """The file's model must be `model` where the weights' shapes cannot tell (heads, positions, layout)."""
    saved = state_config(state).model
    for key in ARCHITECTURE_KEYS:
        if key == "rope_layout" and model.pos_embed != "rope":
            continue
        if key == "pred_heads" and "predictor" not in state:
            continue
        a, b = getattr(saved, key), getattr(model, key)
        if a != b:
            raise ValueError(
                f"{what} holds a model with model.{key}={a!r}, this run has {b!r}; set model.{key}={a}"
            )


def _place(module: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Module:
    return module.to(device=device or "cpu", dtype=dtype).eval().requires_grad_(False)


def encoder_from_state(
    state: dict[str, Any],
    *,
    which: str = "target",
    frames: int | None = None,
    crop: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer3D:
    """The frozen encoder of a `read_pretrained` dict for clips of `frames` x `crop` (default: the file's)."""
    if which not in ENCODER_KEYS:
        raise ValueError(f"which: must be one of {tuple(ENCODER_KEYS)}, got {which!r}")
    cfg = state_config(state)
    m = cfg.model
    encoder = build_encoder(
        m.name,
        frames=frames or cfg.data.frames_per_clip,
        crop=crop or cfg.data.crop_size,
        patch=m.patch_size,
        tubelet=m.tubelet_size,
        pos_embed=m.pos_embed,
        rope_layout=m.rope_layout,
        device="cpu",
    )
    load_weights(encoder, state[ENCODER_KEYS[which]], f"the checkpoint's {ENCODER_KEYS[which]} ({m.name})")
    return _place(encoder, device, dtype)


def predictor_from_state(
    state: dict[str, Any],
    *,
    frames: int | None = None,
    crop: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Predictor:
    """The frozen predictor of a `read_pretrained` dict, with as many mask tokens as the file carries."""
    if not state.get("predictor"):
        note = state.get("source", {}).get("predictor", "")
        raise ValueError("the checkpoint holds no predictor weights" + (f" ({note})" if note else ""))
    cfg = state_config(state)
    m = cfg.model
    masks = sum(1 for k in state["predictor"] if k.startswith("mask_tokens."))
    predictor = build_predictor(
        embed_dim=get_size(m.name).width,
        frames=frames or cfg.data.frames_per_clip,
        crop=crop or cfg.data.crop_size,
        patch=m.patch_size,
        tubelet=m.tubelet_size,
        width=m.pred_width,
        depth=m.pred_depth,
        heads=m.pred_heads,
        num_mask_tokens=masks,
        levels=cfg.loss.num_levels,  # a V-JEPA 2.1 predictor's heads (loss.levels, loss.context_weight)
        context_head=cfg.loss.context_weight > 0,
        pos_embed=m.pos_embed,
        rope_layout=m.rope_layout,
        device="cpu",
    )
    load_weights(predictor, state["predictor"], f"the checkpoint's predictor ({m.name})")
    return _place(predictor, device, dtype)


def load_encoder(
    path: str | Path,
    *,
    which: str = "target",
    frames: int | None = None,
    crop: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    heads: int | None = None,
    pos_embed: str | None = None,
) -> VisionTransformer3D:
    """A frozen encoder in eval mode from any checkpoint form: normalised clips [B, 3, T, H, W] -> tokens
    [B, N, D]. `which`: "target" (the EMA target, used for evaluation) or "context". `frames`/`crop` may
    differ from the checkpoint's (the sin-cos table is rebuilt; RoPE needs nothing). `heads`/`pos_embed`
    override what an official file cannot say (see `vjepa.models.official`)."""
    state = read_pretrained(path, what=str(path), heads=heads, pos_embed=pos_embed)
    return encoder_from_state(state, which=which, frames=frames, crop=crop, device=device, dtype=dtype)


def load_predictor(
    path: str | Path,
    *,
    frames: int | None = None,
    crop: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    heads: int | None = None,
    pred_heads: int | None = None,
    pos_embed: str | None = None,
) -> Predictor:
    """A frozen predictor in eval mode from any checkpoint form (all of its mask tokens; `mask_index` picks
    one): encoder output at `context_idx` -> predictions at `target_idx` (see `Predictor.forward`)."""
    state = read_pretrained(path, what=str(path), heads=heads, pred_heads=pred_heads, pos_embed=pos_embed)
    return predictor_from_state(state, frames=frames, crop=crop, device=device, dtype=dtype)


def describe(path: str | Path) -> dict[str, Any]:
    """What a checkpoint holds (for `vjepa inspect`): its form, architecture, clip, grid, position kind,
    parameter counts and which parts are present."""
    from vjepa.checkpoint import DEEPSPEED_TAG, resolve_checkpoint
    from vjepa.models.builder import token_grid

    path = Path(path)
    state = read_pretrained(path, what=str(path))
    if path.is_dir():
        folder = resolve_checkpoint(path)
        form = "vjepa checkpoint (DeepSpeed)" if (folder / DEEPSPEED_TAG).is_dir() else "vjepa checkpoint"
    elif path.suffix == SAFETENSORS_SUFFIX:
        form = "vjepa export (safetensors)"
    else:
        form = state.get("source", {}).get("format", "vjepa export (torch)")
    cfg = state_config(state)
    m, size = cfg.model, get_size(cfg.model.name)
    frames, crop = cfg.data.frames_per_clip, cfg.data.crop_size
    grid_stored = state.get("source", {}).get("grid_stored", True)
    params = {
        part: sum(t.numel() for k, t in state[part].items() if not k.endswith("pos_embed"))
        for part in ("encoder", "predictor", "target_encoder")
        if state.get(part)
    }
    out: dict[str, Any] = {
        "path": str(path),
        "format": form,
        "model": m.name,
        "width": size.width,
        "depth": size.depth,
        "heads": size.heads,
        "mlp_hidden": size.mlp_hidden,
        "patch": m.patch_size,
        "tubelet": m.tubelet_size,
        "position": m.pos_embed if m.pos_embed == "sincos" else f"rope ({m.rope_layout} layout)",
        "frames": frames,
        "crop": crop,
        "grid": list(token_grid(frames=frames, crop=crop, patch=m.patch_size, tubelet=m.tubelet_size)),
        "grid_from": "the checkpoint"
        if grid_stored
        else "default (RoPE weights hold no grid; any clip works)",
        "parts": state.get("source", {}).get("parts", sorted(params)),
        "parameters": params,
    }
    if state.get("predictor"):
        masks = sum(1 for k in state["predictor"] if k.startswith("mask_tokens."))
        out["predictor"] = {
            "width": m.pred_width,
            "depth": m.pred_depth,
            "heads": m.pred_heads,
            "mask_tokens": masks,
        }
    if "converted_from" in state.get("source", {}):
        out["converted_from"] = state["source"]["converted_from"]
    if "predictor" in state.get("source", {}):
        out["predictor_note"] = state["source"]["predictor"]
    return out
