"""The EMA target under DeepSpeed ZeRO-3: partitioned exactly like the online encoder, updated shard by shard.

Under ZeRO-3 a parameter outside a gather is an empty placeholder; each rank's slice lives in
`param.ds_tensor`. DeepSpeed slices every parameter the same way (flatten, pad to a multiple of the world
size, rank r keeps the r-th contiguous chunk), so a target encoder partitioned over the same group holds, on
each rank, the slices matching that rank's fp32 master slices of the online encoder. The EMA is then a purely
local fp32 update with no communication:

    target.ds_tensor <- m * target.ds_tensor + (1 - m) * fp32 master slice of the online parameter

Writing through `deepspeed.zero.GatheredParameters` without `modifier_rank` would be silently discarded when
the gather ends; updating the shards directly avoids gathers altogether.

The target is partitioned by a second, optimizer-free DeepSpeed engine built from the same ZeRO config, which
also installs ZeRO-3's gather/release hooks so `target(clips)` runs normally. Its parameter persistence
threshold is 0: a "persistent" (never released) parameter would keep a full copy that the shard update does
not reach.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vjepa.checkpoint import TARGET_SHARD_FILE as SHARD_FILE
from vjepa.models.weights import read_torch_file


def partition_target(target: nn.Module, ds_config: dict) -> tuple[nn.Module, object]:
    """Partitions the (full, fp32, identical on every rank) `target` like a ZeRO-3 model built with
    `ds_config`. -> (the target module, now ZeRO-3, with gather hooks; the inference engine holding it)."""
    import deepspeed

    config = copy.deepcopy(ds_config)
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    config.pop("gradient_clipping", None)
    engine, *_ = deepspeed.initialize(model=target, config=config, dist_init_required=False)
    for p in target.parameters():
        p.requires_grad_(False)
    return engine.module, engine


def _pairs(target: nn.Module, online: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Parameter]]:
    t_named, o_named = list(target.named_parameters()), list(online.named_parameters())
    if [n for n, _ in t_named] != [n for n, _ in o_named]:
        raise AssertionError("target and online encoders differ in structure")
    for (name, t), (_, o) in zip(t_named, o_named):
        yield name, t, o


@torch.no_grad()
def zero3_ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online on this rank's shards: fp32, no communication."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from deepspeed.utils import safe_get_local_fp32_param

    shards, masters = [], []
    for name, t, o in _pairs(target, online):
        if t.ds_status != ZeroParamStatus.NOT_AVAILABLE:
            raise AssertionError(f"target parameter {name} is gathered during the EMA update")
        master = safe_get_local_fp32_param(o)  # [partition numel] fp32, this rank's slice
        shard = t.ds_tensor.data
        if shard.dtype != torch.float32 or master.numel() != shard.numel():
            raise AssertionError(
                f"{name}: target shard {tuple(shard.shape)} {shard.dtype} does not match the online fp32 "
                f"master slice {tuple(master.shape)}; the target must be partitioned like the encoder"
            )
        shards.append(shard)
        masters.append(master.view_as(shard))
    torch._foreach_mul_(shards, momentum)
    torch._foreach_add_(shards, masters, alpha=1.0 - momentum)


def shard_state(target: nn.Module, rank: int, world_size: int) -> dict:
    """This rank's target shards (fp32) plus what is needed to reassemble or check them."""
    return {
        "rank": rank,
        "world_size": world_size,
        "shards": {n: p.ds_tensor.detach().clone() for n, p in target.named_parameters()},
        "shapes": {n: tuple(p.ds_shape) for n, p in target.named_parameters()},
        "numels": {n: int(p.ds_numel) for n, p in target.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in target.named_buffers()},
    }


def save_shard(target: nn.Module, folder: Path, rank: int, world_size: int) -> None:
    torch.save(shard_state(target, rank, world_size), Path(folder) / SHARD_FILE.format(rank=rank))


@torch.no_grad()
def load_shard(target: nn.Module, folder: Path, rank: int, world_size: int, *, buffers: bool = True) -> None:
    """Rank `rank`'s fp32 target shard from a step folder; `buffers=False` keeps the module's own buffers
    (a new phase's position tables, built for its grid)."""
    path = Path(folder) / SHARD_FILE.format(rank=rank)
    if not path.is_file():
        raise ValueError(
            f"{path}: missing ZeRO-3 target shard (was the checkpoint written with dist.zero_stage=3?)"
        )
    state = read_torch_file(path, what=f"checkpoint {folder}")
    if state["world_size"] != world_size:
        raise ValueError(
            f"{path}: the target was saved by {state['world_size']} ranks, this run has {world_size}; "
            "resume with the same number of processes (or export and restart from the exported weights)"
        )
    for name, p in target.named_parameters():
        p.ds_tensor.data.copy_(state["shards"][name].to(p.ds_tensor.device))
    for name, b in target.named_buffers() if buffers else ():
        b.copy_(state["buffers"][name].to(b.device))


@torch.no_grad()
def load_full(target: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Writes full (unpartitioned) parameter values into this rank's shards (same slicing as DeepSpeed)."""
    for name, p in target.named_parameters():
        shard = p.ds_tensor.data
        if not hasattr(p, "ds_zero_partition_rank"):
            raise AssertionError(f"{name} is not a ZeRO-3 parameter")
        start = shard.numel() * p.ds_zero_partition_rank
        flat = weights[name].reshape(-1).to(shard)
        piece = flat[start : start + shard.numel()]
        shard.zero_()
        shard[: piece.numel()].copy_(piece)


def consolidate_shards(folder: Path) -> dict[str, torch.Tensor]:
    """A full fp32 state dict for the target from all ranks' shard files (offline; no process group)."""
    folder = Path(folder)
    first = read_torch_file(folder / SHARD_FILE.format(rank=0), what=f"checkpoint {folder}")
    world = first["world_size"]
    states = [first] + [
        read_torch_file(folder / SHARD_FILE.format(rank=r), what=f"checkpoint {folder}")
        for r in range(1, world)
    ]
    out: dict[str, torch.Tensor] = {}
    for name, shape in first["shapes"].items():
        flat = torch.cat([s["shards"][name].reshape(-1) for s in states])  # rank-ordered contiguous slices
        out[name] = flat[: first["numels"][name]].reshape(shape).clone()
    out.update(first["buffers"])
    return out
