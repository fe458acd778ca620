"""Trajectory shards: a video plus per-frame states and per-step actions, in the webdataset tar layout the
rest of the project uses, and a reader that yields clips of T frames with their aligned actions and states.

Shape legend: F frames in a trajectory (steps + 1), T frames in a clip, A action dims, S state dims,
H/W pixels.

A sample is four members under one key: `KEY.mp4` (all F frames), `KEY.states.npy` [F, S] (the state shown in
frame i), `KEY.actions.npy` [F - 1, A] (action i takes frame i to frame i + 1) and `KEY.json` (seed, fps,
frame count, the scene's settings). A clip of T frames taken every `frame_step` frames starting at frame s
holds frames s, s + k, ..., its states at those frames, and T - 1 actions, each the sum of the k actions
between two clip frames (the displacement they ask for, since actions are velocities per step).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.bad_samples import BadSampleError
from data_pipelines.decode import VideoDecoder
from data_pipelines.encode import encode_video
from data_pipelines.push_env import PushEnv, PushEnvParams
from data_pipelines.shard_writer import ShardWriter

__all__ = [
    "TrajectoryClip",
    "TrajectoryReader",
    "push_episode",
    "scripted_push_actions",
    "stack_clips",
    "write_push_trajectories",
]

log = logging.getLogger(__name__)

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (state [S], rng) -> action [A]


def scripted_push_actions(*, max_speed: float, p_push: float = 0.6, segment: int = 4) -> Policy:
    """A policy of segments of `segment` steps: with probability `p_push` head for the object (noisy), else
    hold one random velocity. Mixes pushes with free motion so that both show up in the data."""
    if not 0.0 <= p_push <= 1.0:
        raise ValueError(f"p_push must be in [0, 1], got {p_push}")
    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    memory = {"left": 0, "push": False, "velocity": np.zeros(2)}

    def act(state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if memory["left"] == 0:
            memory["left"], memory["push"] = segment, bool(rng.random() < p_push)
            memory["velocity"] = rng.uniform(-max_speed, max_speed, 2)
        memory["left"] -= 1
        if not memory["push"]:
            return memory["velocity"]
        towards = state[2:4] - state[0:2]
        towards = towards / max(float(np.linalg.norm(towards)), 1e-9) * max_speed
        return towards + rng.normal(0.0, 0.3 * max_speed, 2)

    return act


def push_episode(
    env: PushEnv, *, seed: int, steps: int, policy: Policy | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs one episode from `env.reset(seed)`: frames [F, H, W, 3] uint8, states [F, S], actions [F - 1, A]
    (the actions as applied, i.e. clipped), F = steps + 1. The policy's randomness is seeded from `seed` too."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    policy = policy or scripted_push_actions(max_speed=env.params.max_speed)
    rng = np.random.default_rng([int(seed), 1])
    frame, state = env.reset(seed)
    frames, states, actions = [frame], [state], []
    for _ in range(steps):
        action = env.clip_action(policy(state, rng))
        frame, state = env.step(action)
        frames.append(frame)
        states.append(state)
        actions.append(action.astype(np.float32))
    return np.stack(frames), np.stack(states), np.stack(actions)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_push_trajectories(
    out: str | Path,
    *,
    episodes: int,
    steps: int = 32,
    seed: int = 0,
    params: PushEnvParams | None = None,
    fps: float = 10.0,
    gop: int = 8,
    shard_size: int = 64,
    prefix: str = "traj",
    overwrite: bool = False,
) -> dict:
    """Writes `episodes` scripted push episodes (episode i seeded `seed + i`) as trajectory shards under `out`;
    returns a summary with the time spent rendering and encoding."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env = PushEnv(params)
    render_s = encode_s = 0.0
    with ShardWriter(out, shard_size=shard_size, prefix=prefix, overwrite=overwrite) as writer:
        for i in range(episodes):
            start = time.perf_counter()
            frames, states, actions = push_episode(env, seed=seed + i, steps=steps)
            mid = time.perf_counter()
            video = encode_video(frames, fps=fps, gop=gop, threads=1)
            encode_s += time.perf_counter() - mid
            render_s += mid - start
            meta = {
                "seed": seed + i,
                "fps": fps,
                "frames": len(frames),
                "env": "push",
                "params": dataclasses.asdict(env.params),
            }
            extra = {"states.npy": _npy(states), "actions.npy": _npy(actions)}
            writer.write(f"ep{seed + i:08d}", video, meta=meta, extra=extra)
    return {
        "episodes": episodes,
        "shards": [str(p) for p in writer.shards],
        "render_s": round(render_s, 3),
        "encode_s": round(encode_s, 3),
    }


