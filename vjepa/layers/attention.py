"""Multi-head self-attention with one dispatch point: PyTorch SDPA (default, CPU and GPU) or xformers
memory-efficient attention (CUDA only, selected with `model.attention=xformers`).

Shape legend: B batch, K tokens, D width, H heads, hd head dim. `key_valid` [B, K] marks real tokens in
padded variable-length batches; padded keys are never attended to.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from vjepa.layers.pos_embed import Rope3D

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
    lengths = key_valid.sum(dim=1).tolist()
    bias = xops.fmha.BlockDiagonalMask.from_seqlens(lengths)
    packed = xops.memory_efficient_attention(
        q[key_valid][None], k[key_valid][None], v[key_valid][None], attn_bias=bias
    )[0]  # [total, H, hd]
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
        self, x: torch.Tensor, *, key_valid: torch.Tensor | None = None, coords: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, K, hd]
        q, k, v = qkv.unbind(0)
        if self.rope is not None:
            if coords is None:
                raise ValueError("RoPE attention needs token coordinates")
            q, k = self.rope.apply(q, coords), self.rope.apply(k, coords)
        out = attend(q, k, v, key_valid=key_valid, backend=self.backend)  # [B, H, K, hd]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))
