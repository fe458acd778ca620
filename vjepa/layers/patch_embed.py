"""Tubelet embedding: one Conv3d with kernel = stride = (tubelet, patch, patch), tokens in time-major order.

An image (a 1-frame clip) is repeated to one tubelet, as the published V-JEPA code feeds images to its video
encoders: its tokens are those of a still clip (the same as a 2-D patch embedding whose kernel is the 3-D
kernel summed over time), so images need no parameters of their own and published checkpoints apply.
"""

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
        if frames == 1:  # an image: one tubelet
            frames = self.tubelet
        if frames % self.tubelet or height % self.patch or width % self.patch:
            raise ValueError(
                f"clip {frames}x{height}x{width} is not divisible by tubelet {self.tubelet} x patch {self.patch}"
            )
        return frames // self.tubelet, height // self.patch, width // self.patch

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [B, C, T, H, W] -> tokens [B, N, D] with N = Tp*Hp*Wp (index = t*Hp*Wp + h*Wp + w); T = 1 (an
        image) gives Tp = 1."""
        if clips.shape[2] == 1 and self.tubelet > 1:
            clips = clips.expand(-1, -1, self.tubelet, -1, -1)  # [B, C, tubelet, H, W], the frame repeated
        return self.proj(clips).flatten(2).transpose(1, 2)
