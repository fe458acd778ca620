"""Why a world model does or does not plan: three checks that separate the representation from the predictor.

- `state_probe`: do the frozen features encode the scene's state at all? A ridge probe from the features
  (per patch, and mean-pooled) to the agent's and the object's positions, R^2 on held-out frames.
- `action_sensitivity`: does the predictor's output depend on the action? The mean change of its prediction
  when the actions are redrawn, next to the mean change between consecutive real frames' features.
- `oracle_planning`: would a *perfect* predictor plan in this representation? A greedy one-step planner
  whose energy uses the true features of every candidate's real next frame (the scene is copied and stepped
  for each), so whatever it fails at, the representation's energy fails at. It also reports how well the
  first step's lowest-energy action points towards the goal.

Shape legend: n frames, N patch tokens, F feature width, T clip steps, A = 2 action dims, S state dims,
G grid points per action axis, H/W pixels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from data_pipelines.push_env import PushEnv
from vjepa.world.ac_predictor import encode_frames
from vjepa.world.evaluate import goal_scene
from vjepa.world.features import frames_to_clips

__all__ = [
    "FrameFeatures",
    "action_sensitivity",
    "encoder_features",
    "oracle_planning",
    "ridge_r2",
    "state_probe",
]

# uint8 frames [n, H, W, 3] -> features [n, N, F] (e.g. the frozen encoder through encode_frames)
FrameFeatures = Callable[[np.ndarray], torch.Tensor]


def encoder_features(encoder: nn.Module, device: torch.device, *, batch: int = 64) -> FrameFeatures:
    """The frozen encoder's per-frame features (`encode_frames`, as training and planning see them), `batch`
    frames per call."""

    def features(frames: np.ndarray) -> torch.Tensor:
        chunks = [
            encode_frames(encoder, frames_to_clips(frames[i : i + batch, None], device))[:, 0]  # [b, N, F]
            for i in range(0, len(frames), batch)
        ]
        return torch.cat(chunks).float().cpu()

    return features


def ridge_r2(
    x: np.ndarray, y: np.ndarray, *, lambdas: Sequence[float] = (0.1, 1, 10, 100, 1000, 1e4)
) -> dict:
    """Ridge regression x [n, d] -> y [n, k] on the first 60% of the rows, the penalty chosen on the next 20%,
    R^2 per target column on the last 20% (the dual form, so d >> n is cheap)."""
    n = len(x)
    a, b = int(0.6 * n), int(0.8 * n)
    if a < 2 or b - a < 2 or n - b < 2:
        raise ValueError(f"ridge_r2 needs at least 10 rows, got {n}")
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    x = (x - x[:a].mean(0)) / (x[:a].std(0) + 1e-6)
    y_mean = y[:a].mean(0)

    def fit_predict(lam: float, rows: slice) -> np.ndarray:
        gram = x[:a] @ x[:a].T  # [a, a]
        alpha = np.linalg.solve(gram + lam * np.eye(a), y[:a] - y_mean)  # [a, k]
        return (x[rows] @ x[:a].T) @ alpha + y_mean

    def r2(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
        return 1 - ((pred - true) ** 2).sum(0) / np.maximum(((true - true.mean(0)) ** 2).sum(0), 1e-12)

    val, test = slice(a, b), slice(b, n)
    lam = max(lambdas, key=lambda lam: float(r2(fit_predict(lam, val), y[val]).mean()))
    per_target = r2(fit_predict(lam, test), y[test])
    return {"r2": float(per_target.mean()), "r2_per_target": per_target.round(4).tolist(), "lambda": lam}


def state_probe(features: FrameFeatures, env: PushEnv, seeds: Sequence[int]) -> dict:
    """R^2 of ridge probes from the features of each seed's start frame to the agent's and the object's
    (x, y): from the per-patch features (all tokens concatenated) and from their mean over the patches."""
    frames, states = zip(*(env.reset(int(s)) for s in seeds))
    tokens = features(np.stack(frames)).float().cpu().numpy()  # [n, N, F]
    state = np.stack(states)  # [n, S]
    flat, pooled = tokens.reshape(len(tokens), -1), tokens.mean(1)  # [n, N*F], [n, F]
    return {
        "frames": len(seeds),
        "tokens": tokens.shape[1],
        "agent_per_patch": ridge_r2(flat, state[:, 0:2]),
        "agent_mean_pooled": ridge_r2(pooled, state[:, 0:2]),
        "object_per_patch": ridge_r2(flat, state[:, 2:4]),
    }


@torch.no_grad()
def action_sensitivity(
    predictor: nn.Module,
    features: torch.Tensor,
    actions: torch.Tensor,
    states: torch.Tensor,
    *,
    low: float,
    high: float,
    generator: torch.Generator,
) -> dict:
    """Teacher-forced predictions of clips (features [B, T, N, F], actions [B, T - 1, A], states [B, T, S])
    with their own actions and with actions drawn uniformly in [low, high]: the mean |change| of the
    prediction, next to the mean |change| between consecutive real frames' features (what it should move by)."""
    context, reads = features[:, :-1], states[:, :-1]  # [B, T - 1, N, F], [B, T - 1, S]
    base = predictor(context, actions, reads)  # [B, T - 1, N, F]
    redrawn = torch.rand(actions.shape, generator=generator).to(actions) * (high - low) + low
    other = predictor(context, redrawn, reads)
    return {
        "clips": int(features.shape[0]),
        "prediction_l1": float((base - features[:, 1:]).abs().mean()),
        "copy_previous_l1": float((features[:, 1:] - features[:, :-1]).abs().mean()),
        "change_with_redrawn_actions": float((base - other).abs().mean()),
    }


