"""Boolean token masks to padded index sets, and the random context cap, without per-sample loops.

Shape legend: B batch, N tokens in the grid (time-major), K kept tokens per sample (padded to the max).

Both conversions place every token with one scatter: a running count (cumsum) along the row gives each
selected token its slot, so no per-row sort is needed. Slots are 1-based; column 0 of the scatter buffer
absorbs the tokens that are not kept and is cut off.
"""

from __future__ import annotations

import torch

IndexSet = tuple[torch.Tensor, torch.Tensor]  # ([B, K] int64 ascending token indices, 0-padded; [B, K] bool)


def mask_to_indices(mask_bn: torch.Tensor) -> IndexSet:
    """[B, N] bool -> the selected tokens of each row as a padded index set."""
    b, n = mask_bn.shape
    rank_bn = mask_bn.cumsum(1, dtype=torch.int32)  # 1-based slot of each selected token
    length_b1 = rank_bn[:, -1:]
    k_max = int(length_b1.max())
    slot_bn = (rank_bn * mask_bn).long()  # unselected tokens go to the dropped column 0
    out = torch.zeros(b, k_max + 1, dtype=torch.int64)
    out.scatter_(1, slot_bn, torch.arange(n).expand(b, n))
    return out[:, 1:].contiguous(), torch.arange(k_max, dtype=torch.int32) < length_b1


def split_indices(target_bn: torch.Tensor) -> tuple[IndexSet, IndexSet]:
    """[B, N] bool target -> (context, target) index sets, the context being the complement.

    One scatter fills a [B, 1 + Kt + Kc] buffer: targets to slots 1..Lt, context tokens to Kt+1..Kt+Lc.
    """
    b, n = target_bn.shape
    rank_t_bn = target_bn.cumsum(1, dtype=torch.int32)  # targets up to and including each token
    length_t_b1 = rank_t_bn[:, -1:]
    lo, hi = torch.aminmax(length_t_b1)
    kt, kc = int(hi), n - int(lo)
    # Context tokens up to and including token j number j + 1 - rank_t; shifted past the target slots.
    slot_c_bn = torch.arange(kt + 1, kt + n + 1, dtype=torch.int32) - rank_t_bn
    # slot = target ? rank_t : slot_c, as slot_c + target * (rank_t - slot_c) in int32 (vectorised; int64
    # multiplies and torch.where are several times slower here), widened once for the scatter.
    slot_bn = (rank_t_bn - slot_c_bn).mul_(target_bn).add_(slot_c_bn).long()
    out = torch.zeros(b, 1 + kt + kc, dtype=torch.int64)
    out.scatter_(1, slot_bn, torch.arange(n).expand(b, n))
    target = (out[:, 1 : kt + 1].contiguous(), torch.arange(kt, dtype=torch.int32) < length_t_b1)
    # Context slot j is real when j < n - Lt, i.e. when Lt < n - j.
    context = (
        out[:, kt + 1 :].contiguous(),
        length_t_b1 < torch.arange(n, n - kc, -1, dtype=torch.int32),
    )
    return context, target


def cap_tokens(mask_bn: torch.Tensor, max_tokens: int, *, generator: torch.Generator) -> torch.Tensor:
    """Keeps a uniformly random subset of at most `max_tokens` of each row's selected tokens."""
    if int(mask_bn.sum(1).max()) <= max_tokens:
        return mask_bn
    # Unselected tokens score 2 (> any uniform draw), so the k smallest scores pick selected tokens first.
    score_bn = torch.rand(mask_bn.shape, generator=generator).masked_fill(~mask_bn, 2.0)
    keep_bk = score_bn.topk(max_tokens, dim=1, largest=False).indices
    keep_bn = torch.zeros_like(mask_bn).scatter_(1, keep_bk, True)
    return mask_bn & keep_bn
