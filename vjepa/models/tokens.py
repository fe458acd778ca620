"""Gathering tokens by index. Shape legend: B batch, N tokens in the grid, K kept tokens, D width."""

from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], idx [B, K] int64 -> [B, K, D]."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def token_coords(idx: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Time-major token indices [B, K] -> integer (t, h, w) coordinates [B, K, 3]."""
    _, hp, wp = grid
    return torch.stack([idx // (hp * wp), (idx // wp) % hp, idx % wp], dim=-1)
