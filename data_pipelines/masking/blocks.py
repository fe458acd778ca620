"""3D block masks: one block size per batch, block positions per sample, union built by broadcasting.

Shape legend: B batch, K blocks per sample, Tp/Hp/Wp token grid (time, height, width),
S start positions of a block along one axis.
"""

from __future__ import annotations

import functools
import math

import torch

from data_pipelines.masking.spec import block_size

# Rounds of re-drawing the positions of samples whose blocks leave no free token; each round re-draws
# only the failing samples, so the cost stays near one draw unless the spec is close to impossible.
MAX_ATTEMPTS = 50


def draw_block_size(
    *,
    grid: tuple[int, int, int],
    spatial_scale: tuple[float, float],
    temporal_scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int]:
    """One (t, h, w) block size, computed as the reference sampler does (`spec.block_size`).

    Scale and aspect ratio are drawn uniformly (not log-uniformly) in their ranges.
    """
    u_t, u_s, u_ar = torch.rand(3, dtype=torch.float64, generator=generator).tolist()
    t_scale = temporal_scale[0] + u_t * (temporal_scale[1] - temporal_scale[0])
    s_scale = spatial_scale[0] + u_s * (spatial_scale[1] - spatial_scale[0])
    ar = aspect_ratio[0] + u_ar * (aspect_ratio[1] - aspect_ratio[0])
    return block_size(grid, t_scale=t_scale, s_scale=s_scale, ar=ar)


@functools.lru_cache(maxsize=1024)
def _axis_placements(length: int, extent: int) -> torch.Tensor:
    """Row s is the indicator of [s, s + extent) on an axis of `length`: [S, length] float 0/1, S =
    length - extent + 1. Cached (tiny, never written to): one block size recurs over many batches."""
    start_s1 = torch.arange(length - extent + 1).unsqueeze(1)
    coord_l = torch.arange(length)
    return ((coord_l >= start_s1) & (coord_l < start_s1 + extent)).to(torch.float32)


def place_blocks(
    size: tuple[int, int, int],
    *,
    grid: tuple[int, int, int],
    batch_size: int,
    num_blocks: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """How many of `num_blocks` blocks of `size`, at uniform positions per sample, cover each token.

    Returns [B, Tp, Hp, Wp] float32 counts (exact small integers); > 0 is the union of the blocks.
    """
    tp, hp, wp = grid
    inside = []  # per axis [B, K, length] float 0/1: the coordinates inside each block
    for length, extent in zip(grid, size):
        table = _axis_placements(length, extent)
        start = torch.randint(0, table.shape[0], (batch_size * num_blocks,), generator=generator)
        inside.append(table.index_select(0, start).view(batch_size, num_blocks, length))
    in_t, in_h, in_w = inside
    th_bkn = (in_t.unsqueeze(3) * in_h.unsqueeze(2)).view(batch_size, num_blocks, tp * hp)
    count_bnw = torch.bmm(th_bkn.transpose(1, 2), in_w)  # [B, Tp*Hp, Wp], contracted over the K blocks
    return count_bnw.view(batch_size, tp, hp, wp)


def min_cover(size: tuple[int, int, int], region: tuple[int, int, int]) -> int:
    """A lower bound on the number of `size` blocks that can cover a `region` (t, h, w) of tokens.

    The lattice points (i*t, j*h, k*w) inside the region are ceil(T/t) * ceil(H/h) * ceil(W/w), and a
    t x h x w block contains at most one of them.
    """
    return math.prod(-(-r // s) for r, s in zip(region, size))


def draw_block_union(
    size: tuple[int, int, int],
    *,
    grid: tuple[int, int, int],
    batch_size: int,
    num_blocks: int,
    generator: torch.Generator,
    free_steps: int | None = None,
) -> torch.Tensor:
    """Like `place_blocks`, re-drawing samples until each leaves a token of the first `free_steps`
    time steps (default: all) uncovered, so that the context is never empty: [B, Tp, Hp, Wp] bool.

    Raises ValueError when one block covers the whole grid or when MAX_ATTEMPTS rounds fail.
    """
    tp, hp, wp = grid
    free_steps = tp if free_steps is None else free_steps
    if tuple(size) == tuple(grid):
        raise ValueError(
            f"mask block size (t, h, w)={size} covers the whole token grid {grid}: the context would be "
            "empty; lower spatial_scale / temporal_scale"
        )
    count = place_blocks(size, grid=grid, batch_size=batch_size, num_blocks=num_blocks, generator=generator)
    if num_blocks < min_cover(size, (min(tp, free_steps), hp, wp)):
        return count > 0  # too few blocks to ever cover the free region: no check needed
    for attempt in range(MAX_ATTEMPTS):
        bad_b = count[:, :free_steps].reshape(batch_size, -1).amin(1) > 0  # [B] samples with no free token
        n_bad = int(bad_b.sum())
        if n_bad == 0:
            return count > 0
        if attempt + 1 < MAX_ATTEMPTS:
            count[bad_b] = place_blocks(
                size, grid=grid, batch_size=n_bad, num_blocks=num_blocks, generator=generator
            )
    raise ValueError(
        f"mask: {num_blocks} blocks of size (t, h, w)={size} left no context on grid {grid} in "
        f"{MAX_ATTEMPTS} attempts; lower num_blocks, spatial_scale or temporal_scale"
    )
