"""Analytic FLOP counts of a V-JEPA step on the real (unpadded) tokens, for MFU and the step benchmark.

A multiply-add is 2 FLOPs; only matmuls count (norms, GELU, softmax, the optimizer are left out):
  - a linear layer with a [fan_in, fan_out] weight on R rows: 2 * R * fan_in * fan_out
    (per transformer block of width D and MLP width F: 2 * R * (4 D^2 + 2 D F) for qkv, proj, fc1, fc2);
  - attention over a sequence of L tokens of width D: 4 * L^2 * D (q k^T and the weighted sum of v);
  - the tubelet embedding: a linear layer with fan_in = C * tubelet * patch^2 on every grid token;
  - backward = 2 x forward, so a trained part costs 3 x its forward.
One step = target forward on all B*N grid tokens + 3 x (context encoder forward on the packed context
sequences, patch embedding of the B*N tokens included + predictor forward: embed on the context rows, blocks
on each context + target sequence, proj on the target rows).

Shape legend: B batch, N grid tokens, S sequences (sample x mask configuration).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TowerShape:
    """What the FLOP count needs of a transformer tower."""

    width: int
    hidden: int  # MLP width
    depth: int

    @staticmethod
    def of(blocks: nn.ModuleList) -> TowerShape:
        first = blocks[0]
        return TowerShape(first.mlp.fc1.in_features, first.mlp.fc1.out_features, len(blocks))


def block_flops(tokens: torch.Tensor, width: int, hidden: int, depth: int) -> float:
    """Forward FLOPs of `depth` blocks over sequences of `tokens` [S] tokens each."""
    t = tokens.double()
    return float(depth * (t * 2 * (4 * width * width + 2 * width * hidden) + 4 * t * t * width).sum())


def tower_flops(shape: TowerShape, lengths: torch.Tensor) -> float:
    return block_flops(lengths, shape.width, shape.hidden, shape.depth)


@dataclass(frozen=True)
class StepFlops:
    target_forward: float
    encoder_forward: float
    predictor_forward: float

    @property
    def total(self) -> float:
        """The whole step: the target forward plus forward and backward of encoder and predictor."""
        return self.target_forward + 3 * (self.encoder_forward + self.predictor_forward)


def step_flops(
    encoder: nn.Module,
    predictor: nn.Module,
    *,
    batch: int = 0,
    grid_tokens: int = 0,
    context_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    groups: list[tuple[int, int]] | None = None,
) -> StepFlops:
    """FLOPs of one step whose sequence s has context_lengths[s] context and target_lengths[s] target tokens,
    on `batch` clips of `grid_tokens` tokens, or on `groups` of (clips, grid tokens) of several clip lengths."""
    enc, pred = TowerShape.of(encoder.blocks), TowerShape.of(predictor.predictor_blocks)
    patch = encoder.patch_embed.proj
    patch_fan_in = patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1] * patch.kernel_size[2]
    groups = [(batch, grid_tokens)] if groups is None else groups
    tokens = sum(b * n for b, n in groups)  # every grid token of every clip
    embed = 2.0 * tokens * patch_fan_in * enc.width  # the tubelet embedding of every clip
    full = sum(tower_flops(enc, torch.full((b,), n)) for b, n in groups)
    ctx, tgt = context_lengths.double(), target_lengths.double()
    linear = 2.0 * enc.width * pred.width * float(ctx.sum() + tgt.sum())  # predictor_embed, predictor_proj
    return StepFlops(
        target_forward=embed + full,
        encoder_forward=embed + tower_flops(enc, ctx),
        predictor_forward=linear + tower_flops(pred, ctx + tgt),
    )
