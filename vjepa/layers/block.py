"""Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)) (LayerNorm eps 1e-6, GELU MLP)."""

from __future__ import annotations

import torch
from torch import nn

from vjepa.layers.attention import Attention
from vjepa.layers.varlen import VarlenLayout


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_hidden: int,
        *,
        backend: str = "sdpa",
        rope: bool = False,
        rope_layout: str = "half",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.attn = Attention(
            dim, heads, backend=backend, rope=rope, rope_layout=rope_layout, device=device, dtype=dtype
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.mlp = Mlp(dim, mlp_hidden, device=device, dtype=dtype)

    def forward(
        self, x: torch.Tensor, coords: torch.Tensor | None = None, layout: VarlenLayout | None = None
    ) -> torch.Tensor:
        """x [B, N, D] dense, or packed [T, D] with its `layout` (variable-length sequences end to end)."""
        x = x + self.attn(self.norm1(x), coords=coords, layout=layout)
        return x + self.mlp(self.norm2(x))
