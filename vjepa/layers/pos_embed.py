"""Fixed 3D sin-cos position tables (V-JEPA 1) and 3D rotary embeddings (V-JEPA 2).

Shape legend: Tp/Hp/Wp token grid, N = Tp*Hp*Wp tokens (time-major), D width, B batch, K tokens kept,
H heads, hd head dim.
"""

from __future__ import annotations

import math

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Standard 1D sin-cos: omega_i = 1/10000^(i/(dim/2)); sin half then cos half. -> [len(positions), dim]."""
    if dim % 2:
        raise ValueError(f"sin-cos width must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [P, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def grid_coords(grid: tuple[int, int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """Integer (t, h, w) coordinates of every token in time-major order -> [N, 3] int64."""
    tp, hp, wp = grid
    t, h, w = torch.meshgrid(
        torch.arange(tp, device=device),
        torch.arange(hp, device=device),
        torch.arange(wp, device=device),
        indexing="ij",
    )
    return torch.stack([t.flatten(), h.flatten(), w.flatten()], dim=1)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """3D sin-cos table with "uniform power": each axis gets ceil(dim/6)*2 channels, concatenated
    [time, height, width] and cut to `dim`. -> [N, dim] float32."""
    per_axis = math.ceil(dim / 6) * 2
    coords = grid_coords(grid)  # [N, 3]
    parts = [sincos_1d(per_axis, coords[:, axis]) for axis in range(3)]
    return torch.cat(parts, dim=1)[:, :dim].float()


ROPE_LAYOUTS = ("half", "vjepa2")


class Rope3D:
    """3D rotary embedding: per head, 2*((hd//3)//2) channels each rotate with time, height and width
    coordinates; leftover channels are not rotated. Within each axis's a channels, frequency i is
    1/base^(i/(a/2)) and the angle is the integer coordinate times it.

    Two channel layouts:
      "half"    channel i pairs with channel i + a/2 and both turn by frequency i (rotate-half). A true
                rotation: norms are kept and q.k depends only on coordinate differences. Our default.
      "vjepa2"  the published V-JEPA 2 layout: adjacent channels (2i, 2i+1) pair up, x -> x cos + x' sin with
                x' = (-x[2i+1], x[2i]), and channel j turns by frequency (j mod a/2) (the a/2 frequencies are
                tiled twice, not repeated per pair). The two channels of a pair then turn by different angles,
                so this is not a rotation; it is what their checkpoints were trained with, and the only
                layout that gives their features.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, layout: str = "half") -> None:
        if layout not in ROPE_LAYOUTS:
            raise ValueError(f"model.rope_layout: unknown layout {layout!r} (choose from {ROPE_LAYOUTS})")
        self.head_dim, self.layout = head_dim, layout
        self.axis_dim = 2 * ((head_dim // 3) // 2)
        if self.axis_dim == 0:
            raise ValueError(f"head dim {head_dim} is too small for 3D RoPE (needs >= 6)")
        self.base = base

    def angles(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [B, K, 3] -> angles [B, K, 3, axis_dim/2]."""
        # Built per call on the coordinates' device: modules are constructed on `meta`.
        half = self.axis_dim // 2
        inv_freq = 1.0 / self.base ** (torch.arange(half, device=coords.device, dtype=torch.float32) / half)
        return coords.to(torch.float32)[..., None] * inv_freq

    def apply(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Rotates q or k: x [B, H, K, hd] with coords [B, K, 3] integer grid positions, or packed x [T, H, hd]
        with coords [T, 3] (the same broadcast: the head axis sits right after the token axes)."""
        ang = self.angles(coords)[:, None]  # [B, 1, K, 3, a/2]
        a = self.axis_dim
        rotated = x[..., : 3 * a].unflatten(-1, (3, a))  # [B, H, K, 3, a]
        if self.layout == "half":
            cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
            x1, x2 = rotated[..., : a // 2], rotated[..., a // 2 :]
            out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        else:
            ang = torch.cat([ang, ang], dim=-1)  # [B, 1, K, 3, a]: frequencies tiled, channel j -> j mod a/2
            cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
            even, odd = rotated[..., 0::2], rotated[..., 1::2]  # [B, H, K, 3, a/2]
            partner = torch.stack([-odd, even], dim=-1).flatten(-2)  # [B, H, K, 3, a]
            out = rotated * cos + partner * sin
        return torch.cat([out.flatten(-2), x[..., 3 * a :]], dim=-1)
