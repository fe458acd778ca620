"""Starting and stopping the default process group from a DistEnv.

`dist.backend=ddp|deepspeed` always runs in a process group (one of size 1 when launched alone, so the same
code path runs everywhere): NCCL on CUDA devices, gloo on CPU. A failed start raises; it never falls back to
one process.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from vjepa.distributed.env import DistEnv

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def backend_for(device: torch.device) -> str:
    """The collective backend for tensors on `device`."""
    return "nccl" if device.type == "cuda" else "gloo"


def export_torchrun_env(env: DistEnv) -> None:
    """Writes torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...) from `env` where they are missing.

    DeepSpeed and `init_method="env://"` read torchrun's variables only; under a bare `srun` they come from
    SLURM's, so they are mapped here (at run time, never at import)."""
    values = {
        "RANK": env.rank,
        "WORLD_SIZE": env.world_size,
        "LOCAL_RANK": env.local_rank,
        "LOCAL_WORLD_SIZE": env.local_world_size,
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": env.master_port,
    }
    for key, value in values.items():
        os.environ.setdefault(key, str(value))


ELASTIC_STORE_PORT_OFFSET = 1


def restarts_allowed() -> bool:
    """True under a torchrun agent that may restart its workers (`--max-restarts` above 0)."""
    try:
        return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
    except ValueError:
        return False


def fresh_store(env: DistEnv, timeout: timedelta) -> dist.TCPStore:
    """A new key-value store for this group, served by rank 0 at MASTER_PORT + 1.

    An elastic torchrun agent offers its own store at MASTER_ADDR:MASTER_PORT and keeps it across restarts,
    while the agents' restart counts (which torch uses to separate rounds) diverge when one agent restarts
    for a failure and the other for the membership change. A restarted group then reads the previous group's
    addresses from that store and fails to connect. A store started by this group's rank 0 holds no old keys.
    Only groups that may restart use it, so a plain torchrun launch needs no second port.
    """
    port = env.master_port + ELASTIC_STORE_PORT_OFFSET
    try:
        return dist.TCPStore(
            env.master_addr,
            port,
            env.world_size,
            is_master=env.rank == 0,
            timeout=timeout,
            wait_for_workers=False,
        )
    except Exception as err:
        raise RuntimeError(
            f"an elastic group (--max-restarts > 0) keeps its own store at MASTER_PORT + "
            f"{ELASTIC_STORE_PORT_OFFSET} = {env.master_addr}:{port}, which could not be "
            f"{'served' if env.rank == 0 else 'reached'} ({err}); choose a rendezvous or master port whose next "
            "port is free"
        ) from err


def start_process_group(env: DistEnv, device: torch.device, *, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Initialises the default process group for `env` on `device`'s backend.

    Returns True if this call created the group (the caller then owns its teardown), False if a matching
    group already existed. Raises RuntimeError when the start fails or an existing group disagrees with `env`.
    """
    backend = backend_for(device)
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise RuntimeError(
                f"a process group already exists with rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but the launcher ({env.source}) says rank {env.rank} of {env.world_size}"
            )
        return False
    export_torchrun_env(env)
    try:
        if env.world_size == 1:  # launched alone: a private in-memory store, no port to collide on
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        elif os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and restarts_allowed():
            store = fresh_store(env, timeout)
            dist.init_process_group(
                backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout
            )
        else:
            dist.init_process_group(
                backend, init_method="env://", rank=env.rank, world_size=env.world_size, timeout=timeout
            )
    except Exception as err:  # re-raised with the launch facts that usually explain it
        raise RuntimeError(
            f"could not start the {backend} process group (rank {env.rank} of {env.world_size}, master "
            f"{env.master_addr}:{env.master_port}, from {env.source}): {err}"
        ) from err
    log.info("process group started: %s, rank %d of %d (%s)", backend, env.rank, env.world_size, env.source)
    return True


def is_started(env: DistEnv) -> bool:
    """True when the default process group exists and has `env`'s size."""
    return dist.is_initialized() and dist.get_world_size() == env.world_size


def stop_process_group() -> None:
    """Destroys the default process group if there is one (safe to call twice)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Waits for every rank of the default group (nothing to wait for without one)."""
    if dist.is_initialized():
        dist.barrier()


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank of the default group (one small all_reduce); `flag` itself
    without a group."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """The mean of each value over the ranks of the default group (one all_reduce); `values` without one."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def gather_objects(obj: object) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank; `[obj]` without a group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
