"""`vjepa plan`'s evaluation: does the trained predictor plan? On held-out episodes of the push scene
(seeds disjoint from the training trajectories'), the agent must reach a goal frame: the start scene with the
agent moved by a random offset (`PushEnv.set_state`). Three controllers run the same episodes for the same
number of steps: CEM + MPC with the trained predictor, uniformly random actions, and the same CEM + MPC with
the untrained predictor (the trained one's initial weights). Success: the final agent position within
`tolerance` of the goal's; reported with the binomial standard error.

The planner's state is the agent's (x, y) (or the whole scene state, if the predictor was trained on it),
integrated as s + a over the plan, stopped at the walls (pushes ignored). The scene is built with the default
`PushEnvParams` at the run's `data.crop`: the settings `vjepa synth --env push` writes.

Shape legend: N patch tokens, F feature width, A = 2 action dims, S state dims, P candidates, L horizon,
G landscape points per axis, H/W pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from data_pipelines.push_env import PushEnv, PushEnvParams
from vjepa.world.ac_predictor import encode_frames
from vjepa.world.config import PlanSettings
from vjepa.world.features import agent_states, frames_to_clips
from vjepa.world.plan import cem, latent_energy, mpc

__all__ = ["Episode", "Planner", "goal_scene", "summarise", "training_seeds"]


def training_seeds(keys: list[str]) -> set[int]:
    """The episode seeds of training trajectory keys ("shard/ep00000012" -> 12)."""
    seeds = set()
    for key in keys:
        match = re.search(r"ep(\d+)$", key)
        if match:
            seeds.add(int(match.group(1)))
    return seeds


def goal_scene(env: PushEnv, seed: int, distance: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Resets `env` to episode `seed` and draws its goal: the start state with the agent moved by an offset
    of length in `distance` (a valid scene: in the arena, clear of the object) -> (goal frame, goal state).
    The env is left at the episode's start."""
    _, start = env.reset(seed)
    rng = np.random.default_rng([seed, 7])
    for _ in range(200):
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(*distance)
        goal = start.astype(np.float64).copy()
        goal[0:2] += length * np.array([np.cos(angle), np.sin(angle)])
        try:
            frame, goal_state = env.set_state(goal)
        except ValueError:
            continue
        env.reset(seed)
        return frame, goal_state
    raise ValueError(
        f"episode {seed}: no valid goal at distance {distance} after 200 draws (--goal-distance)"
    )


@dataclass
class Episode:
    seed: int
    start_distance: float
    final_distance: float
    frames: list[np.ndarray]  # [H, W, 3] uint8: the start, then one after every action
    goal_frame: np.ndarray


