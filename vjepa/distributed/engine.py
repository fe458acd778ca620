"""Training engines: how the JEPA model is wrapped, stepped, EMA-updated and checkpointed.

Every engine exposes the same small surface that `vjepa.train.trainer.train_step` uses:
`forward(clips, masks)`, `backward(loss)`, `step(lr, weight_decay)`, `skip()`, `ema(momentum)`,
`all_finite(flag)`, `save(folder, rank)`, `load(folder)`, `close()`, plus `module` (the unwrapped
JepaModel), `target` (the EMA encoder), `optimizer` and `barrier()`.

Engines: SingleEngine (here), DDPEngine (ddp.py), DeepSpeedEngine (deepspeed_engine.py), chosen by
`build_engine` from `dist.backend`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from data_pipelines.batch import MaskBatch
from vjepa.config import Config
from vjepa.distributed.env import DistEnv
from vjepa.models.jepa import JepaModel
from vjepa.objective import JepaOutput, target_features
from vjepa.train.checkpoint import atomic_torch_save
from vjepa.train.ema import ema_update, make_target
from vjepa.train.optim import build_optimizer, set_lr_wd


class SingleEngine:
    """One process (also the base of the DDP engine): plain modules, torch AdamW, fp32 EMA target."""

    def __init__(self, cfg: Config, model: JepaModel, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.module = model
        self.model: nn.Module = model
        self.target = make_target(model.encoder)
        self.optimizer = build_optimizer(model, cfg.optim)

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        """Releases what the engine holds besides memory (nothing for plain modules)."""
        return None

    def all_finite(self, flag: bool) -> bool:
        """True only if `flag` holds on every rank (so all ranks skip a bad step together)."""
        return flag

    def forward(self, clips: torch.Tensor, masks: list[MaskBatch]) -> JepaOutput:
        targets = target_features(self.target, clips)
        return self.model(clips, masks, targets)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def step(self, lr: float, weight_decay: float) -> tuple[float, bool]:
        """Clips (optional), checks the gradients are finite on all ranks, steps. -> (grad norm, applied)."""
        norm = self.grad_norm()
        if self.cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.grad_clip)
        finite = self.all_finite(bool(torch.isfinite(norm)))
        if finite:
            set_lr_wd(self.optimizer, lr, weight_decay)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm), finite

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def ema(self, momentum: float) -> None:
        ema_update(self.target, self.module.encoder, momentum)

    def state(self) -> dict:
        return {
            "encoder": self.module.encoder.state_dict(),
            "predictor": self.module.predictor.state_dict(),
            "target_encoder": self.target.state_dict(),
            "opt": self.optimizer.state_dict(),
        }

    def save(self, folder: Path, rank: int = 0) -> None:
        if rank == 0:
            atomic_torch_save(self.state(), folder / "model.pt")

    def load_weights(self, state: dict) -> None:
        """Encoder, predictor and target weights from a model file (a new phase: the optimizer starts
        fresh). Fixed position tables are rebuilt for this run's clip size, so the saved ones are dropped."""
        for module, key in (
            (self.module.encoder, "encoder"),
            (self.module.predictor, "predictor"),
            (self.target, "target_encoder"),
        ):
            load_without_positions(module, state[key], key)

    def load(self, folder: Path) -> None:
        state = torch.load(folder / "model.pt", map_location=self.device, weights_only=False)
        self.module.encoder.load_state_dict(state["encoder"])
        self.module.predictor.load_state_dict(state["predictor"])
        self.target.load_state_dict(state["target_encoder"])
        self.optimizer.load_state_dict(state["opt"])


def load_without_positions(module: nn.Module, state: dict, name: str) -> None:
    state = {k: v for k, v in state.items() if not k.endswith("pos_embed")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed")]
    if missing or unexpected:
        raise ValueError(
            f"train.init_from: '{name}' weights do not fit: missing {missing}, unexpected {unexpected}"
        )


def build_engine(cfg: Config, model: JepaModel, device: torch.device, env: DistEnv):
    """The engine for `dist.backend`: single (one process), ddp, or deepspeed (ZeRO `dist.zero_stage`).

    ddp and deepspeed run in a process group, started here from `env` if the caller has not started one
    (a group of one when launched alone); a failed start raises instead of falling back to one process."""
    backend = cfg.dist.backend
    if backend == "single":
        if env.world_size > 1:
            raise ValueError(
                f"dist.backend=single but the launcher started {env.world_size} processes; "
                "use dist.backend=ddp or dist.backend=deepspeed"
            )
        return SingleEngine(cfg, model.to(device), device)
    if backend not in ("ddp", "deepspeed"):
        raise ValueError(f"dist.backend: unknown backend {backend!r} (known: single, ddp, deepspeed)")
    from vjepa.distributed.process_group import start_process_group

    start_process_group(env, device)
    if backend == "ddp":
        from vjepa.distributed.ddp import DDPEngine

        return DDPEngine(cfg, model, device)
    from vjepa.distributed.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine(cfg, model, device)