def oracle_planning(
    features: FrameFeatures,
    env: PushEnv,
    seeds: Sequence[int],
    *,
    goal_distance: tuple[float, float] = (0.15, 0.3),
    steps: int = 12,
    grid: int = 9,
    tolerance: float = 0.05,
) -> dict:
    """Greedy one-step planning with the true next-frame features: at every step each of the grid x grid
    actions is tried on a copy of the scene, and the one whose real next frame's features are closest
    (mean L1) to the goal frame's is executed. Episodes and goals as `vjepa plan`'s (`goal_scene`)."""
    axis = np.linspace(float(env.action_low[0]), float(env.action_high[0]), grid)  # [G]
    actions = np.stack(np.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)  # [G*G, A]
    final, start, cosines, spans = [], [], [], []
    for seed in seeds:
        goal_frame, goal_state = goal_scene(env, int(seed), goal_distance)
        goal = features(goal_frame[None])[0]  # [N, F]
        start.append(float(np.linalg.norm(env.state[0:2] - goal_state[0:2])))
        for step in range(steps):
            nexts = np.stack([copy.deepcopy(env).step(a)[0] for a in actions])  # [G*G, H, W, 3]
            energy = (features(nexts) - goal).abs().mean(dim=(1, 2)).cpu().numpy()  # [G*G]
            best = actions[int(energy.argmin())]
            if step == 0:
                ideal = np.clip(goal_state[0:2] - env.state[0:2], env.action_low, env.action_high)
                norm = float(np.linalg.norm(best) * np.linalg.norm(ideal))
                cosines.append(float(best @ ideal) / norm if norm > 1e-12 else 0.0)
                spans.append(float(energy.max() - energy.min()))
            env.step(best)
        final.append(float(np.linalg.norm(env.state[0:2] - goal_state[0:2])))
    n, rate = len(final), float(np.mean(np.array(final) <= tolerance))
    return {
        "episodes": n,
        "success_rate": rate,
        "success_se": math.sqrt(rate * (1 - rate) / n),
        "mean_final_distance": float(np.mean(final)),
        "mean_start_distance": float(np.mean(start)),
        "first_step_cosine_best_ideal": float(np.mean(cosines)),
        "first_step_energy_span": float(np.mean(spans)),
    }
