"""3D block masks: one block size per batch, block positions per sample, union built by broadcasting.

Shape legend: B batch, K blocks per sample, Tp/Hp/Wp token grid (time, height, width),
L = Tp + Hp + Wp (the three axes' coordinates laid end to end).
"""

from __future__ import annotations

import math

import torch

# Rounds of re-drawing the positions of samples whose blocks leave no free token; each round re-draws
# only the failing samples, so the cost stays near one draw unless the spec is close to impossible.
MAX_ATTEMPTS = 50
# Uniform integers in [0, span) as (uniform int in [0, 2**40)) % span: the modulo bias is < span / 2**40.
_RAND_RANGE = 1 << 40


def draw_block_size(
    *,
    grid: tuple[int, int, int],
    spatial_scale: tuple[float, float],
    temporal_scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int]:
    """One (t, h, w) block size, computed as the reference sampler does.

    Scale and aspect ratio are drawn uniformly (not log-uniformly) in their ranges; the spatial area is
    int(Hp*Wp*scale) tokens, h = round(sqrt(area * ar)), w = round(sqrt(area / ar)), t = int(Tp*t_scale),
    each clipped to [1, grid side].
    """
    tp, hp, wp = grid
    u_t, u_s, u_ar = torch.rand(3, dtype=torch.float64, generator=generator).tolist()
    t_scale = temporal_scale[0] + u_t * (temporal_scale[1] - temporal_scale[0])
    s_scale = spatial_scale[0] + u_s * (spatial_scale[1] - spatial_scale[0])
    ar = aspect_ratio[0] + u_ar * (aspect_ratio[1] - aspect_ratio[0])
    t = min(max(1, int(tp * t_scale)), tp)
    area = int(hp * wp * s_scale)
    h = min(max(1, round(math.sqrt(area * ar))), hp)
    w = min(max(1, round(math.sqrt(area / ar))), wp)
    return t, h, w


def place_blocks(
    size: tuple[int, int, int],
    *,
    grid: tuple[int, int, int],
    batch_size: int,
    num_blocks: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Union of `num_blocks` blocks of `size` at uniform positions per sample: [B, Tp, Hp, Wp] bool."""
    tp, hp, wp = grid
    span = torch.tensor([g - s + 1 for g, s in zip(grid, size)])  # [3] number of start positions per axis
    start_bk3 = torch.randint(0, _RAND_RANGE, (batch_size, num_blocks, 3), generator=generator) % span
    axis = torch.repeat_interleave(torch.arange(3), torch.tensor(grid))  # [L] which axis a coordinate is on
    coord = torch.cat([torch.arange(g) for g in grid])  # [L]
    offset_bkl = coord - start_bk3[..., axis]  # [B, K, L] coordinate relative to the block start
    inside_bkl = ((offset_bkl >= 0) & (offset_bkl < torch.tensor(size)[axis])).to(torch.float32)
    in_t, in_h, in_w = inside_bkl.split(list(grid), dim=2)  # [B, K, Tp], [B, K, Hp], [B, K, Wp]
    th_bkn = (in_t.unsqueeze(3) * in_h.unsqueeze(2)).view(batch_size, num_blocks, tp * hp)
    # Contracting over K counts, per token, how many blocks cover it (exact in float32).
    count_bnw = torch.bmm(th_bkn.transpose(1, 2), in_w)  # [B, Tp*Hp, Wp]
    return (count_bnw > 0).view(batch_size, tp, hp, wp)


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
    hidden = place_blocks(size, grid=grid, batch_size=batch_size, num_blocks=num_blocks, generator=generator)
    for attempt in range(MAX_ATTEMPTS):
        bad_b = hidden[:, :free_steps].reshape(batch_size, -1).all(1)  # [B] samples with no free token
        n_bad = int(bad_b.sum())
        if n_bad == 0:
            return hidden
        if attempt + 1 < MAX_ATTEMPTS:
            hidden[bad_b] = place_blocks(
                size, grid=grid, batch_size=n_bad, num_blocks=num_blocks, generator=generator
            )
    raise ValueError(
        f"mask: {num_blocks} blocks of size (t, h, w)={size} left no context on grid {grid} in "
        f"{MAX_ATTEMPTS} attempts; lower num_blocks, spatial_scale or temporal_scale"
    )
