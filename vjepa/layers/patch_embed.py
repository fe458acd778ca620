"""Tubelet embedding: one Conv3d with kernel = stride = (tubelet, patch, patch), tokens in time-major order."""

from __future__ import annotations

import torch
from torch import nn


class TubeletEmbed(nn.Module):
    def __init__(
        self, dim: int, *, patch: int = 16, tubelet: int = 2, in_chans: int = 3, device=None, dtype=None
    ):
        super().__init__()
        self.patch, self.tubelet = patch, tubelet
        self.proj = nn.Conv3d(
            in_chans,
            dim,
            kernel_size=(tubelet, patch, patch),
            stride=(tubelet, patch, patch),
            device=device,
            dtype=dtype,
        )

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        if frames % self.tubelet or height % self.patch or width % self.patch:
            raise ValueError(
                f"clip {frames}x{height}x{width} is not divisible by tubelet {self.tubelet} x patch {self.patch}"
            )
        return frames // self.tubelet, height // self.patch, width // self.patch

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [B, C, T, H, W] -> tokens [B, N, D] with N = Tp*Hp*Wp (index = t*Hp*Wp + h*Wp + w)."""
        return self.proj(clips).flatten(2).transpose(1, 2)
