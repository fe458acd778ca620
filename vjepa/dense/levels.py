"""Deep self-supervision: features of several encoder blocks side by side along the channels.

The encoder returns, for `levels` (block indices), one [B, N, D] tensor per level: an intermediate block's
output layer-normed without affine, the last block's output through the encoder's final LayerNorm (so the
last level is exactly the encoder's usual output). Targets layer-norm every level again without affine (as
the single-level target does) and lay them side by side [B, N, L*D]; the predictor's heads output L*D
channels in the same order, and the loss is the mean over all of them (the average of the levels' L1).

Shape legend: B batch, N tokens, L levels, D encoder width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from vjepa.models.packing import PackedIndex


@torch.no_grad()
def level_targets(
    target_encoder: nn.Module,
    clips: torch.Tensor | list[torch.Tensor],
    levels: Sequence[int],
    packed: PackedIndex | None = None,
) -> torch.Tensor:
    """The EMA target's `levels` on the full clip, each layer-normed without affine -> [B, N, L*D]; with
    `packed` (a PackedIndex over every token of clips of several lengths) -> [T, L*D]."""
    outs = target_encoder(clips, levels=list(levels), packed=packed)  # L x [B, N, D] (or [T, D])
    return torch.cat([F.layer_norm(h, (h.shape[-1],)) for h in outs], dim=-1)


def split_levels(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[..., L*D] -> L views [..., D]."""
    if x.shape[-1] % levels:
        raise ValueError(f"{x.shape[-1]} channels do not split into {levels} levels")
    return list(x.chunk(levels, dim=-1))


def layer_norm_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Each level of x [..., L*D] layer-normed (no affine) separately -> [..., L*D]."""
    d = x.shape[-1] // levels
    return F.layer_norm(x.unflatten(-1, (levels, d)), (d,)).flatten(-2)


class LevelFeatures(nn.Module):
    """A frozen encoder whose output is its `levels` side by side, [B, N, L*D]: what `vjepa extract` writes
    with `extract.levels` (and what the probes then read as features of width L*D)."""

    def __init__(self, encoder: nn.Module, levels: Sequence[int]) -> None:
        super().__init__()
        self.encoder, self.levels = encoder, list(levels)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.encoder(clips, levels=self.levels), dim=-1)  # [B, N, L*D]
