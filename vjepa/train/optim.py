"""AdamW with two parameter groups: weight decay on matrices, none on 1-D parameters (biases, norms) and on
what the models name in their `no_weight_decay()` (mask tokens, learned position tables)."""

from __future__ import annotations

import torch

from vjepa.config import OptimConfig
from vjepa.objective import JepaModel

FUSED_DEVICES = ("cuda", "cpu")  # where torch has a fused AdamW kernel


def fused_adamw(params: list) -> bool:
    """Fused AdamW (one kernel over every parameter) where every parameter is on a device that has one: on
    CUDA (untested on GPU in the CPU suite, see the gpu-marked test) and on CPU, where it measured 5.8x faster
    than the per-parameter loop (vit_small + the default predictor, 43 M parameters: 48 ms against 279 ms a
    step, one thread)."""
    return bool(params) and all(p.device.type in FUSED_DEVICES for p in params)


def param_groups(model: JepaModel) -> list[dict]:
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [
        {"params": decay, "apply_wd": True, "weight_decay": 0.0},
        {"params": no_decay, "apply_wd": False, "weight_decay": 0.0},
    ]


def build_optimizer(model: JepaModel, cfg: OptimConfig) -> torch.optim.AdamW:
    """Torch AdamW, fused on CUDA and CPU (DeepSpeed gets this too: its config-declared AdamW JIT-compiles a C++ op)."""
    groups = param_groups(model)
    fused = fused_adamw([p for g in groups for p in g["params"]])
    return torch.optim.AdamW(groups, lr=cfg.start_lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """The step's lr and weight decay into every group (ZeRO forwards its groups to the wrapped AdamW)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay if group.get("apply_wd", True) else 0.0
