"""The frozen side of AC training: the encoder loaded from a checkpoint, and a bank of per-frame features of
every training clip, encoded once (the encoder never changes, so neither do its features). Batches are drawn
from the bank by a generator seeded from (seed, step): the data position is the step itself, so a resumed run
sees exactly the batches an uninterrupted one would, without replaying anything.

Shape legend: M clips in the bank, B batch, T frames per clip, N patch tokens per frame, F feature width,
A action dims, S state dims, H/W pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from data_pipelines.droid import DroidReader
from data_pipelines.trajectories import TrajectoryClip, TrajectoryReader, stack_clips
from data_pipelines.transforms import normalize
from vjepa.eval.extract import checkpoint_config, load_checkpoint_state, load_encoder
from vjepa.world.ac_predictor import encode_frames
from vjepa.world.config import ACDataSettings, EncoderSettings

__all__ = [
    "FeatureBank",
    "agent_states",
    "encode_bank",
    "frames_to_clips",
    "load_frozen_encoder",
    "trajectory_reader",
]


def load_frozen_encoder(
    settings: EncoderSettings, *, crop: int, device: torch.device, key: str = "encoder.checkpoint"
) -> tuple[nn.Module, dict]:
    """The frozen encoder for single frames of `crop` pixels (one tubelet: the frame repeated, as
    `encode_frames` feeds it) -> (encoder in eval mode, a description of where it came from)."""
    try:
        state = load_checkpoint_state(settings.checkpoint)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None
    model = checkpoint_config(state).model
    encoder = load_encoder(
        state,
        frames=model.tubelet_size,
        crop=crop,
        which=settings.which,
        random_init=settings.random_init,
        seed=settings.seed,
        device=device,
    )
    info = {"checkpoint": str(settings.checkpoint), "which": settings.which, "name": model.name}
    return encoder, {**info, "random_init": settings.random_init, "tubelet": model.tubelet_size}


def frames_to_clips(frames_u8: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 frames [B, T, H, W, 3] -> normalised clips [B, 3, T, H, W] float on `device`."""
    frames = torch.as_tensor(frames_u8).to(device)
    return normalize(frames.permute(0, 4, 1, 2, 3).contiguous())  # [B, T, H, W, 3] -> [B, 3, T, H, W]


def agent_states(states: torch.Tensor, which: str) -> torch.Tensor:
    """The predictor's state input from scene states [..., 6]: the agent's (x, y) [..., 2], or all of it."""
    return states[..., 0:2] if which == "agent" else states


@dataclass
class FeatureBank:
    features: torch.Tensor  # [M, T, N, F] float32 on the CPU, layer-normed (encode_frames)
    actions: torch.Tensor  # [M, T - 1, A]
    states: torch.Tensor  # [M, T, S] (the predictor's state input, see agent_states)
    keys: list[str]  # "shard/key" (droid: the episode folder) of each clip's trajectory
    starts: list[int]  # each clip's first trajectory frame
    skipped: int = 0  # unreadable trajectories the reader skipped (each logged once)

    def __len__(self) -> int:
        return self.features.shape[0]

    def fingerprint(self) -> str:
        """Identifies the clips (which trajectories, which frames), so a resume with other data is refused."""
        text = ";".join(f"{k}@{s}" for k, s in zip(self.keys, self.starts))
        shape = "x".join(map(str, self.features.shape))
        return hashlib.sha256(f"{shape}|{text}".encode()).hexdigest()[:16]

    def batch(
        self, step: int, *, seed: int, size: int, rank: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch of `step`: `size` clips drawn without replacement (with, if the bank is smaller) by a
        generator seeded from (seed, step), and rank r > 0 of a DDP run (its own bank) from (seed, step, r)
        -> features [B, T, N, F], actions [B, T - 1, A], states [B, T, S]."""
        rng = np.random.default_rng([seed, step] if rank == 0 else [seed, step, rank])
        index = torch.from_numpy(rng.choice(len(self), size=size, replace=len(self) < size))  # [B]
        return self.features[index], self.actions[index], self.states[index]


def _chunks(clips: Iterable[TrajectoryClip], size: int) -> Iterable[list[TrajectoryClip]]:
    chunk: list[TrajectoryClip] = []
    for clip in clips:
        chunk.append(clip)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def trajectory_reader(
    data: ACDataSettings, *, seed: int, rank: int = 0, world_size: int = 1, key: str = "data"
) -> TrajectoryReader | DroidReader:
    """The clips of `data.train` for `data.kind` (start frames seeded from `seed`): rank r of `world_size`
    reads trajectories r, r + W, ... of the sorted list, so the ranks' shares are disjoint and together
    hold exactly the clips one process would read."""
    sources = data.sources(key)
    common = {"frames": data.frames, "frame_step": data.frame_step, "seed": seed}
    common.update(clips_per_trajectory=data.clips_per_trajectory, rank=rank, world_size=world_size)
    if data.kind == "droid":
        return DroidReader(
            sources, root=data.train, size=data.crop, fps=data.fps, camera=data.camera, **common
        )
    return TrajectoryReader(sources, **common)


@torch.no_grad()
def encode_bank(
    encoder: nn.Module,
    reader: TrajectoryReader | DroidReader,
    data: ACDataSettings,
    *,
    device: torch.device,
    batch_frames: int = 64,
    key: str = "data",
) -> FeatureBank:
    """Every clip of `reader` (see trajectory_reader), encoded frame by frame. Frames of another size than
    `data.crop` are an error naming `{key}.crop`."""
    features, actions, states, keys, starts = [], [], [], [], []
    for chunk in _chunks(reader, max(1, batch_frames // data.frames)):
        frames_u8, states_np, actions_np = stack_clips(chunk)  # [b, T, H, W, 3], [b, T, S], [b, T - 1, A]
        if frames_u8.shape[2:4] != (data.crop, data.crop):
            raise ValueError(
                f"{key}.crop: the trajectory frames are {frames_u8.shape[3]}x{frames_u8.shape[2]} pixels, "
                f"not {data.crop}x{data.crop}"
            )
        features.append(encode_frames(encoder, frames_to_clips(frames_u8, device)).float().cpu())
        actions.append(torch.from_numpy(actions_np))
        states.append(agent_states(torch.from_numpy(states_np), data.state))
        keys += [c.key for c in chunk]
        starts += [c.start for c in chunk]
    if not features:
        share = f" (rank {reader.rank} of {reader.world_size})" if reader.world_size > 1 else ""
        raise ValueError(
            f"{key}.train: no readable trajectory clips in {data.train}{share}; {reader.skipped} skipped"
        )
    return FeatureBank(
        torch.cat(features), torch.cat(actions), torch.cat(states), keys, starts, skipped=reader.skipped
    )
