"""The EMA target encoder and where its weights live: the one difference between a replicated target
(single process, DDP, DeepSpeed stages 0-2) and a partitioned one (DeepSpeed ZeRO-3) is held here.

The target is kept in fp32 whatever the training precision: a bf16 EMA does not move at momentum >= 0.999
(the update is below bf16 resolution).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from vjepa.checkpoint import TARGET_FILE
from vjepa.distributed import zero_ema
from vjepa.models.weights import checked_weights, load_weights, read_torch_file


class Target(Protocol):
    """What the trainer and the engines need of an EMA target."""

    module: nn.Module  # call it on clips; under ZeRO-3 its hooks gather the parameters

    def update(self, online: nn.Module, momentum: float) -> None: ...
    def load_full(self, state: dict[str, torch.Tensor], name: str) -> None: ...
    def save(self, folder: Path, rank: int) -> None: ...
    def load(self, folder: Path, rank: int) -> None: ...


def make_target(encoder: nn.Module) -> nn.Module:
    """An fp32 copy of the encoder that receives no gradients."""
    target = copy.deepcopy(encoder).float()
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter, in fp32."""
    t_params = list(target.parameters())
    o_params = [p.detach().to(torch.float32) for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise AssertionError("target and online encoders differ in structure")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)


class ReplicatedTarget:
    """A full fp32 copy on every rank. The online parameters are identical on every rank after each step,
    so the replicas stay identical with no communication."""

    def __init__(self, encoder: nn.Module) -> None:
        self.module = make_target(encoder)

    def update(self, online: nn.Module, momentum: float) -> None:
        ema_update(self.module, online, momentum)

    def load_full(self, state: dict[str, torch.Tensor], name: str) -> None:
        load_weights(self.module, state, name)

    def save(self, folder: Path, rank: int) -> None:
        if rank == 0:
            torch.save(self.module.state_dict(), Path(folder) / TARGET_FILE)

    def load(self, folder: Path, rank: int) -> None:
        path = Path(folder) / TARGET_FILE
        if not path.is_file():
            raise ValueError(f"{folder}: missing {TARGET_FILE} (saved with dist.zero_stage=3?)")
        device = next(self.module.parameters()).device
        self.module.load_state_dict(read_torch_file(path, what=f"checkpoint {folder}", map_location=device))


class PartitionedTarget:
    """ZeRO-3: partitioned exactly like the online encoder and updated shard by shard (see zero_ema.py)."""

    def __init__(self, target: nn.Module, ds_config: dict, world_size: int) -> None:
        """`target`: a full fp32 copy of the encoder, identical on every rank; partitioned here."""
        self.module, self._engine = zero_ema.partition_target(target, ds_config)
        self.world_size = world_size

    def update(self, online: nn.Module, momentum: float) -> None:
        zero_ema.zero3_ema_update(self.module, online, momentum)

    def load_full(self, state: dict[str, torch.Tensor], name: str) -> None:
        zero_ema.load_full(self.module, checked_weights(self.module, state, name))

    def save(self, folder: Path, rank: int) -> None:
        zero_ema.save_shard(self.module, folder, rank, self.world_size)

    def load(self, folder: Path, rank: int) -> None:
        zero_ema.load_shard(self.module, folder, rank, self.world_size)

    def close(self) -> None:
        if self._engine is not None and hasattr(self._engine, "destroy"):
            self._engine.destroy()
        self._engine = None
