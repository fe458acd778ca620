"""Learning-rate, weight-decay and EMA-momentum schedules: pure functions of the step, so a resumed run
needs no replay.

vjepa1: linear warmup start_lr -> lr, then cosine to final_lr; cosine weight decay; linear EMA momentum;
all defined over `schedule_scale` x the run length (the last part of the curve is never reached).
vjepa2: linear warmup then constant lr, constant weight decay and momentum; an optional cooldown phase
(`cooldown_steps`) decays the lr linearly to final_lr over the last steps of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vjepa.config import OptimConfig


@dataclass(frozen=True)
class StepValues:
    lr: float
    weight_decay: float
    momentum: float


def _warmup(step: int, cfg: OptimConfig) -> float | None:
    if step < cfg.warmup_steps:
        return cfg.start_lr + (cfg.lr - cfg.start_lr) * step / cfg.warmup_steps
    return None


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    if cfg.schedule == "vjepa2":
        cool_start = total_steps - cfg.cooldown_steps
        if cfg.cooldown_steps and step >= cool_start:
            frac = (step - cool_start) / cfg.cooldown_steps
            return cfg.lr + (cfg.final_lr - cfg.lr) * frac
        warm = _warmup(step, cfg)
        return cfg.lr if warm is None else warm
    warm = _warmup(step, cfg)
    if warm is not None:
        return warm
    span = max(1.0, total_steps * cfg.schedule_scale - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1.0 + math.cos(math.pi * progress))


def weight_decay_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    if cfg.schedule == "vjepa2":
        return cfg.weight_decay
    progress = min(1.0, step / max(1.0, total_steps * cfg.schedule_scale))
    return cfg.final_weight_decay + 0.5 * (cfg.weight_decay - cfg.final_weight_decay) * (
        1.0 + math.cos(math.pi * progress)
    )


def momentum_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    if cfg.schedule == "vjepa2":
        return cfg.ema_start
    progress = min(1.0, step / max(1.0, total_steps * cfg.schedule_scale))
    return cfg.ema_start + (cfg.ema_end - cfg.ema_start) * progress


def values_at(step: int, cfg: OptimConfig, total_steps: int) -> StepValues:
    return StepValues(
        lr_at(step, cfg, total_steps),
        weight_decay_at(step, cfg, total_steps),
        momentum_at(step, cfg, total_steps),
    )
