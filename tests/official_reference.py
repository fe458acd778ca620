"""The published V-JEPA / V-JEPA 2 arithmetic re-done independently of ours, and builders of official-format
checkpoint files (the published key names and shapes, tiny sizes, random weights), for tests/test_pretrained.py.

The reference follows the published code's arithmetic, not ours: the encoder is conv3d + (V-JEPA 1) the 3D
sin-cos table + pre-norm blocks with explicit softmax attention + final LayerNorm; V-JEPA 2's RoPE turns each
head's (t, h, w) thirds with adjacent channel pairs and tiled frequencies; V-JEPA 2's predictor sorts its
tokens by position before its blocks and unsorts after.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# tiny stand-ins for the published sizes (registered as vit_test and vit_micro)
V1 = dict(width=48, depth=2, heads=3, mlp=192, pred_width=48, pred_depth=2, pred_heads=3, masks=2)
V2 = dict(width=96, depth=4, heads=3, mlp=384, pred_width=192, pred_depth=2, pred_heads=12, masks=10)


# ----------------------------------------------------------------------------- the published forward, re-done


def ref_sincos_3d(dim: int, tp: int, hp: int, wp: int) -> torch.Tensor:
    """V-JEPA 1's table with uniform power: ceil(dim/6)*2 channels per axis, [t, h, w], sin then cos, cut."""
    per = int(np.ceil(dim / 6) * 2)

    def axis(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(per // 2, dtype=np.float64) / (per / 2.0))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    t, h, w = np.meshgrid(np.arange(tp), np.arange(hp), np.arange(wp), indexing="ij")
    table = np.concatenate([axis(t.ravel()), axis(h.ravel()), axis(w.ravel())], axis=1)[:, :dim]
    return torch.from_numpy(table).float()[None]  # [1, N, dim]


def ref_rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The published V-JEPA 2 rotation of d channels, channel by channel: channel j turns by frequency
    (j mod d/2) and mixes with its adjacent partner j^1 (-x[2i+1] for 2i, +x[2i] for 2i+1)."""
    d = x.shape[-1]
    j = torch.arange(d)
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / (d / 2.0))
    ang = pos.to(torch.float32)[..., None] * omega[j % (d // 2)]  # [..., N, d]
    partner = x[..., j ^ 1] * torch.where(j % 2 == 0, -1.0, 1.0)
    return x * ang.cos() + partner * ang.sin()


def ref_attention(sd, p, x, heads, ids=None, hw=None):
    b, n, dim = x.shape
    hd = dim // heads
    qkv = F.linear(x, sd[p + "qkv.weight"], sd[p + "qkv.bias"]).reshape(b, n, 3, heads, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, H, N, hd] each
    if hw is not None:  # RoPE from token ids on a (T, H, W) grid with H*W tokens per frame
        per_frame, row = hw[0] * hw[1], hw[1]
        axes = (ids // per_frame, (ids % per_frame) // row, ids % row)  # each [B, N]
        a = 2 * ((hd // 3) // 2)
        parts_q, parts_k = [], []
        for i, pos in enumerate(axes):
            sl = slice(i * a, (i + 1) * a)
            parts_q.append(ref_rotate(q[..., sl], pos[:, None]))
            parts_k.append(ref_rotate(k[..., sl], pos[:, None]))
        q = torch.cat([*parts_q, q[..., 3 * a :]], dim=-1)
        k = torch.cat([*parts_k, k[..., 3 * a :]], dim=-1)
    attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(hd), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, dim)
    return F.linear(out, sd[p + "proj.weight"], sd[p + "proj.bias"])


def ref_blocks(sd, prefix, x, depth, heads, ids=None, hw=None):
    for i in range(depth):
        p = f"{prefix}{i}."
        h = F.layer_norm(x, x.shape[-1:], sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        x = x + ref_attention(sd, p + "attn.", h, heads, ids, hw)
        h = F.layer_norm(x, x.shape[-1:], sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"]
        )
        x = x + h + sd[p + "mlp.fc2.bias"]
    return x


def ref_encoder(sd, clips, *, heads, rope):
    """Published VisionTransformer.forward (no masks), from prefix-free keys."""
    w = sd["patch_embed.proj.weight"]
    x = F.conv3d(clips, w, sd["patch_embed.proj.bias"], stride=(w.shape[2], w.shape[3], w.shape[4]))
    b, dim, tp, hp, wp = x.shape
    x = x.flatten(2).transpose(1, 2)  # [B, N, D], time-major
    ids = torch.arange(tp * hp * wp).expand(b, -1)
    if not rope:
        x = x + ref_sincos_3d(dim, tp, hp, wp)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    x = ref_blocks(sd, "blocks.", x, depth, heads, ids, (hp, wp) if rope else None)
    return F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


def ref_predictor(sd, ctx, ctx_ids, tgt_ids, *, grid, heads, rope, mask_index):
    """Published VisionTransformerPredictor.forward (one mask configuration), from prefix-free keys."""
    b, kt = ctx.shape[0], tgt_ids.shape[1]
    x = F.linear(ctx, sd["predictor_embed.weight"], sd["predictor_embed.bias"])
    width = x.shape[-1]
    count = sum(1 for k in sd if k.startswith("mask_tokens."))
    m = sd[f"mask_tokens.{mask_index % count}"].expand(b, kt, width)
    if not rope:
        table = ref_sincos_3d(width, *grid)[0]
        x, m = x + table[ctx_ids], m + table[tgt_ids]
    x, ids = torch.cat([x, m], 1), torch.cat([ctx_ids, tgt_ids], 1)
    if rope:  # V-JEPA 2 runs its blocks on tokens sorted by position
        order = ids.argsort(1)
        x, ids = torch.gather(x, 1, order[..., None].expand_as(x)), torch.gather(ids, 1, order)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("predictor_blocks."))
    x = ref_blocks(sd, "predictor_blocks.", x, depth, heads, ids, grid[1:] if rope else None)
    x = F.layer_norm(x, (width,), sd["predictor_norm.weight"], sd["predictor_norm.bias"], eps=1e-6)
    if rope:
        x = torch.gather(x, 1, order.argsort(1)[..., None].expand_as(x))
    return F.linear(x[:, -kt:], sd["predictor_proj.weight"], sd["predictor_proj.bias"])


# ----------------------------------------------------------------------------- official files


def rand(gen, *shape, std=0.2):
    return torch.randn(*shape, generator=gen) * std


def block_state(gen, prefix, dim, mlp):
    return {
        prefix + "norm1.weight": 1 + rand(gen, dim, std=0.1),
        prefix + "norm1.bias": rand(gen, dim, std=0.1),
        prefix + "attn.qkv.weight": rand(gen, 3 * dim, dim, std=0.2),
        prefix + "attn.qkv.bias": rand(gen, 3 * dim, std=0.1),
        prefix + "attn.proj.weight": rand(gen, dim, dim),
        prefix + "attn.proj.bias": rand(gen, dim, std=0.1),
        prefix + "norm2.weight": 1 + rand(gen, dim, std=0.1),
        prefix + "norm2.bias": rand(gen, dim, std=0.1),
        prefix + "mlp.fc1.weight": rand(gen, mlp, dim),
        prefix + "mlp.fc1.bias": rand(gen, mlp, std=0.1),
        prefix + "mlp.fc2.weight": rand(gen, dim, mlp, std=0.1),
        prefix + "mlp.fc2.bias": rand(gen, dim, std=0.1),
    }


def encoder_state(gen, a, grid, *, table):
    d = a["width"]
    sd = {
        "patch_embed.proj.weight": rand(gen, d, 3, 2, 16, 16, std=0.05),
        "patch_embed.proj.bias": rand(gen, d),
    }
    if table:
        sd["pos_embed"] = ref_sincos_3d(d, *grid)
    for i in range(a["depth"]):
        sd.update(block_state(gen, f"blocks.{i}.", d, a["mlp"]))
    sd.update({"norm.weight": 1 + rand(gen, d, std=0.1), "norm.bias": rand(gen, d, std=0.1)})
    return sd


def predictor_state(gen, a, grid, *, table):
    p, d = a["pred_width"], a["width"]
    sd = {"predictor_embed.weight": rand(gen, p, d), "predictor_embed.bias": rand(gen, p, std=0.1)}
    if table:
        sd["predictor_pos_embed"] = ref_sincos_3d(p, *grid)
    sd.update({f"mask_tokens.{k}": rand(gen, 1, 1, p, std=1.0) for k in range(a["masks"])})
    for i in range(a["pred_depth"]):
        sd.update(block_state(gen, f"predictor_blocks.{i}.", p, 4 * p))
    sd.update(
        {
            "predictor_norm.weight": 1 + rand(gen, p, std=0.1),
            "predictor_norm.bias": rand(gen, p, std=0.1),
            "predictor_proj.weight": rand(gen, d, p, std=p**-0.5),  # O(1) outputs
            "predictor_proj.bias": rand(gen, d, std=0.1),
        }
    )
    return sd


def official_parts(version: int, *, seed: int = 0, grid=(2, 2, 2)) -> dict[str, dict]:
    """Prefix-free encoder / target_encoder / predictor weights of a V-JEPA `version` (1 or 2) file."""
    gen = torch.Generator().manual_seed(seed)
    a, table = (V1, True) if version == 1 else (V2, False)
    return {
        "encoder": encoder_state(gen, a, grid, table=table),
        "target_encoder": encoder_state(gen, a, grid, table=table),
        "predictor": predictor_state(gen, a, grid, table=table),
    }


def write_official(path: Path, parts: dict[str, dict], prefix: str = "module.backbone.") -> Path:
    """The published checkpoint dict: the three parts with the training wrappers' prefix, and the rest."""
    state = {k: {prefix + n: t for n, t in sd.items()} for k, sd in parts.items()}
    state.update(
        opt={"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        scaler=None,
        epoch=3,
        loss=0.25,
        batch_size=8,
        world_size=1,
        lr=1e-4,
    )
    torch.save(state, path)
    return path
