"""Training engines: what differs by parallel backend, and nothing else.

`vjepa.train.trainer.train_step` is the V-JEPA update itself (targets, loss, finite checks, backward,
clipping, optimizer step, EMA). It calls an `Engine` only for what the backend decides: how the forward is
wrapped (so gradients get reduced), how micro-batches accumulate gradients before the last one's reduction,
how backward and the optimizer step run, how the global gradient norm is computed, where the EMA target's
weights live, and how the weights are checkpointed.

Engines: `TorchEngine` (one process, or DDP when the model is wrapped in DistributedDataParallel) and
`DeepSpeedEngine` (deepspeed_engine.py, ZeRO stages 0-3), chosen by `build_engine` from `dist.backend`.
`ReplicaEngine`, TorchEngine without the EMA target and the JEPA checkpoint, trains other models the same
way (`build_replica_engine`: the action-conditioned predictor of `vjepa train-ac`).
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from vjepa.checkpoint import MODEL_FILE, atomic_torch_save
from vjepa.config import DistConfig, OptimConfig
from vjepa.distributed import process_group
from vjepa.distributed.env import DistEnv
from vjepa.distributed.target import ReplicatedTarget, Target
from vjepa.models.weights import load_weights, read_torch_file
from vjepa.objective import JepaModel


class Engine(Protocol):
    """Exactly what the trainer uses of an engine."""

    model: nn.Module  # what the forward goes through (a DDP/DeepSpeed wrapper, or the JepaModel itself)
    module: JepaModel  # the unwrapped encoder + predictor
    target: Target  # the EMA target encoder
    optimizer: torch.optim.Optimizer  # whose param_groups receive the step's lr and weight decay

    def barrier(self) -> None: ...
    def all_ranks(self, flag: bool) -> bool: ...  # True only if `flag` holds on every rank
    # wraps the forward and backward of every micro-batch of a step but the last: gradients accumulate, and
    # the reduction across ranks completes in the last micro-batch's backward
    def no_sync(self) -> AbstractContextManager[None]: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def grad_norm(self) -> torch.Tensor: ...
    def clip_gradients(self, max_norm: float, total_norm: torch.Tensor) -> None: ...
    def step(self) -> None: ...
    def drop_gradients(self, after_backward: bool) -> None: ...
    def save(self, folder: Path) -> None: ...
    def load(self, folder: Path) -> None: ...
    def load_weights(self, state: dict) -> None: ...
    def load_phase_start(self, folder: Path) -> None: ...
    def close(self) -> None: ...


def collectives(device: torch.device) -> tuple:
    """(barrier, all_ranks) for the current process group, or no-ops without one."""
    return process_group.barrier, lambda flag: process_group.all_true(flag, device)


class ReplicaEngine:
    """The update machinery for any module replicated on every rank with a torch optimizer, optionally
    wrapped in DistributedDataParallel (`wrapped`, which averages the gradients in backward): backward, the
    global gradient norm, clipping, the step and the all-rank checks. `TorchEngine` adds the EMA target and
    the JEPA checkpoint; `vjepa train-ac` uses it as it is (`build_replica_engine`)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        wrapped: nn.Module | None = None,
        rank: int = 0,
    ) -> None:
        self.module, self.model = model, wrapped if wrapped is not None else model
        self.optimizer, self.device, self.rank = optimizer, device, rank
        self.barrier, self.all_ranks = collectives(device)

    def no_sync(self) -> AbstractContextManager[None]:
        """Gradient accumulation: DDP's own `no_sync` (the gradients stay local and are reduced, summed with
        them, in the last micro-batch's backward); nothing to do in one process."""
        return self.model.no_sync() if self.model is not self.module else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def clip_gradients(self, max_norm: float, total_norm: torch.Tensor) -> None:
        torch.nn.utils.clip_grads_with_norm_(self.module.parameters(), max_norm, total_norm)

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def drop_gradients(self, after_backward: bool) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Plain modules hold nothing besides memory."""


class TorchEngine(ReplicaEngine):
    """Plain modules and torch AdamW, optionally in DDP (see ReplicaEngine): every rank holds full replicas,
    the replicated fp32 target is updated locally. Checkpoints: one `model.pt` written by rank 0."""

    def __init__(
        self,
        model: JepaModel,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        wrapped: nn.Module | None = None,
        rank: int = 0,
    ) -> None:
        super().__init__(model, optimizer, device=device, wrapped=wrapped, rank=rank)
        self.target: ReplicatedTarget = ReplicatedTarget(model.encoder)

    def save(self, folder: Path) -> None:
        if self.rank == 0:
            state = {
                "encoder": self.module.encoder.state_dict(),
                "predictor": self.module.predictor.state_dict(),
                "target_encoder": self.target.module.state_dict(),
                "opt": self.optimizer.state_dict(),
            }
            atomic_torch_save(state, Path(folder) / MODEL_FILE)

    def load(self, folder: Path) -> None:
        state = read_torch_file(
            Path(folder) / MODEL_FILE, what=f"checkpoint {folder}", map_location=self.device
        )
        self.module.encoder.load_state_dict(state["encoder"])
        self.module.predictor.load_state_dict(state["predictor"])
        self.target.module.load_state_dict(state["target_encoder"])
        self.optimizer.load_state_dict(state["opt"])

    def load_weights(self, state: dict) -> None:
        """Encoder, predictor and target weights from a model file (a new phase: the optimizer starts
        fresh); fixed position tables stay the ones built for this run's clip size."""
        load_weights(self.module.encoder, state["encoder"], "train.init_from: 'encoder'")
        load_weights(self.module.predictor, state["predictor"], "train.init_from: 'predictor'")
        self.target.load_full(state["target_encoder"], "train.init_from: 'target_encoder'")

    def load_phase_start(self, folder: Path) -> None:
        """A new phase of `train.phases` from checkpoint `folder`, the end of the phase before: encoder,
        predictor, target and the AdamW state carry over (the step and the data start afresh); fixed position
        tables stay the ones built for this phase's clip size (a saved table of another grid is dropped)."""
        what = f"checkpoint {folder}"
        state = read_torch_file(Path(folder) / MODEL_FILE, what=what, map_location=self.device)
        load_weights(self.module.encoder, state["encoder"], f"{what}: 'encoder'")
        load_weights(self.module.predictor, state["predictor"], f"{what}: 'predictor'")
        self.target.load_full(state["target_encoder"], f"{what}: 'target_encoder'")
        self.optimizer.load_state_dict(state["opt"])


