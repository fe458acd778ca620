"""Planning in representation space: the cross-entropy method (CEM) over action sequences, the latent energy
(L1 distance between the predicted and the goal representation) and a model-predictive control loop.

Shape legend: P candidate sequences (samples) per CEM iteration, E elites, L horizon (steps planned), A action
dims, S state dims, N patch tokens, F feature width.

The energy is called once per CEM iteration with all P candidates ([P, L, A] -> [P]), so a predictor-backed
energy runs one batched rollout per iteration. Candidates are drawn from a per-step Gaussian and clipped to the
action bounds; the mean and standard deviation then move to the elites' (optionally smoothed by `momentum`,
the weight kept on the previous value). Candidates are drawn on the CPU from the given `torch.Generator` (a few
kilobytes per iteration); a predictor-backed energy moves them to its own device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from vjepa.world.ac_objective import Predictor, rollout

__all__ = ["CEMResult", "MPCResult", "cem", "latent_energy", "mpc"]

Energy = Callable[[torch.Tensor], torch.Tensor]  # actions [P, L, A] -> energies [P]
Obs = TypeVar("Obs")


@dataclass(frozen=True)
class CEMResult:
    actions: torch.Tensor  # [L, A] the final mean (within the bounds): the plan
    std: torch.Tensor  # [L, A] the final standard deviation
    best_actions: torch.Tensor  # [L, A] the lowest-energy candidate seen
    best_energy: float
    energies: list[float]  # the best energy of each iteration


def _bounds(
    low: torch.Tensor | float, high: torch.Tensor | float, action_dim: int
) -> tuple[torch.Tensor, ...]:
    low_t = torch.as_tensor(low, dtype=torch.float32).expand(action_dim).clone()
    high_t = torch.as_tensor(high, dtype=torch.float32).expand(action_dim).clone()
    if not bool((high_t > low_t).all()) or not bool(
        torch.isfinite(low_t).all() & torch.isfinite(high_t).all()
    ):
        raise ValueError(f"action bounds must be finite with high > low, got low={low_t} high={high_t}")
    return low_t, high_t


def cem(
    energy: Energy,
    *,
    horizon: int,
    action_dim: int,
    low: torch.Tensor | float,
    high: torch.Tensor | float,
    generator: torch.Generator,
    samples: int = 64,
    elites: int = 8,
    iterations: int = 5,
    init_mean: torch.Tensor | None = None,
    init_std: torch.Tensor | float | None = None,
    momentum: float = 0.0,
    min_std: float = 1e-4,
) -> CEMResult:
    """Minimises `energy` over action sequences [L, A] within [low, high] (per action dim) by the cross-entropy
    method. Starts at `init_mean` (default: the middle of the bounds) with `init_std` (default: half the range)."""
    if horizon < 1 or action_dim < 1 or iterations < 1:
        raise ValueError(
            f"horizon, action_dim and iterations must be >= 1, got {horizon}, {action_dim}, {iterations}"
        )
    if not 1 <= elites <= samples:
        raise ValueError(f"elites must be in [1, samples={samples}], got {elites}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    low_t, high_t = _bounds(low, high, action_dim)  # [A], [A]
    mean = (
        ((low_t + high_t) / 2).expand(horizon, -1).clone() if init_mean is None else init_mean.float().clone()
    )
    if mean.shape != (horizon, action_dim):
        raise ValueError(f"init_mean must be [L, A] = {(horizon, action_dim)}, got {tuple(mean.shape)}")
    mean = torch.minimum(torch.maximum(mean, low_t), high_t)
    std = (
        (high_t - low_t) / 2 if init_std is None else torch.as_tensor(init_std, dtype=torch.float32)
    ).expand(horizon, action_dim)
    best_actions, best_energy, history = mean.clone(), float("inf"), []
    for _ in range(iterations):
        noise = torch.randn(samples, horizon, action_dim, generator=generator)  # [P, L, A]
        candidates = torch.minimum(torch.maximum(mean + std * noise, low_t), high_t)  # [P, L, A]
        values = energy(candidates)  # [P]
        if values.shape != (samples,):
            raise ValueError(f"energy must return [P] = [{samples}] values, got {tuple(values.shape)}")
        values = values.detach().float().cpu()
        order = values.argsort(stable=True)[:elites]  # [E]; NaN energies sort last
        elite = candidates[order]  # [E, L, A]
        if float(values[order[0]]) < best_energy:
            best_energy, best_actions = float(values[order[0]]), elite[0].clone()
        history.append(float(values[order[0]]))
        mean = momentum * mean + (1 - momentum) * elite.mean(0)
        std = (momentum * std + (1 - momentum) * elite.std(0, unbiased=False)).clamp_min(min_std)
    return CEMResult(
        actions=mean, std=std, best_actions=best_actions, best_energy=best_energy, energies=history
    )


def latent_energy(
    predictor: Predictor,
    *,
    features: torch.Tensor,
    state: torch.Tensor,
    goal: torch.Tensor,
    next_state: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Energy:
    """The energy of a candidate action sequence: mean |predicted features after its last action - goal|.

    features [N, F] of the current frame, state [S] now, goal [N, F] of the goal frame. The states the predictor
    reads after the first step come from `next_state(states [P, S], actions [P, A]) -> [P, S]` (e.g. the agent's
    position plus the commanded displacement); without it the current state is held. All P candidates run as one
    batched rollout.
    """
    if features.ndim != 2 or goal.shape != features.shape:
        raise ValueError(
            f"features and goal must both be [N, F], got {tuple(features.shape)}, {tuple(goal.shape)}"
        )
    if state.ndim != 1:
        raise ValueError(f"state must be [S], got {tuple(state.shape)}")

    @torch.no_grad()
    def energy(actions: torch.Tensor) -> torch.Tensor:
        p, length, _ = actions.shape
        actions = actions.to(features.device, features.dtype)
        states = [state.to(features.dtype).expand(p, -1)]  # L x [P, S]
        for step in range(length - 1):
            states.append(states[-1] if next_state is None else next_state(states[-1], actions[:, step]))
        context = features.expand(p, 1, -1, -1)  # [P, 1, N, F]
        predicted = rollout(predictor, context, actions, torch.stack(states, dim=1))  # [P, L, N, F]
        return (predicted[:, -1] - goal).abs().mean(dim=(1, 2))  # [P]

    return energy


@dataclass(frozen=True)
class MPCResult(Generic[Obs]):
    actions: list[torch.Tensor]  # the executed actions, [A] each
    observations: list[Obs]  # the first observation, then one after every executed action


def mpc(
    *,
    observation: Obs,
    plan: Callable[[Obs, torch.Tensor | None], CEMResult],
    step: Callable[[torch.Tensor], Obs],
    steps: int,
    done: Callable[[Obs], bool] | None = None,
) -> MPCResult[Obs]:
    """Model-predictive control: plan from the observation, execute the plan's first action, observe, replan.

    `plan(observation, warm_start)` gets the previous plan shifted by one step (its last step repeated) as a warm
    start, None the first time; it stops after `steps` actions, or earlier when `done(observation)`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    actions: list[torch.Tensor] = []
    observations = [observation]
    warm: torch.Tensor | None = None
    for _ in range(steps):
        if done is not None and done(observation):
            break
        result = plan(observation, warm)
        action = result.actions[0].clone()
        observation = step(action)
        actions.append(action)
        observations.append(observation)
        warm = torch.cat([result.actions[1:], result.actions[-1:]])  # [L, A] shifted by one step
    return MPCResult(actions=actions, observations=observations)
