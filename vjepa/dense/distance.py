"""Distance of every visible token to the nearest target token of its sequence (a sample under one mask
configuration), on the token grid: Euclidean over (time step, row, column) in token units, as published
V-JEPA 2.1 computes it for its distance-weighted context loss.

Exact and vectorised: each sequence's target coordinates are laid out padded [S, Kt, 3], and the context rows
are compared with every target of their own sequence in chunks of rows, so memory stays bounded whatever
the batch (about `budget` elements per chunk) and nothing loops over tokens in Python.

Shape legend: S sequences, Tc/Tt packed context/target rows, Kt most target rows of one sequence.
"""

from __future__ import annotations

import torch

from vjepa.layers.varlen import VarlenLayout


def _row_positions(layout: VarlenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence, position within its sequence) of every packed row, each [T] int64."""
    seq = layout.sequence_ids()
    return seq, torch.arange(layout.total, device=seq.device) - layout.offsets()[seq]


@torch.no_grad()
def nearest_target_distance(
    context_xyz: torch.Tensor,
    context_layout: VarlenLayout,
    target_xyz: torch.Tensor,
    target_layout: VarlenLayout,
    *,
    budget: int = 1 << 22,
) -> torch.Tensor:
    """context_xyz [Tc, 3] and target_xyz [Tt, 3] integer (t, h, w) coordinates of packed rows; sequence s
    of either layout is the same sample and configuration. -> distance [Tc] float32 from each context row to
    the nearest target row of its sequence (inf where the sequence has no target row)."""
    if len(context_layout.lengths) != len(target_layout.lengths):
        raise ValueError(
            f"{len(context_layout.lengths)} context sequences for {len(target_layout.lengths)} target ones"
        )
    tc, device = context_layout.total, context_xyz.device
    kt = max(target_layout.lengths, default=0)
    if tc == 0 or kt == 0:
        return torch.full((tc,), float("inf"), device=device)
    s = len(target_layout.lengths)
    t_seq, t_pos = _row_positions(target_layout)
    padded = target_xyz.new_zeros(s, kt, 3, dtype=torch.float32)  # [S, Kt, 3]
    padded[t_seq, t_pos] = target_xyz.float()
    real = torch.zeros(s, kt, dtype=torch.bool, device=device)  # [S, Kt]
    real[t_seq, t_pos] = True
    c_seq = context_layout.sequence_ids()  # [Tc]
    c_xyz = context_xyz.float()
    rows = max(1, budget // (3 * kt))
    out = []
    for start in range(0, tc, rows):
        seq = c_seq[start : start + rows]  # [c]
        diff = c_xyz[start : start + rows, None, :] - padded[seq]  # [c, Kt, 3]
        d2 = diff.square().sum(-1).masked_fill(~real[seq], float("inf"))  # [c, Kt]; exact for grid integers
        out.append(d2.amin(dim=1))
    return torch.cat(out).sqrt()  # [Tc]