@dataclass(frozen=True)
class TrajectoryClip:
    key: str  # "shard/key"
    start: int  # the trajectory frame the clip starts at
    frames: np.ndarray  # [T, H, W, 3] uint8
    states: np.ndarray  # [T, S] float32
    actions: np.ndarray  # [T - 1, A] float32


def stack_clips(clips: Sequence[TrajectoryClip]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of equally long clips: frames [B, T, H, W, 3] uint8, states [B, T, S], actions [B, T - 1, A]."""
    if not clips:
        raise ValueError("clips must hold at least one clip")
    shapes = {(c.frames.shape, c.states.shape, c.actions.shape) for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"clips must share one shape to stack, got {sorted(shapes)}")
    return (
        np.stack([c.frames for c in clips]),
        np.stack([c.states for c in clips]),
        np.stack([c.actions for c in clips]),
    )


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for each sample of a tar shard, members grouped by key (split at the first dot)."""
    groups: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.removeprefix("./")
            key, _, ext = name.partition(".")
            file = tar.extractfile(info)
            assert file is not None  # a regular file member always has data
            groups.setdefault(key, {})[ext] = file.read()
    yield from groups.items()


class TrajectoryReader:
    """Clips of `frames` frames every `frame_step` from trajectory shards, `clips_per_trajectory` per sample at
    start frames drawn from (seed, sample number); rank r of `world_size` reads samples r, r + W, ... A sample
    that is missing a member, cannot be decoded or whose arrays do not match its video is skipped, logged with
    its key and counted in `skipped`."""

    def __init__(
        self,
        shards: Sequence[str | Path],
        *,
        frames: int,
        frame_step: int = 1,
        clips_per_trajectory: int = 1,
        seed: int = 0,
        decoder: str = "auto",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got {rank} of {world_size}")
        if not shards:
            raise ValueError("shards must name at least one tar shard")
        if frames < 2:
            raise ValueError(f"frames must be >= 2 (a clip needs one action), got {frames}")
        if frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {frame_step}")
        if clips_per_trajectory < 1:
            raise ValueError(f"clips_per_trajectory must be >= 1, got {clips_per_trajectory}")
        self.shards = [Path(s) for s in shards]
        self.frames, self.frame_step, self.clips = frames, frame_step, clips_per_trajectory
        self.seed = seed
        self.rank, self.world_size = rank, world_size  # rank r reads samples r, r + W, ... (all shards)
        self.decoder = VideoDecoder(decoder)
        self.skipped = 0

    def __iter__(self) -> Iterator[TrajectoryClip]:
        number = 0
        for shard in self.shards:
            for key, members in _samples(shard):
                name = f"{shard.name.removesuffix('.tar')}/{key}"
                if number % self.world_size != self.rank:
                    number += 1
                    continue
                try:
                    yield from self._clips(name, members, np.random.default_rng([self.seed, number]))
                except (BadSampleError, ValueError, KeyError) as err:
                    self.skipped += 1
                    log.warning("skipping trajectory %s: %s", name, err)
                number += 1

    def _clips(
        self, name: str, members: dict[str, bytes], rng: np.random.Generator
    ) -> Iterator[TrajectoryClip]:
        states = np.load(io.BytesIO(members["states.npy"]), allow_pickle=False)  # [F, S]
        actions = np.load(io.BytesIO(members["actions.npy"]), allow_pickle=False)  # [F - 1, A]
        if states.ndim != 2 or actions.ndim != 2 or len(actions) != len(states) - 1:
            raise ValueError(
                f"states {states.shape} and actions {actions.shape} do not match (need [F, S], [F-1, A])"
            )
        span = (self.frames - 1) * self.frame_step + 1
        if span > len(states):
            raise ValueError(f"{len(states)} frames are fewer than a clip spans ({span})")
        starts = np.sort(rng.integers(0, len(states) - span + 1, size=self.clips))  # [C]
        offsets = np.arange(self.frames) * self.frame_step  # [T]

        def pick(num_frames: int, fps: float) -> np.ndarray:
            if num_frames != len(states):
                raise ValueError(f"the video has {num_frames} frames, the states {len(states)}")
            return starts[:, None] + offsets[None, :]  # [C, T]

        video = self.decoder(members["mp4"], pick)  # frames [C, T, H, W, 3]
        between = (
            offsets[:-1, None] + np.arange(self.frame_step)[None, :]
        )  # [T - 1, k] action steps per clip step
        for c, start in enumerate(starts.tolist()):
            index = start + offsets  # [T]
            yield TrajectoryClip(
                key=name,
                start=start,
                frames=video.frames[c],
                states=states[index].astype(np.float32),
                actions=actions[start + between]
                .sum(axis=1)
                .astype(np.float32),  # [T - 1, k, A] -> [T - 1, A]
            )
