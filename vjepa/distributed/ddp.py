"""Plain data parallelism: the JepaModel (encoder + predictor) wrapped in DistributedDataParallel.

Every rank holds full replicas. The forward goes through the DDP wrapper (JepaModel.forward is the whole
loss), so gradients are averaged across ranks during backward. The fp32 EMA target is replicated and
updated locally: parameters are identical on every rank after each step, so the targets stay identical
with no communication.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vjepa.config import Config
from vjepa.distributed.engine import SingleEngine
from vjepa.distributed.process_group import all_true
from vjepa.models.jepa import JepaModel


def _no_buffer_sync() -> dict[str, bool]:
    """The DDP argument that turns off the per-forward buffer broadcast (renamed in recent torch)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class DDPEngine(SingleEngine):
    def __init__(self, cfg: Config, model: JepaModel, device: torch.device) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "DDPEngine needs a started process group (see vjepa.distributed.process_group)"
            )
        model = model.to(device)
        # DDP broadcasts rank 0's parameters and buffers here, so the target copied below is rank 0's too.
        # The buffers (fixed position tables) never change, so they are not re-sent at every forward.
        wrapped = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync()
        )
        super().__init__(cfg, model, device)
        self.model = wrapped
        self.rank = dist.get_rank()

    def barrier(self) -> None:
        dist.barrier()

    def all_finite(self, flag: bool) -> bool:
        return all_true(flag, self.device)

    def save(self, folder: Path, rank: int = 0) -> None:
        super().save(folder, self.rank)
