"""The official V-JEPA (facebookresearch/jepa) and V-JEPA 2 (facebookresearch/vjepa2) checkpoint files,
translated into ours next to the models they feed.

An official file is a dict with `encoder`, `target_encoder` and `predictor` state dicts (plus `opt`, `epoch`
and such) and no config. Their keys carry the training wrappers' prefixes (`module.backbone.`, `module.`);
without them, they are our keys. What the file does not say is inferred from the weights:

    width, depth, MLP width, patch, tubelet   patch_embed.proj.weight [D, 3, tubelet, patch, patch], blocks.*
    position kind                             a `pos_embed` table -> fixed 3D sin-cos (V-JEPA 1); none -> RoPE
                                              in the published V-JEPA 2 channel layout (rope_layout=vjepa2)
    grid (sin-cos only)                       the table's token count N = Tp * Hp * Hp (square crops)
    predictor width, depth, mask tokens       predictor_embed.weight [P, D], predictor_blocks.*, mask_tokens.*

The head counts are not in the weights (qkv is [3D, D] for any split): the encoder's comes from the registered
size with those shapes, the predictor's from the published recipes (V-JEPA 1: the encoder's; V-JEPA 2: 12);
`heads` / `pred_heads` override both. A RoPE file holds no grid: its clip defaults to V-JEPA 2's 64 x 256.
The result has our exported-file layout, {"encoder", "predictor", "target_encoder", "config", "source"}, so
everything downstream (extraction, probes, `train.init_from`) reads one layout.

Shape legend: D encoder width, P predictor width, N tokens, Tp/Hp/Wp token grid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from vjepa.layers.pos_embed import sincos_3d
from vjepa.models.registry import find_size, get_size

__all__ = [
    "PARTS",
    "EncoderShape",
    "PredictorShape",
    "encoder_shape",
    "infer_grid",
    "is_official",
    "predictor_shape",
    "strip_prefixes",
    "translate_official",
]

PARTS = ("encoder", "predictor", "target_encoder")
PREFIXES = ("module.", "backbone.")  # DDP's and MultiMaskWrapper's, in any nesting
VJEPA2_CLIP = (64, 256)  # frames, crop: the published V-JEPA 2 pretraining clip (no grid in a RoPE file)
VJEPA2_PRED_HEADS = 12  # every published V-JEPA 2 predictor
VJEPA1_FRAME_STEP = 4
VJEPA1_TP = 8  # 16 frames / tubelet 2: every published V-JEPA 1 checkpoint


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the wrappers' leading `module.` / `backbone.` (any number, any order)."""
    out = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def is_official(obj: Any) -> bool:
    """True for a dict shaped like an official V-JEPA / V-JEPA 2 file: an `encoder` (with `target_encoder`
    and `predictor` in pretraining files; V-JEPA 2-AC files carry no target), no config."""
    return (
        isinstance(obj, dict)
        and "config" not in obj
        and isinstance(obj.get("encoder"), dict)
        and all(isinstance(obj[k], dict) for k in PARTS if k in obj)
    )


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _tensor(state: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"{what}: missing {key} (keys start with {sorted(state)[:6]})")
    return state[key]


@dataclass(frozen=True)
class EncoderShape:
    width: int
    depth: int
    mlp_hidden: int
    patch: int
    tubelet: int
    pos_embed: str  # "sincos" (a table in the file) or "rope" (none)
    tokens: int | None  # N of the table


def encoder_shape(state: dict[str, torch.Tensor], what: str) -> EncoderShape:
    """What the (prefix-free) encoder weights say about the architecture."""
    proj = _tensor(state, "patch_embed.proj.weight", what)  # [D, C, tubelet, patch, patch]
    if proj.ndim != 5 or proj.shape[-1] != proj.shape[-2]:
        raise ValueError(f"{what}: patch_embed.proj.weight is {tuple(proj.shape)}, expected a 3D patch conv")
    depth = _depth(state, "blocks.")
    if depth == 0:
        raise ValueError(f"{what}: no blocks.0.* weights")
    table = state.get("pos_embed")
    return EncoderShape(
        width=int(proj.shape[0]),
        depth=depth,
        mlp_hidden=int(_tensor(state, "blocks.0.mlp.fc1.weight", what).shape[0]),
        patch=int(proj.shape[-1]),
        tubelet=int(proj.shape[2]),
        pos_embed="rope" if table is None else "sincos",
        tokens=None if table is None else int(table.shape[-2]),
    )


@dataclass(frozen=True)
class PredictorShape:
    embed_dim: int
    width: int
    depth: int
    mlp_hidden: int
    mask_tokens: int
    has_table: bool


def predictor_shape(state: dict[str, torch.Tensor], what: str) -> PredictorShape:
    embed = _tensor(state, "predictor_embed.weight", what)  # [P, D]
    depth = _depth(state, "predictor_blocks.")
    masks = sum(1 for k in state if re.fullmatch(r"mask_tokens\.\d+", k))
    if masks == 0:
        raise ValueError(
            f"{what}: the predictor has no mask_tokens.* (predictors without them are not supported)"
        )
    return PredictorShape(
        embed_dim=int(embed.shape[1]),
        width=int(embed.shape[0]),
        depth=depth,
        mlp_hidden=int(_tensor(state, "predictor_blocks.0.mlp.fc1.weight", what).shape[0]),
        mask_tokens=masks,
        has_table="predictor_pos_embed" in state,
    )