class Planner:
    """Encodes frames with the frozen encoder and plans with CEM over one predictor's latent energy."""

    def __init__(
        self,
        encoder: nn.Module,
        settings: PlanSettings,
        *,
        state_input: str,
        device: torch.device,
        arena: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.encoder, self.settings, self.state_input, self.device = encoder, settings, state_input, device
        self.arena = arena  # where the agent's centre can be: [agent_radius, 1 - agent_radius]

    def features(self, frame: np.ndarray) -> torch.Tensor:
        """One frame [H, W, 3] uint8 -> its features [N, F]."""
        return encode_frames(self.encoder, frames_to_clips(frame[None, None], self.device))[0, 0]

    def state(self, scene_state: np.ndarray) -> torch.Tensor:
        return agent_states(torch.from_numpy(scene_state).float(), self.state_input).to(self.device)  # [S]

    def energy(self, predictor: nn.Module, frame: np.ndarray, scene_state: np.ndarray, goal: torch.Tensor):
        """The energy of action sequences [P, L, A] -> [P] from this frame towards the goal features [N, F]."""

        def next_state(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:  # [P, S], [P, A]
            agent = (states[:, :2] + actions).clamp(
                *self.arena
            )  # the agent stops at the walls, as in PushEnv
            return torch.cat([agent, states[:, 2:]], dim=1)

        return latent_energy(
            predictor,
            features=self.features(frame),
            state=self.state(scene_state),
            goal=goal,
            next_state=next_state,
        )

    def run_episode(
        self, env: PushEnv, seed: int, predictor: nn.Module | None, *, generator: torch.Generator
    ) -> Episode:
        """One episode from reset(seed) towards its goal: CEM + MPC with `predictor`, random actions if None."""
        s = self.settings
        goal_frame, goal_state = goal_scene(env, seed, s.goal_distance)
        goal = self.features(goal_frame)  # [N, F]
        low, high = torch.from_numpy(env.action_low), torch.from_numpy(env.action_high)
        random = np.random.default_rng([seed, 3])
        observation = (env.render(), env.state)

        def plan(obs: tuple[np.ndarray, np.ndarray], warm: torch.Tensor | None):
            return cem(
                self.energy(predictor, obs[0], obs[1], goal),
                horizon=s.horizon,
                action_dim=2,
                low=low,
                high=high,
                generator=generator,
                samples=s.samples,
                elites=s.elites,
                iterations=s.iterations,
                init_mean=warm,
            )

        def step(action: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            return env.step(action.double().numpy())

        if predictor is None:
            actions = random.uniform(env.action_low, env.action_high, size=(s.steps, 2))  # [steps, A]
            observations = [observation] + [env.step(a) for a in actions]
        else:
            observations = mpc(observation=observation, plan=plan, step=step, steps=s.steps).observations
        distance = _agent_distance(goal_state)
        return Episode(
            seed=seed,
            start_distance=distance(observations[0][1]),
            final_distance=distance(observations[-1][1]),
            frames=[o[0] for o in observations],
            goal_frame=goal_frame,
        )

    @torch.no_grad()
    def landscape(self, predictor: nn.Module, env: PushEnv, seed: int) -> dict:
        """Energy of every one-step action on a G x G grid over the bounds, from episode `seed`'s start frame
        towards its goal (one batched predictor call), with the best grid action and the ideal one."""
        goal_frame, goal_state = goal_scene(env, seed, self.settings.goal_distance)
        energy = self.energy(predictor, env.render(), env.state, self.features(goal_frame))
        axis = torch.linspace(float(env.action_low[0]), float(env.action_high[0]), self.settings.grid)  # [G]
        ax, ay = torch.meshgrid(axis, axis, indexing="xy")  # [G, G] each: x along columns, y along rows
        actions = torch.stack([ax.flatten(), ay.flatten()], dim=1)[:, None]  # [G*G, 1, A]
        values = energy(actions).cpu().view(self.settings.grid, self.settings.grid)  # [G*G] -> [G, G]
        best = actions[int(values.argmin()), 0]
        ideal = np.clip(goal_state[0:2] - env.state[0:2], env.action_low, env.action_high)
        cosine = float(
            np.dot(best.numpy(), ideal) / max(np.linalg.norm(best.numpy()) * np.linalg.norm(ideal), 1e-12)
        )
        return {
            "energy": values.tolist(),
            "axis": axis.tolist(),
            "best_action": best.tolist(),
            "ideal_action": ideal.tolist(),
            "cosine_best_ideal": cosine,
        }


def _agent_distance(goal_state: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda state: float(np.linalg.norm(state[0:2] - goal_state[0:2]))


def summarise(episodes: list[Episode], tolerance: float) -> dict:
    """Success rate with its binomial standard error, and the mean final distance with its standard error."""
    n = len(episodes)
    final = np.array([e.final_distance for e in episodes])
    rate = float((final <= tolerance).mean())
    return {
        "n": n,
        "success_rate": rate,
        "success_se": math.sqrt(rate * (1 - rate) / n),
        "mean_final_distance": float(final.mean()),
        "final_distance_se": float(final.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "mean_start_distance": float(np.mean([e.start_distance for e in episodes])),
        "final_distances": [round(float(d), 5) for d in final],
    }


def push_env(crop: int) -> PushEnv:
    return PushEnv(PushEnvParams(size=crop))
