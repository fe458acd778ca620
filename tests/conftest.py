"""Shared fixtures: tiny real mp4 videos (frame number encoded in the pixel values) and tar shards; the
world-model tests' encoder and push trajectories."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.config import DataConfig, SourceConfig
from data_pipelines.encode import encode_video
from data_pipelines.shard_writer import ShardWriter

FRAMES = 24  # frames per test video
BASE, STEP = 16, 8  # frame i has every pixel at BASE + STEP * i (H.264 keeps it within a few levels)


def numbered_frames(frames: int = FRAMES, height: int = 32, width: int = 32) -> np.ndarray:
    """[T, H, W, 3] uint8 frames whose value tells their index: BASE + STEP * i."""
    values = (BASE + STEP * np.arange(frames)).clip(0, 255).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (frames, height, width, 3)).copy()


def frame_numbers(frames: np.ndarray) -> np.ndarray:
    """The indices encoded in decoded frames [..., T, H, W, 3] -> [..., T] (inverse of numbered_frames)."""
    means = frames.reshape(*frames.shape[:-3], -1).astype(np.float64).mean(-1)
    return np.rint((means - BASE) / STEP).astype(np.int64)


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Every test runs on one intra-op thread: tiny models run faster so, and far faster when other
    processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def numbered_mp4() -> bytes:
    return encode_video(numbered_frames(), fps=24.0, gop=8)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory: pytest.TempPathFactory, numbered_mp4: bytes) -> Path:
    """4 shards x 8 samples `v000`..`v031` (labels i % 4), all the same numbered 24-frame video."""
    out = tmp_path_factory.mktemp("shards")
    with ShardWriter(out, shard_size=8) as writer:
        for i in range(32):
            writer.write(f"v{i:03d}", numbered_mp4, meta={"label": i % 4})
    return out


@pytest.fixture
def data_config() -> Callable[..., DataConfig]:
    """A small DataConfig over given source paths; keyword arguments override fields."""

    def make(*paths: str | Path, **overrides: object) -> DataConfig:
        fields: dict[str, object] = dict(
            dataset="files",
            sources=[SourceConfig(path=str(p)) for p in paths],
            frames_per_clip=4,
            frame_step=2,
            crop_size=16,
            batch_size=4,
            num_workers=0,
            shuffle_buffer=8,
            decode_timeout_s=20.0,
        )
        fields.update(overrides)
        return DataConfig(**fields)

    return make


def write_sample_folder(folder: Path, samples: dict[str, bytes], labels: dict[str, int]) -> Path:
    """KEY.mp4 + KEY.json files in `folder`, as a user would have before running GNU tar."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, data in samples.items():
        (folder / f"{key}.mp4").write_bytes(data)
        (folder / f"{key}.json").write_text(json.dumps({"label": labels[key]}))
    return folder


def audio_only_mp4() -> bytes:
    """An mp4 holding one AAC audio stream and no video stream."""
    buf = io.BytesIO()
    import av  # imported here: the GPU check (benchmarks/gpu_check.sh) runs the tests without PyAV

    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for i in range(4):
            frame.pts = i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def rotated_mp4(degrees: int, frames: int = 4) -> bytes:
    """A 32x64 video with a display rotation; its top-left 16x16 corner is white."""
    image = np.zeros((32, 64, 3), np.uint8)
    image[:16, :16] = 255
    buf = io.BytesIO()
    import av  # imported here: the GPU check (benchmarks/gpu_check.sh) runs the tests without PyAV

    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The world-model tests' inputs: a one-step tiny encoder checkpoint and six 32-px push trajectories of 9
    frames (built once per test module)."""
    from tiny import TINY_RUN

    from data_pipelines.push_env import PushEnvParams
    from data_pipelines.trajectories import write_push_trajectories
    from vjepa.config import load_config
    from vjepa.train.trainer import train

    root = tmp_path_factory.mktemp("world")
    train(
        load_config(
            None, [*TINY_RUN, "train.steps=1", "checkpoint.every_steps=1", f"train.out_dir={root}/enc"]
        )
    )
    write_push_trajectories(root / "traj", episodes=6, steps=8, seed=0, params=PushEnvParams(size=32))
    return {"encoder": root / "enc", "train": root / "traj", "root": root}
