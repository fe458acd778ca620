"""AdamW with two parameter groups: weight decay on matrices, none on biases, norms, other 1-D parameters,
position tables and mask tokens."""

from __future__ import annotations

import torch
from torch import nn

from vjepa.config import OptimConfig

NO_DECAY_NAMES = ("pos_embed", "mask_tokens")


def param_groups(model: nn.Module) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "apply_wd": True, "weight_decay": 0.0},
        {"params": no_decay, "apply_wd": False, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Plain torch AdamW (DeepSpeed gets this too: its config-declared AdamW JIT-compiles a C++ op)."""
    return torch.optim.AdamW(param_groups(model), lr=cfg.start_lr, betas=cfg.betas, eps=cfg.eps)


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay if group.get("apply_wd", True) else 0.0
