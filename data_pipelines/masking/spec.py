"""The typed description of one mask configuration (one entry of the config's `mask:` list)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from data_pipelines.checks import check_choices, check_range

MaskKind = Literal["multiblock", "tube", "future"]
MASK_KINDS: tuple[str, ...] = typing.get_args(MaskKind)


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
        check_choices(self, prefix)
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


def default_mask_specs() -> list[MaskSpec]:
    """V-JEPA's two configurations: short-range (8 x 15 %) and long-range (2 x 70 %), full time."""
    return [
        MaskSpec(kind="multiblock", num_blocks=8, spatial_scale=(0.15, 0.15)),
        MaskSpec(kind="multiblock", num_blocks=2, spatial_scale=(0.7, 0.7)),
    ]
