"""Rank, world size, local rank and master address from one place: torchrun's environment or SLURM's.

torchrun's variables win (torchrun under srun sets both); then an srun step's SLURM variables; else one
process. Nothing here touches the environment or starts a process group (see `process_group.py`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "none"  # none | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# ----------------------------------------------------------------------------- SLURM list syntax


def _split_top_level(text: str) -> list[str]:
    """Splits on commas that are not inside brackets: 'a[1,2],b' -> ['a[1,2]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in SLURM node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in SLURM node list {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(body: str, nodelist: str) -> list[str]:
    """'01-03,7' -> ['01', '02', '03', '7'] (zero padding kept from the range's first bound)."""
    out = []
    for item in body.split(","):
        item = item.strip()
        if re.fullmatch(r"\d+", item):
            out.append(item)
            continue
        match = re.fullmatch(r"(\d+)-(\d+)", item)
        if not match:
            raise ValueError(f"cannot parse range {item!r} in SLURM node list {nodelist!r}")
        lo, hi = match.groups()
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in SLURM node list {nodelist!r}")
        width = len(lo)
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def _expand_host(expr: str, nodelist: str) -> list[str]:
    """One host expression, possibly with several bracket groups: 'r[1-2]n[1-2]' -> r1n1, r1n2, r2n1, r2n2."""
    match = re.search(r"\[([^\[\]]*)\]", expr)
    if match is None:
        if "[" in expr or "]" in expr:
            raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
        return [expr]
    head, tail = expr[: match.start()], expr[match.end() :]
    return [
        head + mid + rest
        for mid in _expand_range(match.group(1), nodelist)
        for rest in _expand_host(tail, nodelist)
    ]


def expand_nodelist(nodelist: str) -> list[str]:
    """All hosts of a SLURM node list in order: 'gpu[003-005,9],cpu1' -> gpu003 gpu004 gpu005 gpu9 cpu1."""
    hosts = [h for expr in _split_top_level(nodelist.strip()) for h in _expand_host(expr, nodelist)]
    if not hosts:
        raise ValueError(f"empty SLURM node list {nodelist!r}")
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    return expand_nodelist(nodelist)[0]


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM's compressed per-node counts: '2(x3),1' -> [2, 2, 2, 1]."""
    out = []
    for item in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:\(x(\d+)\))?\s*", item)
        if not match:
            raise ValueError(f"cannot parse SLURM tasks-per-node value {spec!r}")
        count, repeat = int(match.group(1)), int(match.group(2) or 1)
        out.extend([count] * repeat)
    return out


# ----------------------------------------------------------------------------- reading the environment


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from None


def _first(env: Mapping[str, str], *keys: str) -> str | None:
    for key in keys:
        if env.get(key):
            return key
    return None


def _checked(env: DistEnv) -> DistEnv:
    if env.world_size < 1:
        raise ValueError(f"{env.source}: world size must be >= 1, got {env.world_size}")
    if not 0 <= env.rank < env.world_size:
        raise ValueError(f"{env.source}: rank {env.rank} is outside world size {env.world_size}")
    if not 0 <= env.local_rank < env.local_world_size:
        raise ValueError(
            f"{env.source}: local rank {env.local_rank} is outside local world size {env.local_world_size}"
        )
    if not 0 < env.master_port < 65536:
        raise ValueError(f"{env.source}: master port {env.master_port} is not a valid TCP port")
    return env


def _from_torchrun(env: Mapping[str, str]) -> DistEnv:
    return DistEnv(
        rank=_int(env, "RANK"),
        world_size=_int(env, "WORLD_SIZE"),
        local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
        local_world_size=_int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1,
        master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
        master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
        source="torchrun",
    )


def _slurm_node_index(env: Mapping[str, str], hosts: list[str]) -> int:
    node = env.get("SLURMD_NODENAME")
    if node and node in hosts:
        return hosts.index(node)
    return _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0


def _from_slurm(env: Mapping[str, str], world_key: str) -> DistEnv:
    list_key = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if list_key is None:
        raise ValueError("SLURM run without SLURM_JOB_NODELIST: cannot find the master host")
    hosts = expand_nodelist(env[list_key])
    local_world = 1
    per_node_key = _first(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")
    if per_node_key is not None:
        counts = expand_tasks_per_node(env[per_node_key])
        node = _slurm_node_index(env, hosts)
        local_world = counts[node] if node < len(counts) else counts[-1]
    if "MASTER_PORT" in env:
        port = _int(env, "MASTER_PORT")
    else:  # the same on every task of the job, different between jobs sharing a node
        job = _int(env, "SLURM_JOB_ID") if "SLURM_JOB_ID" in env else 0
        port = 20000 + job % 20000
    return DistEnv(
        rank=_int(env, "SLURM_PROCID"),
        world_size=_int(env, world_key),
        local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
        local_world_size=local_world,
        master_addr=env.get("MASTER_ADDR") or hosts[0],
        master_port=port,
        source="slurm",
    )


def read_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """torchrun's variables win (torchrun under srun sets both); then SLURM's; else one process.

    A partial torchrun environment (RANK without WORLD_SIZE or the reverse) is an error, not one process.
    """
    env = os.environ if environ is None else environ
    has_rank, has_world = "RANK" in env, "WORLD_SIZE" in env
    if has_rank != has_world:
        missing = "WORLD_SIZE" if has_rank else "RANK"
        raise ValueError(
            f"torchrun-style environment without {missing}: set both RANK and WORLD_SIZE or neither"
        )
    if has_rank:
        return _checked(_from_torchrun(env))
    world_key = _first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    if "SLURM_PROCID" in env and world_key is not None and _int(env, world_key) > 1:
        return _checked(_from_slurm(env, world_key))
    return DistEnv()
