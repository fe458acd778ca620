"""The in-memory synthetic training stream (`data.dataset=synthetic`): batches of clips rendered from the
built-in motion classes, no files and no decoding.

Shape legend: B batch (data.batch_size), T frames (data.frames_per_clip), S pixels (data.crop_size).

Batch i of rank r depends only on (seed, r, i), so the position is one counter and resuming at it gives
the batches an uninterrupted run would have seen. Clips come out uint8 like the file loader's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from data_pipelines.batch import MaskFn, VideoBatch
from data_pipelines.config import DataConfig
from data_pipelines.masking import mix_seed

__all__ = ["InMemorySynthetic"]

MAX_CLASSES = 8  # labels are drawn from the first motion classes


class InMemorySynthetic:
    """Deterministic batches of rendered motion clips for one rank; a `BatchStream` that never ends."""

    def __init__(self, cfg: DataConfig, *, mask_generator: MaskFn | None, seed: int, rank: int = 0) -> None:
        # the generator module is imported on first use: it also holds the dataset writer (PyAV)
        from data_pipelines.synthetic import CLASS_NAMES

        self.cfg, self.mask_generator, self.seed, self.rank = cfg, mask_generator, seed, rank
        self.num_classes = min(MAX_CLASSES, len(CLASS_NAMES))
        self.position = 0  # batches delivered

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
        return {"clips": self.position * self.cfg.batch_size, "skipped": 0}

    def make_batch(self, index: int) -> VideoBatch:
        """Batch `index` of this rank (any index, in any order)."""
        from data_pipelines.synthetic import render_video

        c = self.cfg
        rng = np.random.default_rng(mix_seed(self.seed, self.rank, index))
        labels = rng.integers(0, self.num_classes, size=c.batch_size)
        clips = np.stack(
            [render_video(int(y), frames=c.frames_per_clip, size=c.crop_size, rng=rng) for y in labels]
        )  # [B, T, S, S, 3]
        masks = [] if self.mask_generator is None else self.mask_generator(c.batch_size, worker=0, step=index)
        return VideoBatch(
            clips=torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous(),  # [B, 3, T, S, S]
            labels=torch.from_numpy(labels).long(),
            masks=masks,
            keys=[f"synthetic/{self.rank}/{index}/{i}" for i in range(c.batch_size)],
        )

    def __iter__(self) -> Iterator[VideoBatch]:
        while True:
            batch = self.make_batch(self.position)
            self.position += 1
            yield batch
