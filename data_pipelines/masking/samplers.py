"""The three mask kinds, each drawing a whole batch of (context, target) token masks at once.

Shape legend: B batch, Tp/Hp/Wp token grid (time, height, width), S = Hp*Wp spatial positions,
N = Tp*Hp*Wp tokens (time-major: index = t*Hp*Wp + h*Wp + w).
Every sampler returns (context [B, N] bool, target [B, N] bool), disjoint, neither empty in any row;
a context of None means "the complement of the target" (converted to indices in one pass).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from data_pipelines.masking.blocks import draw_block_size, draw_block_union
from data_pipelines.masking.spec import MaskSpec

Sampler = Callable[..., tuple[torch.Tensor | None, torch.Tensor]]


def _block_size(
    spec: MaskSpec, grid: tuple[int, int, int], generator: torch.Generator
) -> tuple[int, int, int]:
    return draw_block_size(
        grid=grid,
        spatial_scale=spec.spatial_scale,
        temporal_scale=spec.temporal_scale,
        aspect_ratio=spec.aspect_ratio,
        generator=generator,
    )


def sample_multiblock(
    spec: MaskSpec, *, grid: tuple[int, int, int], batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Target = union of `num_blocks` blocks (size per batch, positions per sample); context = the rest.

    With max_temporal_keep < 1 the time steps after the first fraction are also target, as in the
    reference, so context and target still cover the grid.
    """
    tp = grid[0]
    keep_t = max(1, int(tp * spec.max_temporal_keep))
    size = _block_size(spec, grid, generator)
    hidden = draw_block_union(
        size,
        grid=grid,
        batch_size=batch_size,
        num_blocks=spec.num_blocks,
        generator=generator,
        free_steps=keep_t,
    )  # [B, Tp, Hp, Wp]
    if keep_t < tp:
        hidden[:, keep_t:] = True
    return None, hidden.view(batch_size, -1)


def sample_tube(
    spec: MaskSpec, *, grid: tuple[int, int, int], batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Hides round(ratio * S) random spatial positions per sample (kept within [1, S-1]) at every time."""
    tp, hp, wp = grid
    s = hp * wp
    if s < 2:
        raise ValueError(f"tube mask needs at least 2 spatial positions, grid {grid} has {s}")
    n_hide = min(max(1, round(spec.ratio * s)), s - 1)
    score_bs = torch.rand(batch_size, s, generator=generator)
    hide_bk = score_bs.topk(n_hide, dim=1).indices
    hidden_bs = torch.zeros(batch_size, s, dtype=torch.bool).scatter_(1, hide_bk, True)
    target = hidden_bs.unsqueeze(1).expand(batch_size, tp, s).reshape(batch_size, tp * s)
    return None, target


def sample_future(
    spec: MaskSpec, *, grid: tuple[int, int, int], batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Context = the first int(Tp * context_fraction) time steps (in [1, Tp-1]), target = the later ones.

    `future_blocks` > 0 removes that many blocks (drawn inside the context span) from the context; those
    tokens are neither context nor target, so no target token is earlier than a context token.
    """
    tp, hp, wp = grid
    if tp < 2:
        raise ValueError(f"future mask needs at least 2 time steps, grid {grid} has Tp={tp}")
    ctx_t = spec.future_context_steps(tp)
    is_ctx_time = (torch.arange(tp) < ctx_t).view(1, tp, 1, 1)
    context = is_ctx_time.expand(batch_size, *grid).clone()  # [B, Tp, Hp, Wp]
    target = ~context
    if spec.future_blocks > 0:
        ctx_grid = (ctx_t, hp, wp)
        size = _block_size(spec, ctx_grid, generator)
        hidden = draw_block_union(
            size, grid=ctx_grid, batch_size=batch_size, num_blocks=spec.future_blocks, generator=generator
        )
        context[:, :ctx_t] &= ~hidden
    return context.flatten(1), target.flatten(1)


SAMPLERS: dict[str, Sampler] = {
    "multiblock": sample_multiblock,
    "tube": sample_tube,
    "future": sample_future,
}
