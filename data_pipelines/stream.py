"""What the trainer reads batches from: the `BatchStream` protocol and the one builder that picks the
stream for a data config.

Every training stream (the file loader, the in-memory synthetic clips) yields `VideoBatch`es for one rank
and carries a resumable position: `state_dict()` taken between batches, restored with `load_state_dict()`
into a stream built from the same config, seed and layout, gives exactly the batches an uninterrupted
stream would have yielded next. `stats()` counts what this rank delivered and skipped; every stream has
at least the keys `clips` and `skipped`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from data_pipelines.batch import MaskFn, VideoBatch
from data_pipelines.config import DataConfig
from data_pipelines.loader import build_loader
from data_pipelines.synthetic_stream import InMemorySynthetic

__all__ = ["BatchStream", "build_train_stream"]


@runtime_checkable
class BatchStream(Protocol):
    """A rank's resumable stream of training batches."""

    def __iter__(self) -> Iterator[VideoBatch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def build_train_stream(
    cfg: DataConfig,
    *,
    mask_generator: MaskFn | None,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    state: dict[str, Any] | None = None,
) -> BatchStream:
    """The training stream of rank `rank` of `world_size` for `cfg.dataset`: rendered clips for
    'synthetic', the file loader over `cfg.sources` for 'files'; restored from `state` (the stream's
    `state_dict()`) when given. Masks come from `mask_generator(batch_size, worker=, step=)`."""
    cfg.validate("data")
    if cfg.dataset != "synthetic":
        return build_loader(
            cfg, mask_generator=mask_generator, seed=seed, rank=rank, world_size=world_size, state=state
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    stream = InMemorySynthetic(cfg, mask_generator=mask_generator, seed=seed, rank=rank)
    if state is not None:
        stream.load_state_dict(state)
    return stream
