"""The typed description of one mask configuration (one entry of the config's `mask:` list)."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal

from data_pipelines.checks import check, check_fields, check_range

MaskKind = Literal["multiblock", "tube", "future"]
MASK_KINDS: tuple[str, ...] = typing.get_args(MaskKind)
# Below this chance that one draw of the blocks leaves a context token, the sampler's re-draws (50 rounds)
# still fail for a sample in most batches: the run would stop within its first steps.
MIN_CONTEXT_CHANCE = 0.05


@dataclass
class MaskSpec:
    """One mask configuration; `kind` selects multiblock, tube or future. Each gets its own mask token.

    multiblock: `num_blocks` blocks of one size per batch (spatial_scale x aspect_ratio x temporal_scale),
      placed independently per sample; their union is the target, the rest the context. The aspect ratio
      is drawn uniformly from `aspect_ratio` (as in the reference sampler).
    tube: one random spatial pattern per sample hiding `ratio` of the Hp*Wp positions at every time step.
    future: the first `context_fraction` of time steps is the context, the later ones the target;
      `future_blocks` > 0 also removes that many spatial blocks (spatial_scale, aspect_ratio,
      temporal_scale of the context span) from the context; those tokens are dropped, not predicted.
    `max_context_tokens` caps the context of any kind at a random subset of that size.
    """

    kind: MaskKind = "multiblock"
    # multiblock (and the optional spatial blocks of `future`)
    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)  # fraction of the spatial grid per block
    temporal_scale: tuple[float, float] = (1.0, 1.0)  # fraction of the time steps per block
    aspect_ratio: tuple[float, float] = (0.75, 1.5)  # block height / width, drawn uniformly
    max_context_tokens: int | None = None  # optional cap on kept context tokens (random subset)
    max_temporal_keep: float = 1.0  # multiblock: context limited to the first fraction of time steps
    # tube
    ratio: float = 0.9  # hidden fraction of the spatial grid
    # future
    context_fraction: float = 0.5  # first fraction of time steps given as context
    future_blocks: int = 0  # spatial blocks also removed from the context (not targets)

    def validate(self, prefix: str) -> None:
        """Raises ValueError naming `prefix.field` for the first out-of-range field."""
        check_fields(self, prefix)
        if self.num_blocks < 1:
            raise ValueError(f"{prefix}.num_blocks: must be >= 1, got {self.num_blocks}")
        check_range(self.spatial_scale, f"{prefix}.spatial_scale", lo=0.0, hi=1.0)
        check_range(self.temporal_scale, f"{prefix}.temporal_scale", lo=0.0, hi=1.0)
        check_range(self.aspect_ratio, f"{prefix}.aspect_ratio", lo=0.0, hi=float("inf"))
        if self.max_context_tokens is not None and self.max_context_tokens < 1:
            raise ValueError(
                f"{prefix}.max_context_tokens: must be None or >= 1, got {self.max_context_tokens}"
            )
        if not 0.0 < self.max_temporal_keep <= 1.0:
            raise ValueError(f"{prefix}.max_temporal_keep: must be in (0, 1], got {self.max_temporal_keep}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"{prefix}.ratio: must be in (0, 1), got {self.ratio}")
        if not 0.0 < self.context_fraction < 1.0:
            raise ValueError(f"{prefix}.context_fraction: must be in (0, 1), got {self.context_fraction}")
        if self.future_blocks < 0:
            raise ValueError(f"{prefix}.future_blocks: must be >= 0, got {self.future_blocks}")

    def future_context_steps(self, tp: int) -> int:
        """future: the time steps given as context, int(Tp * context_fraction) kept within [1, Tp - 1]."""
        return min(max(1, int(tp * self.context_fraction)), tp - 1)

    def check_grid(self, grid: tuple[int, int, int], prefix: str, *, grid_from: str = "") -> None:
        """ValueError naming `prefix` when this mask can leave no context on the token grid (Tp, Hp, Wp):
        a tube mask on one spatial position, a future mask on one time step, or blocks that may cover the
        whole grid (multiblock) or the whole context span (future with `future_blocks`), or so many blocks
        that hardly any draw leaves a token free. Found here, when the config loads, rather than at the
        first batch that draws such blocks."""
        tp, hp, wp = grid
        where = f"the token grid (Tp, Hp, Wp)={grid}" + (f" (from {grid_from})" if grid_from else "")
        if self.kind == "tube":
            check(hp * wp >= 2, prefix, f"a tube mask needs at least 2 spatial positions; {where} has 1")
            return
        if self.kind == "future":
            check(tp >= 2, prefix, f"a future mask needs at least 2 time steps; {where} has Tp={tp}")
            if self.future_blocks == 0:
                return
            region = (self.future_context_steps(tp), hp, wp)
            what = f"the whole context span {region} of {where}"
            blocks, free_steps, count_key = self.future_blocks, region[0], "future_blocks"
        else:
            region = grid
            what = f"all of {where}"
            blocks, free_steps, count_key = (
                self.num_blocks,
                max(1, int(tp * self.max_temporal_keep)),
                "num_blocks",
            )
        size = self.covering_block(region)
        check(
            size is None,
            prefix,
            f"a block of (t, h, w)={size} covers {what}: no context would be left; lower "
            f"{prefix}.spatial_scale or {prefix}.temporal_scale, or use more frames or a larger crop",
        )
        chance = self.context_chance(region, free_steps=free_steps, num_blocks=blocks)
        check(
            chance >= MIN_CONTEXT_CHANCE,
            prefix,
            f"{blocks} blocks cover {what} in nearly every draw (at most {chance:.1%} of draws leave context; "
            f"the sampler's re-draws would fail within the first batches); lower {prefix}.{count_key}, "
            f"{prefix}.spatial_scale or {prefix}.temporal_scale",
        )

    def context_chance(self, region: tuple[int, int, int], *, free_steps: int, num_blocks: int) -> float:
        """An upper bound on the chance that `num_blocks` blocks at uniform positions in `region` leave a
        token of its first `free_steps` time steps uncovered, for the smallest blocks this spec draws (the
        most favourable): the sum over those tokens of P(no block covers it) = (1 - p_token)^K."""
        lo, hi = self.aspect_ratio
        best = 0.0
        for ar in (lo, (lo + hi) / 2, hi):
            size = block_size(region, t_scale=self.temporal_scale[0], s_scale=self.spatial_scale[0], ar=ar)
            p_t, p_h, p_w = (_cover_fractions(n, e) for n, e in zip(region, size))
            total = 0.0
            for a in p_t[:free_steps]:
                for b in p_h:
                    total += sum((1.0 - a * b * c) ** num_blocks for c in p_w)
                if total >= 1.0:
                    return 1.0
            best = max(best, total)
        return best

    def covering_block(self, region: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """A block size this spec can draw that covers all of `region`, else None. Block sides grow with
        both scales, so the largest scales are the ones to try, over the aspect ratios where a side changes
        (`block_size` is a step function of the ratio)."""
        tp, hp, wp = region
        t_scale, s_scale = self.temporal_scale[1], self.spatial_scale[1]
        area = max(int(hp * wp * s_scale), 1)
        # h is full from about ar = (Hp - 1/2)^2 / area up, w up to area / (Wp - 1/2)^2: try the ends of that
        # range within aspect_ratio (nudged inwards past round()'s ties) and its middle
        lo = max(self.aspect_ratio[0], (hp - 0.5) ** 2 / area * (1 + 1e-9))
        hi = min(self.aspect_ratio[1], area / (wp - 0.5) ** 2 * (1 - 1e-9))
        for ar in (lo, (lo + hi) / 2, hi) if lo <= hi else ():
            size = block_size(region, t_scale=t_scale, s_scale=s_scale, ar=ar)
            if size == region:
                return size
        return None


def _cover_fractions(length: int, extent: int) -> list[float]:
    """For each coordinate of an axis, the fraction of a block's uniform start positions that cover it."""
    starts = length - extent + 1
    return [(min(i, starts - 1) - max(0, i - extent + 1) + 1) / starts for i in range(length)]


def block_size(
    grid: tuple[int, int, int], *, t_scale: float, s_scale: float, ar: float
) -> tuple[int, int, int]:
    """The (t, h, w) block for one draw of the scales and aspect ratio, as the reference sampler computes
    it: the spatial area is int(Hp*Wp*scale) tokens, h = round(sqrt(area * ar)), w = round(sqrt(area / ar)),
    t = int(Tp*t_scale), each clipped to [1, grid side]."""
    tp, hp, wp = grid
    t = min(max(1, int(tp * t_scale)), tp)
    area = int(hp * wp * s_scale)
    h = min(max(1, round(math.sqrt(area * ar))), hp)
    w = min(max(1, round(math.sqrt(area / ar))), wp)
    return t, h, w


def default_mask_specs() -> list[MaskSpec]:
    """V-JEPA's two configurations: short-range (8 x 15 %) and long-range (2 x 70 %), full time."""
    return [
        MaskSpec(kind="multiblock", num_blocks=8, spatial_scale=(0.15, 0.15)),
        MaskSpec(kind="multiblock", num_blocks=2, spatial_scale=(0.7, 0.7)),
    ]