def _no_buffer_sync() -> dict[str, bool]:
    """The DDP argument that turns off the per-forward buffer broadcast (renamed in recent torch)."""
    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _check_backend(backend: str, env: DistEnv, known: tuple[str, ...]) -> None:
    """ValueError for an unknown backend or one process for several; RuntimeError without a started group."""
    if backend not in known:
        raise ValueError(f"dist.backend: unknown backend {backend!r} (known: {', '.join(known)})")
    if backend == "single" and env.world_size > 1:
        raise ValueError(
            f"dist.backend=single but the launcher started {env.world_size} processes; "
            f"use dist.backend={' or dist.backend='.join(k for k in known if k != 'single')}"
        )
    if backend != "single" and not process_group.is_started(env):
        raise RuntimeError(
            f"dist.backend={backend} needs a started process group of {env.world_size} "
            "(vjepa.distributed.process_group.start_process_group)"
        )


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel. DDP broadcasts rank 0's parameters and buffers here; buffers are
    not re-sent at every forward (the models' buffers are fixed tables that never change)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync()
    )


def build_replica_engine(
    model: nn.Module, optimizer_factory, *, backend: str, device: torch.device, env: DistEnv
) -> ReplicaEngine:
    """A ReplicaEngine for any module: `backend` single (one process) or ddp (the process group started
    already, as for build_engine). `optimizer_factory(module)` builds the torch optimizer."""
    _check_backend(backend, env, ("single", "ddp"))
    model = model.to(device)
    wrapped = wrap_ddp(model, device) if backend == "ddp" else None
    return ReplicaEngine(model, optimizer_factory(model), device=device, wrapped=wrapped, rank=env.rank)


def build_engine(
    model: JepaModel,
    optimizer_factory,
    *,
    optim: OptimConfig,
    dist: DistConfig,
    precision: str,
    micro_batch: int,
    device: torch.device,
    env: DistEnv,
) -> Engine:
    """The engine for `dist.backend`: single (one process), ddp, or deepspeed (ZeRO `dist.zero_stage`).
    `optimizer_factory(module)` builds the torch optimizer over the module's parameter groups.

    ddp and deepspeed need the process group (`process_group.start_process_group`, a group of one when
    launched alone) to be started already; without one this raises instead of falling back to one process."""
    _check_backend(dist.backend, env, ("single", "ddp", "deepspeed"))
    if dist.backend == "single":
        model = model.to(device)
        return TorchEngine(model, optimizer_factory(model), device=device)
    if dist.backend == "deepspeed":
        from vjepa.distributed.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(
            model, optimizer_factory, dist=dist, grad_clip=optim.grad_clip, precision=precision,
            micro_batch=micro_batch, accumulate=optim.accumulate, device=device,
        )  # fmt: skip
    model = model.to(device)
    wrapped = wrap_ddp(
        model, device
    )  # rank 0's weights everywhere, so the target copied next is rank 0's too
    return TorchEngine(model, optimizer_factory(model), device=device, wrapped=wrapped, rank=env.rank)
