"""Multi-head self-attention with one dispatch point: PyTorch SDPA (default, CPU and GPU) or xformers
memory-efficient attention (CUDA only, selected with `model.attention=xformers`).

Shape legend: B batch, K tokens, D width, H heads, hd head dim, T packed tokens. Two layouts: padded
[B, K, D] with `key_valid` [B, K] marking real tokens (padded keys are never attended to), and packed
[T, D] with a `VarlenLayout` (variable-length sequences end to end, see varlen.py), which the training step
uses.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from vjepa.layers.pos_embed import Rope3D
from vjepa.layers.varlen import VarlenLayout, attend_varlen

BACKENDS = ("sdpa", "xformers")


def check_backend(backend: str, device: torch.device | str | None = None) -> None:
    """Raises a clear error where `backend` cannot run; there is no silent fallback."""
    if backend not in BACKENDS:
        raise ValueError(f"model.attention: unknown backend {backend!r} (choose from {BACKENDS})")
    if backend == "xformers":
        # Device first: on a CPU, installing xformers would not help, so point at sdpa instead.
        if device is not None and torch.device(device).type != "cuda":
            raise ValueError(
                f"model.attention=xformers has no kernels for device '{torch.device(device).type}'; "
                "use model.attention=sdpa there"
            )
        if importlib.util.find_spec("xformers") is None:
            raise ValueError("model.attention=xformers needs xformers: pip install 'vjepa[gpu]'")


def _xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None):
    import xformers.ops as xops

    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, K, H, hd]
    if key_valid is None:
        return xops.memory_efficient_attention(q, k, v).transpose(1, 2)
    # Pack the real tokens of every sample into one sequence with a block-diagonal mask: no padding
    # is computed and no sample sees another's tokens.
    layout = VarlenLayout(tuple(key_valid.sum(dim=1).tolist()), device=q.device, kernel="xformers")
    packed = attend_varlen(q[key_valid], k[key_valid], v[key_valid], layout)  # [T, H, hd]
    out = q.new_zeros(q.shape)
    out[key_valid] = packed
    return out.transpose(1, 2)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_valid: torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v for q, k, v [B, H, K, hd]; padded keys masked out -> [B, H, K, hd]."""
    if backend == "xformers":
        check_backend(backend, q.device)
        return _xformers_attention(q, k, v, key_valid)
    mask = None if key_valid is None or bool(key_valid.all()) else key_valid[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """Fused-qkv multi-head self-attention (rows of qkv ordered q|k|v, as in the released checkpoints)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        backend: str = "sdpa",
        rope: bool = False,
        rope_layout: str = "half",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        check_backend(backend)
        self.heads, self.head_dim, self.backend = heads, dim // heads, backend
        self.rope = Rope3D(self.head_dim, layout=rope_layout) if rope else None
        self.qkv = nn.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        *,
        key_valid: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        layout: VarlenLayout | None = None,
    ) -> torch.Tensor:
        """x [B, K, D] (coords [B, K, 3]) or, with `layout`, packed x [T, D] (coords [T, 3])."""
        if layout is not None:
            return self._forward_packed(x, coords, layout)
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, K, hd]
        q, k, v = self._rotate(*qkv.unbind(0), coords)
        out = attend(q, k, v, key_valid=key_valid, backend=self.backend)  # [B, H, K, hd]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def _forward_packed(
        self, x: torch.Tensor, coords: torch.Tensor | None, layout: VarlenLayout
    ) -> torch.Tensor:
        t, d = x.shape
        qkv = self.qkv(x).view(t, 3, self.heads, self.head_dim)  # [T, 3, H, hd]
        q, k, v = self._rotate(*qkv.unbind(1), coords)  # [T, H, hd] each
        out = attend_varlen(q, k, v, layout, backend=self.backend)  # [T, H, hd]
        return self.proj(out.reshape(t, d))

    def _rotate(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, coords: torch.Tensor | None):
        """RoPE on q and k ([B, H, K, hd] with coords [B, K, 3], or [T, H, hd] with coords [T, 3])."""
        if self.rope is None:
            return q, k, v
        if coords is None:
            raise ValueError("RoPE attention needs token coordinates")
        return self.rope.apply(q, coords), self.rope.apply(k, coords), v
