"""The EMA target update, in fp32 whatever the training precision (a bf16 EMA does not move at momentum
>= 0.999: the update is below bf16 resolution)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_target(encoder: nn.Module) -> nn.Module:
    """An fp32 copy of the encoder that receives no gradients."""
    target = copy.deepcopy(encoder).float()
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter, in fp32."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach().to(torch.float32) for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise AssertionError("target and online encoders differ in structure")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
