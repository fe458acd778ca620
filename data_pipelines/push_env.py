"""A built-in interactive 2-D scene for world-model data and planning: an agent pushes an object across a
textured floor while a distractor wanders on its own. Rendered with numpy only; no download, no simulator.

Shape legend: H = W = size pixels; frames are [H, W, 3] uint8 RGB; A = 2 action dims; S = 6 state dims.

World coordinates are the unit square [0, 1]^2 ((x, y), x to the right, y down, as in the image). The agent,
the object and the distractor are discs. Per step:

- the action (a 2-D velocity in arena units per step) is clipped to [-max_speed, max_speed] on each axis and
  moves the agent, which stops at the walls;
- if the agent then overlaps the object, the object is pushed out along the line between their centres until
  the two just touch (the agent never moves less than it was told, except at walls); an object pushed into a
  wall stops there and the agent is held back at touching distance. `max_speed` is below the sum of the two
  radii, so no single step can carry the agent through the object;
- the distractor drifts at a constant speed, bouncing off the walls, and never touches anything.

The state is [agent x, agent y, object x, object y, distractor x, distractor y] (float32). The floor texture,
colours stay fixed within an episode and are drawn, with the start positions, from the `reset` seed, so equal
seeds and actions give identical frames and states.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PushEnv", "PushEnvParams"]

ACTION_DIM = 2
STATE_DIM = 6
_AGENT_RGB = np.array([230, 60, 40], np.uint8)
_OBJECT_RGB = np.array([40, 90, 230], np.uint8)
_DISTRACTOR_RGB = np.array([60, 200, 80], np.uint8)


@dataclass(frozen=True)
class PushEnvParams:
    """The scene's fixed settings (all lengths in arena units, the side of the arena being 1)."""

    size: int = 64  # frame height = width in pixels (even, for yuv420p video)
    # large enough that the agent at the start and at a goal 0.15-0.3 away share patches of a 4 x 4 token grid:
    # at 0.07 the L1 energy of even the true next frames had no slope towards the goal (vjepa/world/diagnose.py)
    agent_radius: float = 0.12
    object_radius: float = 0.09
    distractor_radius: float = 0.06
    max_speed: float = 0.05  # per action axis, per step
    distractor_speed: float = 0.03
    texture_cell: int = 8  # pixels per floor tile

    def validate(self) -> None:
        if self.size < 8 or self.size % 2:
            raise ValueError(f"size must be an even number >= 8, got {self.size}")
        for name in ("agent_radius", "object_radius", "distractor_radius"):
            value = getattr(self, name)
            if not 0 < value < 0.25:
                raise ValueError(f"{name} must be in (0, 0.25), got {value}")
        if not 0 < self.max_speed < self.agent_radius + self.object_radius:
            raise ValueError(
                f"max_speed must be in (0, agent_radius + object_radius) so that a step cannot pass through "
                f"the object, got {self.max_speed}"
            )
        if self.distractor_speed < 0:
            raise ValueError(f"distractor_speed must be >= 0, got {self.distractor_speed}")
        if self.texture_cell < 1:
            raise ValueError(f"texture_cell must be >= 1, got {self.texture_cell}")


