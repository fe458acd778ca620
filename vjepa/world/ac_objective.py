"""Losses of the action-conditioned predictor: L1 teacher forcing on the next step's features, and L1 of an
autoregressive rollout over k steps (the V-JEPA 2-AC pair).

Shape legend: B batch, T steps of a clip, C observed (context) steps, k rollout steps, N patch tokens per
frame, F feature width, A action dims, S state dims.

Alignment: features [B, T, N, F] and states [B, T, S] describe frames 0..T-1; actions [B, T - 1, A], action t
taking frame t to frame t + 1 (the trajectory shards' layout).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACObjective", "Predictor", "rollout", "rollout_loss", "teacher_forcing_loss"]

# (features [B, T, N, F], actions [B, T, A], states [B, T, S]) -> next-step features [B, T, N, F]
Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_clip(features: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> None:
    if features.ndim != 4:
        raise ValueError(f"features must be [B, T, N, F], got {tuple(features.shape)}")
    b, t = features.shape[:2]
    if actions.ndim != 3 or actions.shape[:2] != (b, t - 1):
        raise ValueError(f"actions must be [B, T - 1, A] = [{b}, {t - 1}, A], got {tuple(actions.shape)}")
    if states.ndim != 3 or states.shape[:2] != (b, t):
        raise ValueError(f"states must be [B, T, S] = [{b}, {t}, S], got {tuple(states.shape)}")


def teacher_forcing_loss(
    predictor: Predictor, features: torch.Tensor, actions: torch.Tensor, states: torch.Tensor
) -> torch.Tensor:
    """Mean |predictor(steps 0..T-2) - features of steps 1..T-1|: every step sees the true features before it."""
    _check_clip(features, actions, states)
    predicted = predictor(features[:, :-1], actions, states[:, :-1])  # [B, T - 1, N, F]
    return F.l1_loss(predicted, features[:, 1:])


def rollout(
    predictor: Predictor, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor
) -> torch.Tensor:
    """Predicts k = actions.shape[1] - C + 1 steps past the C observed ones, feeding each prediction back in.

    context [B, C, N, F]; actions [B, C + k - 1, A] and states [B, C + k - 1, S] for the steps the predictor
    reads (observed, then predicted ones; the caller supplies the states, true or integrated from the actions).
    -> [B, k, N, F], the features of steps C .. C + k - 1. The whole sequence is re-run each step (no cache).
    """
    if context.ndim != 4 or actions.ndim != 3 or states.ndim != 3:
        raise ValueError(
            f"context [B, C, N, F], actions [B, L, A], states [B, L, S] expected, got "
            f"{tuple(context.shape)}, {tuple(actions.shape)}, {tuple(states.shape)}"
        )
    c, length = context.shape[1], actions.shape[1]
    if length < c or states.shape[1] != length:
        raise ValueError(
            f"actions and states need the same length >= C = {c}, got {length} and {states.shape[1]}"
        )
    sequence = context
    predictions = []
    for end in range(c, length + 1):
        step = predictor(sequence, actions[:, :end], states[:, :end])[:, -1:]  # [B, 1, N, F]
        predictions.append(step)
        sequence = torch.cat([sequence, step], dim=1)  # [B, end + 1, N, F]
    return torch.cat(predictions, dim=1)  # [B, k, N, F]


def rollout_loss(
    predictor: Predictor,
    features: torch.Tensor,
    actions: torch.Tensor,
    states: torch.Tensor,
    *,
    steps: int,
    context: int = 1,
) -> torch.Tensor:
    """Mean |rollout of `steps` steps from the first `context` true steps - the true features of those steps|,
    with the clip's true states as the state inputs (gradients flow through every fed-back prediction)."""
    _check_clip(features, actions, states)
    if steps < 1 or context < 1:
        raise ValueError(f"steps and context must be >= 1, got steps={steps} context={context}")
    if context + steps > features.shape[1]:
        raise ValueError(f"context + steps = {context + steps} exceeds the clip's {features.shape[1]} steps")
    reads = context + steps - 1
    predicted = rollout(
        predictor, features[:, :context], actions[:, :reads], states[:, :reads]
    )  # [B, k, N, F]
    return F.l1_loss(predicted, features[:, context : context + steps])


class ACObjective(nn.Module):
    """The training loss as one module: forward(features, actions, states) -> (loss, teacher forcing,
    rollout), loss = teacher forcing + rollout_weight x rollout. One forward call per step is what
    DistributedDataParallel needs (the rollout calls the predictor several times inside it)."""

    def __init__(self, predictor: nn.Module, *, rollout_steps: int, rollout_weight: float) -> None:
        super().__init__()
        self.predictor = predictor
        self.rollout_steps, self.rollout_weight = rollout_steps, rollout_weight

    def forward(
        self, features: torch.Tensor, actions: torch.Tensor, states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss_tf = teacher_forcing_loss(self.predictor, features, actions, states)
        if self.rollout_weight > 0:
            loss_rollout = rollout_loss(self.predictor, features, actions, states, steps=self.rollout_steps)
        else:
            loss_rollout = torch.zeros((), device=features.device)
        return loss_tf + self.rollout_weight * loss_rollout, loss_tf, loss_rollout
