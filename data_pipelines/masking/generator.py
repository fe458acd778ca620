"""Drawing one MaskBatch per mask configuration, with randomness seeded per (seed, rank, worker, step)."""

from __future__ import annotations

import hashlib

import torch

from data_pipelines.batch import MaskBatch
from data_pipelines.masking.indices import cap_tokens, mask_to_indices, split_indices
from data_pipelines.masking.samplers import SAMPLERS
from data_pipelines.masking.spec import MaskSpec


def check_grid(grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """The token grid (Tp, Hp, Wp) as three positive ints, else a ValueError naming `grid`."""
    if len(grid) != 3 or any(not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid: expected three positive ints (Tp, Hp, Wp), got {grid!r}")
    return (grid[0], grid[1], grid[2])


def draw_masks(
    specs: list[MaskSpec], *, grid: tuple[int, int, int], batch_size: int, generator: torch.Generator
) -> list[MaskBatch]:
    """One MaskBatch per spec for a batch of clips on the token grid (Tp, Hp, Wp); CPU tensors."""
    grid = check_grid(grid)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    out = []
    for i, spec in enumerate(specs):
        spec.validate(f"mask.{i}")
        context_bn, target_bn = SAMPLERS[spec.kind](
            spec, grid=grid, batch_size=batch_size, generator=generator
        )
        if spec.max_context_tokens is not None:
            context_bn = ~target_bn if context_bn is None else context_bn
            context_bn = cap_tokens(context_bn, spec.max_context_tokens, generator=generator)
        if context_bn is None:
            context, target = split_indices(target_bn)
        else:
            context, target = mask_to_indices(context_bn), mask_to_indices(target_bn)
        out.append(MaskBatch(*context, *target))
    return out


def mix_seed(*parts: int) -> int:
    """A 64-bit seed from a tuple of ints; nearby tuples give unrelated seeds (and so streams)."""
    key = repr(("vjepa.masks", *(int(p) for p in parts)))  # int(): numpy ints repr differently
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class MaskGenerator:
    """Reproducible masks: the draw for (seed, rank, worker, step) never depends on earlier calls.

    A resumed run therefore draws exactly the masks an uninterrupted one would, and ranks and data-loader
    workers draw independent masks.

    Runs of several clip lengths pass `frames=T`: the masks are drawn on that length's grid (T / tubelet
    time steps; one for an image, T = 1), with a stream of their own per length (the built grid's length
    draws exactly what a one-length run draws).
    """

    def __init__(
        self,
        specs: list[MaskSpec],
        *,
        grid: tuple[int, int, int],
        seed: int,
        rank: int = 0,
        tubelet: int | None = None,
    ) -> None:
        for i, spec in enumerate(specs):
            spec.validate(f"mask.{i}")
        self.specs = list(specs)
        self.grid = check_grid(grid)
        self.seed = seed
        self.rank = rank
        self.tubelet = tubelet  # frames per time token: needed for `frames=`

    def grid_for(self, frames: int) -> tuple[int, int, int]:
        """The token grid of a clip of `frames` frames (an image, 1 frame, is one tubelet)."""
        if self.tubelet is None:
            raise ValueError("MaskGenerator: masks per clip length need the tubelet size (tubelet=)")
        if frames != 1 and frames % self.tubelet:
            raise ValueError(f"a clip of {frames} frames is not divisible by tubelet {self.tubelet}")
        return check_grid((max(1, frames // self.tubelet), self.grid[1], self.grid[2]))

    def generator_for(self, *, worker: int, step: int, time_steps: int | None = None) -> torch.Generator:
        parts = (self.seed, self.rank, worker, step)
        if time_steps is not None and time_steps != self.grid[0]:
            parts = (*parts, time_steps)  # another clip length: an independent stream
        return torch.Generator().manual_seed(mix_seed(*parts))

    def __call__(
        self, batch_size: int, *, worker: int, step: int, frames: int | None = None
    ) -> list[MaskBatch]:
        grid = self.grid if frames is None else self.grid_for(frames)
        generator = self.generator_for(worker=worker, step=step, time_steps=grid[0])
        return draw_masks(self.specs, grid=grid, batch_size=batch_size, generator=generator)