def infer_grid(tokens: int, *, what: str) -> tuple[int, int, int]:
    """(Tp, Hp, Hp) for a table of `tokens` rows. N = Tp * Hp^2 has several solutions, so the published
    V-JEPA 1 clip length (16 frames: Tp = 8, with Hp >= 8) is tried first (1568 -> 8 x 14 x 14, 4608 ->
    8 x 24 x 24), then the largest square Hp with Tp >= Hp / 3. Only the default clip depends on it: any
    frames x crop loads."""
    hp = math.isqrt(tokens // VJEPA1_TP) if tokens % VJEPA1_TP == 0 else 0
    if hp >= VJEPA1_TP and VJEPA1_TP * hp * hp == tokens:
        return VJEPA1_TP, hp, hp
    for hp in range(math.isqrt(tokens), 0, -1):
        if tokens % (hp * hp) == 0 and 3 * (tokens // (hp * hp)) >= hp:
            return tokens // (hp * hp), hp, hp
    raise ValueError(f"{what}: cannot infer a token grid from a position table of {tokens} rows")


def _check_sincos(table: torch.Tensor, width: int, grid: tuple[int, int, int], what: str, key: str) -> None:
    """A file's fixed table must be the 3D sin-cos table we rebuild, or features would differ."""
    expected = sincos_3d(width, grid)
    if table.reshape(-1, width).shape != expected.shape or not torch.allclose(
        table.reshape(-1, width).float(), expected, atol=1e-4
    ):
        raise ValueError(
            f"{what}: {key} is not the 3D sin-cos table (uniform power) of grid {grid}; learned or other "
            "tables are not supported (a stale table in a RoPE file: pass pos_embed='rope')"
        )


def _predictor_config(
    parts: dict[str, Any],
    model: dict[str, Any],
    *,
    grid: tuple[int, int, int] | None,
    pred_heads: int | None,
    what: str,
) -> str | None:
    """Adds the predictor's pred_width/pred_depth/pred_heads to `model`; a predictor of another kind (e.g.
    V-JEPA 2-AC's, no mask tokens) is dropped so that the encoders still load -> the reason, or None."""
    if "predictor" not in parts:
        return None
    try:
        pred = predictor_shape(parts["predictor"], f"{what}: 'predictor'")
    except ValueError as err:
        del parts["predictor"]
        return str(err)
    default_heads = VJEPA2_PRED_HEADS if model["pos_embed"] == "rope" else get_size(model["name"]).heads
    model.update(pred_width=pred.width, pred_depth=pred.depth, pred_heads=pred_heads or default_heads)
    if pred.has_table and grid is not None:
        table = parts["predictor"]["predictor_pos_embed"]
        _check_sincos(table, pred.width, grid, f"{what}: 'predictor'", "predictor_pos_embed")
    return None


def translate_official(
    obj: dict[str, Any],
    *,
    what: str,
    heads: int | None = None,
    pred_heads: int | None = None,
    pos_embed: str | None = None,
) -> dict[str, Any]:
    """An official file's dict -> our exported-file layout with a synthesised config (see the module doc).
    `pos_embed` forces the position kind ("sincos"/"rope") where the file's own table would mislead."""
    parts = {k: strip_prefixes(obj[k]) for k in PARTS if k in obj}
    present = sorted(parts)
    if "target_encoder" not in parts:  # e.g. V-JEPA 2-AC: the (frozen) encoder is the one to evaluate
        parts["target_encoder"] = parts["encoder"]
    shape = encoder_shape(parts["target_encoder"], f"{what}: 'target_encoder'")
    kind = pos_embed or shape.pos_embed
    if kind not in ("sincos", "rope"):
        raise ValueError(f"pos_embed: must be 'sincos' or 'rope', got {kind!r}")
    name = find_size(width=shape.width, depth=shape.depth, mlp_hidden=shape.mlp_hidden, heads=heads)
    if kind == "sincos":
        if shape.tokens is None:
            raise ValueError(f"{what}: pos_embed='sincos' but the encoder holds no pos_embed table")
        grid = infer_grid(shape.tokens, what=what)
        for key in ("encoder", "target_encoder"):
            if "pos_embed" in parts[key]:
                _check_sincos(parts[key]["pos_embed"], shape.width, grid, f"{what}: '{key}'", "pos_embed")
        frames, crop = grid[0] * shape.tubelet, grid[1] * shape.patch
    else:
        grid, (frames, crop) = None, VJEPA2_CLIP
        for key in ("encoder", "target_encoder"):  # a stale table has no role under RoPE
            parts.get(key, {}).pop("pos_embed", None)
        if "predictor" in parts:
            parts["predictor"].pop("predictor_pos_embed", None)
    model: dict[str, Any] = {
        "name": name,
        "patch_size": shape.patch,
        "tubelet_size": shape.tubelet,
        "pos_embed": kind,
        "rope_layout": "vjepa2" if kind == "rope" else "half",
    }
    predictor_note = _predictor_config(parts, model, grid=grid, pred_heads=pred_heads, what=what)
    config = {
        "model": model,
        "data": {"frames_per_clip": frames, "crop_size": crop, "frame_step": VJEPA1_FRAME_STEP},
    }
    source = {
        "format": "official V-JEPA 2" if kind == "rope" else "official V-JEPA",
        "grid_stored": kind == "sincos",
        "epoch": obj.get("epoch") if isinstance(obj.get("epoch"), int) else None,
        "parts": present,
    }
    if predictor_note:
        source["predictor"] = f"not loaded: {predictor_note}"
    return {**parts, "config": config, "source": source}