def _floor(size: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """A tiled floor of low-contrast random grey-brown tiles plus per-pixel grain -> [H, W, 3] uint8."""
    tiles = -(-size // cell)
    base = rng.uniform(90, 150, size=(1, 1, 3))
    tile_shift = rng.uniform(-25, 25, size=(tiles, tiles, 1))
    floor = np.repeat(np.repeat(base + tile_shift, cell, axis=0), cell, axis=1)[:size, :size]  # [H, W, 3]
    grain = rng.normal(0.0, 6.0, size=(size, size, 1))
    return np.clip(floor + grain, 0, 255).astype(np.uint8)


class PushEnv:
    """`reset(seed) -> (frame, state)`, then `step(action) -> (frame, state)`; see the module docstring."""

    def __init__(self, params: PushEnvParams | None = None) -> None:
        self.params = params or PushEnvParams()
        self.params.validate()
        n = self.params.size
        centres = (np.arange(n, dtype=np.float64) + 0.5) / n
        self._ys, self._xs = centres[:, None], centres[None, :]  # [H, 1], [1, W] pixel centres
        self._floor: np.ndarray | None = None
        self._state = np.zeros(STATE_DIM, np.float64)
        self._distractor_velocity = np.zeros(2, np.float64)

    @property
    def action_low(self) -> np.ndarray:
        return np.full(ACTION_DIM, -self.params.max_speed, np.float32)

    @property
    def action_high(self) -> np.ndarray:
        return np.full(ACTION_DIM, self.params.max_speed, np.float32)

    @property
    def state(self) -> np.ndarray:
        """The current state [S] float32 (a copy)."""
        return self._state.astype(np.float32)

    def set_state(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Moves the agent, object and distractor to `state` [S] (e.g. to render a goal frame); the floor and the
        distractor's heading stay those of the last reset. Returns the new frame and state."""
        if self._floor is None:
            raise ValueError("call reset(seed) before set_state(state)")
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (STATE_DIM,) or not np.isfinite(state).all():
            raise ValueError(f"state must be a finite array of shape ({STATE_DIM},), got {state!r}")
        p = self.params
        for name, xy, radius in (
            ("agent", state[0:2], p.agent_radius),
            ("object", state[2:4], p.object_radius),
            ("distractor", state[4:6], p.distractor_radius),
        ):
            if (xy < radius - 1e-9).any() or (xy > 1 - radius + 1e-9).any():
                raise ValueError(
                    f"state: the {name} at {xy.tolist()} does not fit in the arena (radius {radius})"
                )
        if np.linalg.norm(state[2:4] - state[0:2]) < p.agent_radius + p.object_radius - 1e-9:
            raise ValueError(f"state: the agent and the object overlap at {state[0:4].tolist()}")
        self._state = state.copy()
        return self.render(), self.state

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """The action as the scene applies it: a finite [2] velocity, each axis clipped to the bounds."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,) or not np.isfinite(action).all():
            raise ValueError(f"action must be a finite array of shape ({ACTION_DIM},), got {action!r}")
        return np.clip(action, -self.params.max_speed, self.params.max_speed)

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A new episode drawn from `seed`: floor, start positions (agent and object apart), distractor heading."""
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        p = self.params
        rng = np.random.default_rng(int(seed))
        self._floor = _floor(p.size, p.texture_cell, rng)
        margin = max(p.agent_radius, p.object_radius, p.distractor_radius)
        agent = rng.uniform(p.agent_radius, 1 - p.agent_radius, 2)
        for _ in range(1000):  # rejection sampling: the object starts clear of the agent
            obj = rng.uniform(p.object_radius, 1 - p.object_radius, 2)
            if np.linalg.norm(obj - agent) > p.agent_radius + p.object_radius + 0.02:
                break
        distractor = rng.uniform(margin, 1 - margin, 2)
        heading = rng.uniform(0, 2 * np.pi)
        self._distractor_velocity = p.distractor_speed * np.array([np.cos(heading), np.sin(heading)])
        self._state = np.concatenate([agent, obj, distractor])
        return self.render(), self.state

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Applies one clipped velocity; returns the new frame [H, W, 3] and state [S]."""
        if self._floor is None:
            raise ValueError("call reset(seed) before step(action)")
        p = self.params
        velocity = self.clip_action(action)
        agent = np.clip(self._state[0:2] + velocity, p.agent_radius, 1 - p.agent_radius)
        obj = self._state[2:4].copy()
        touch = p.agent_radius + p.object_radius
        offset = obj - agent
        distance = float(np.linalg.norm(offset))
        if distance < touch:
            direction = (
                offset / distance if distance > 1e-12 else velocity / max(np.linalg.norm(velocity), 1e-12)
            )
            obj = np.clip(agent + direction * touch, p.object_radius, 1 - p.object_radius)
            back = agent - obj
            gap = float(np.linalg.norm(back))
            if gap < touch:  # the object met a wall: hold the agent at touching distance
                agent = np.clip(obj + back / max(gap, 1e-12) * touch, p.agent_radius, 1 - p.agent_radius)
        distractor, self._distractor_velocity = _bounce(
            self._state[4:6], self._distractor_velocity, p.distractor_radius
        )
        self._state = np.concatenate([agent, obj, distractor])
        return self.render(), self.state

    def render(self) -> np.ndarray:
        """The current frame [H, W, 3] uint8: floor, then distractor, object and agent on top."""
        if self._floor is None:
            raise ValueError("call reset(seed) before render()")
        p = self.params
        frame = self._floor.copy()
        for centre, radius, rgb in (
            (self._state[4:6], p.distractor_radius, _DISTRACTOR_RGB),
            (self._state[2:4], p.object_radius, _OBJECT_RGB),
            (self._state[0:2], p.agent_radius, _AGENT_RGB),
        ):
            self._disc(frame, centre, radius, rgb)
        return frame

    def _disc(self, frame: np.ndarray, centre: np.ndarray, radius: float, rgb: np.ndarray) -> None:
        """Paints the pixels whose centres lie within `radius` of `centre`, inside its bounding box only."""
        n = self.params.size
        x0, x1 = max(int((centre[0] - radius) * n), 0), min(int((centre[0] + radius) * n) + 1, n)
        y0, y1 = max(int((centre[1] - radius) * n), 0), min(int((centre[1] + radius) * n) + 1, n)
        inside = (self._xs[:, x0:x1] - centre[0]) ** 2 + (self._ys[y0:y1] - centre[1]) ** 2 <= radius**2
        frame[y0:y1, x0:x1][inside] = rgb  # inside: [h, w] over the box


def _bounce(position: np.ndarray, velocity: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One step of constant-velocity motion reflected off the walls of [radius, 1 - radius]^2."""
    moved, velocity = position + velocity, velocity.copy()
    for axis in range(2):
        if moved[axis] < radius:
            moved[axis], velocity[axis] = 2 * radius - moved[axis], -velocity[axis]
        elif moved[axis] > 1 - radius:
            moved[axis], velocity[axis] = 2 * (1 - radius) - moved[axis], -velocity[axis]
    return moved, velocity
