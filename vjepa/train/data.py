"""Transition shim: the trainer's old entry to its data stream. The streams live in `data_pipelines`
(`build_train_stream`); this module goes once the trainer calls that directly."""

from __future__ import annotations

from data_pipelines import BatchStream, MaskGenerator, build_train_stream
from vjepa.config import Config


def build_train_data(cfg: Config, *, grid: tuple[int, int, int], rank: int, world_size: int) -> BatchStream:
    """The training stream of rank `rank` for `cfg.data`, with masks from `cfg.mask` on the token grid."""
    masks = MaskGenerator(cfg.mask, grid=grid, seed=cfg.train.seed, rank=rank)
    return build_train_stream(
        cfg.data, mask_generator=masks, seed=cfg.train.seed, rank=rank, world_size=world_size
    )
