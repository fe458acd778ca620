"""The training data stream: the file loader over shards/CSV/folders (`data.dataset=files`), or clips
rendered in memory from the built-in synthetic motion classes (`data.dataset=synthetic`, no files).

Both yield VideoBatch and carry a resumable position (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from data_pipelines.batch import VideoBatch
from data_pipelines.masking import MaskGenerator, mix_seed
from vjepa.config import Config


class InMemorySynthetic:
    """Deterministic batches of rendered motion clips: batch i of rank r depends only on (seed, r, i)."""

    def __init__(self, cfg: Config, *, masks: MaskGenerator, seed: int, rank: int) -> None:
        from data_pipelines.synthetic import CLASS_NAMES

        self.cfg, self.masks, self.seed, self.rank = cfg, masks, seed, rank
        self.num_classes = min(8, len(CLASS_NAMES))
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "synthetic", "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "synthetic":
            raise ValueError(
                f"checkpoint data position is for {state.get('kind')!r}, this run uses 'synthetic'"
            )
        self.position = int(state["position"])

    def stats(self) -> dict[str, Any]:
        """Rendered clips never fail to load; the same keys as the file loader's counters."""
        return {"clips": self.position * self.cfg.data.batch_size, "skipped": 0}

    def make_batch(self, index: int) -> VideoBatch:
        from data_pipelines.synthetic import render_video

        d = self.cfg.data
        rng = np.random.default_rng(mix_seed(self.seed, self.rank, index))
        labels = rng.integers(0, self.num_classes, size=d.batch_size)
        clips = np.stack(
            [render_video(int(y), frames=d.frames_per_clip, size=d.crop_size, rng=rng) for y in labels]
        )  # [B, T, H, W, C]
        return VideoBatch(
            clips=torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous(),  # [B, C, T, H, W]
            labels=torch.from_numpy(labels).long(),
            masks=self.masks(d.batch_size, worker=0, step=index),
            keys=[f"synthetic/{self.rank}/{index}/{i}" for i in range(d.batch_size)],
        )

    def __iter__(self) -> Iterator[VideoBatch]:
        while True:
            batch = self.make_batch(self.position)
            self.position += 1
            yield batch


def build_train_data(cfg: Config, *, grid: tuple[int, int, int], rank: int, world_size: int):
    masks = MaskGenerator(cfg.mask, grid=grid, seed=cfg.train.seed, rank=rank)
    if cfg.data.dataset == "synthetic":
        return InMemorySynthetic(cfg, masks=masks, seed=cfg.train.seed, rank=rank)
    from data_pipelines.loader import build_loader

    return build_loader(cfg.data, mask_generator=masks, seed=cfg.train.seed, rank=rank, world_size=world_size)
