"""Packed token sets: variable-length index sets (one per sequence: a sample under one mask configuration)
laid end to end, so that the blocks see one [T, D] tensor with no padding rows.

Shape legend: B batch, N grid tokens, K padded set size, S sequences, T packed rows, D width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vjepa.layers.varlen import VarlenLayout


@dataclass(eq=False)
class PackedIndex:
    """Row r of a packed tensor is grid token `token[r]` of clip `sample[r]`; sequence s is `layout`'s s-th
    row range. `group[r]` is the mask configuration of row r (its mask token in the predictor)."""

    sample: torch.Tensor  # [T] int64
    token: torch.Tensor  # [T] int64
    group: torch.Tensor  # [T] int64
    layout: VarlenLayout

    @property
    def total(self) -> int:
        return self.layout.total

    @staticmethod
    def from_padded(
        idx: torch.Tensor, valid: torch.Tensor | None, group: int = 0, sample_offset: int = 0
    ) -> PackedIndex:
        """One sequence per sample from padded sets idx [B, K] (valid [B, K], None: every row is real); rows
        in row-major order, as `x[valid]` takes them. Sample i is clip `sample_offset + i` (a batch of several
        clip lengths numbers its clips across its groups, see `flat_tokens`)."""
        b, k = idx.shape
        if valid is None:
            valid = torch.ones_like(idx, dtype=torch.bool)
        sample = sample_offset + torch.arange(b, device=idx.device)[:, None].expand(b, k)  # [B, K]
        lengths = tuple(int(n) for n in valid.sum(dim=1).tolist())
        return PackedIndex(
            sample=sample[valid],
            token=idx[valid],
            group=torch.full((sum(lengths),), group, dtype=torch.int64, device=idx.device),
            layout=VarlenLayout(lengths, device=idx.device),
        )

    @staticmethod
    def cat(parts: list[PackedIndex]) -> PackedIndex:
        """The sequences of parts[0], then those of parts[1], ..."""
        return PackedIndex(
            sample=torch.cat([p.sample for p in parts]),
            token=torch.cat([p.token for p in parts]),
            group=torch.cat([p.group for p in parts]),
            layout=VarlenLayout(
                tuple(n for p in parts for n in p.layout.lengths), device=parts[0].layout.device
            ),
        )

    def flat(self, num_tokens: int) -> torch.Tensor:
        """Row indices into a [B*N, D] view of per-clip token grids -> [T] int64."""
        return self.sample * num_tokens + self.token

    def gather(self, grid_tokens: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """grid_tokens [B, N, D], or one [Bg, Ng, D] per clip length (clips numbered across the groups in
        order) -> packed rows [T, D]."""
        if isinstance(grid_tokens, torch.Tensor):
            b, n, d = grid_tokens.shape
            return grid_tokens.reshape(b * n, d).index_select(0, self.flat(n))  # [T, D]
        rows, first = flat_tokens(grid_tokens)  # [R, D], [S]
        return rows.index_select(0, first.index_select(0, self.sample) + self.token)  # [T, D]


def flat_tokens(groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token grids of several clip lengths [Bg, Ng, D] -> (every token as one row [R, D], R = sum Bg*Ng;
    the row of each clip's first token [S] int64, clips numbered across the groups in order)."""
    rows = torch.cat([g.flatten(0, 1) for g in groups])  # [R, D]
    sizes = torch.tensor([g.shape[1] for g in groups for _ in range(g.shape[0])], device=rows.device)
    first = torch.cumsum(sizes, 0) - sizes  # [S]
    return rows, first


@dataclass(eq=False)
class PackedMasks:
    """The context and target sets of a batch under any number of mask configurations; sequence s of `context`
    and sequence s of `target` are one sample under one configuration."""

    context: PackedIndex
    target: PackedIndex

    def __post_init__(self) -> None:
        kc, kt = len(self.context.layout.lengths), len(self.target.layout.lengths)
        if kc != kt:
            raise ValueError(f"{kc} context sequences for {kt} target sequences")


def unpack(packed: torch.Tensor, valid: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Back to the padded layout of `PackedIndex.from_padded`: packed [T, D] -> [B, K, D], zeros on padding."""
    if valid is None:
        return packed.reshape(batch, -1, packed.shape[-1])  # [B, K, D]
    out = packed.new_zeros(*valid.shape, packed.shape[-1])  # [B, K, D]
    out[valid] = packed
    return out


def interleave(first: PackedIndex, second: PackedIndex) -> tuple[PackedIndex, torch.Tensor, torch.Tensor]:
    """Sequence s of the result is sequence s of `first` followed by sequence s of `second` (the predictor's
    context then target tokens). -> (packed index; `order` [T1+T2]: packed row r is row order[r] of the
    concatenation [first; second]; where each row of `second` went [T2])."""
    a, b = first.layout.lengths, second.layout.lengths
    if len(a) != len(b):
        raise ValueError(f"cannot interleave {len(a)} sequences with {len(b)}")
    seq = torch.cat([first.layout.sequence_ids(), second.layout.sequence_ids()])  # [T1+T2]
    order = torch.argsort(seq, stable=True)  # packed row -> source row (first's rows before second's)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device)  # source row -> packed row
    t1 = first.total
    packed = PackedIndex(
        sample=torch.cat([first.sample, second.sample])[order],
        token=torch.cat([first.token, second.token])[order],
        group=torch.cat([first.group, second.group])[order],
        layout=VarlenLayout(tuple(x + y for x, y in zip(a, b)), device=first.layout.device),
    )
    return packed, order, position[t1:]
