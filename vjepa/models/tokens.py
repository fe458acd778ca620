"""Token coordinates from grid indices. Shape legend: B batch, K kept tokens (any leading shape)."""

from __future__ import annotations

import torch


def token_coords(idx: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Time-major token indices [B, K] (or packed [T]) -> integer (t, h, w) coordinates [B, K, 3] ([T, 3])."""
    _, hp, wp = grid
    return torch.stack([idx // (hp * wp), (idx // wp) % hp, idx % wp], dim=-1)
