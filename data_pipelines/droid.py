"""A reader for the DROID raw layout: one folder per episode, turned into the trajectory clips the AC trainer
reads from trajectory shards (`data_pipelines.trajectories.TrajectoryClip`).

Shape legend: F rows of an episode (one per control step = one per video frame), T frames in a clip,
H/W pixels, S = 7 state dims, A = 7 action dims.

The layout (the published DROID raw release; its predecessor's schema documents the keys):

    <episode>/
        metadata_<uuid>.json        {"left_mp4_path": ".../recordings/MP4/<serial>.mp4", "right_mp4_path",
                                     "wrist_mp4_path", "ext1_mp4_path", "ext2_mp4_path", ...}
        trajectory.h5               observation/robot_state/cartesian_position [F, 6] (xyz, Euler "xyz")
                                    observation/robot_state/gripper_position [F]
                                    action/..., observation/camera_extrinsics/..., timestamps ...
        recordings/MP4/<serial>.mp4 one camera's (left) view, F frames at the 15 Hz control rate

A clip takes T frames every k video frames (k = `frame_step`, or ceil(video fps / `fps`) when `fps` is
given), the frames resized (short side) and centre-cropped to `size`, and:
- states [T, 7]: the end-effector pose and the gripper at each clip frame,
  [cartesian_position (x, y, z, roll, pitch, yaw), gripper_position];
- actions [T - 1, 7]: from clip frame t to t + 1, the translation (x, y, z)_{t+1} - (x, y, z)_t, the
  rotation R_{t+1} R_t^T as extrinsic "xyz" Euler angles, and the gripper's change.
These are the 7-D states and end-effector-delta actions published V-JEPA 2-AC trains on (DROID, left camera,
4 fps). The camera is chosen by its metadata key `<camera>_mp4_path`; only the file name is used (the
recorded path is relative to the lab's folder), looked up in `<episode>/recordings/MP4/`.

An episode whose metadata, h5 file or video is missing or unreadable, whose video and h5 disagree on the
frame count, or that is shorter than a clip, is skipped: one log line naming it, counted in `skipped`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from data_pipelines.bad_samples import BadSampleError
from data_pipelines.decode import VideoDecoder
from data_pipelines.trajectories import TrajectoryClip
from data_pipelines.transforms import spatial_views

__all__ = [
    "CAMERAS",
    "DroidReader",
    "euler_to_matrix",
    "find_episodes",
    "matrix_to_euler",
    "pose_deltas",
    "read_droid_states",
]

log = logging.getLogger(__name__)

H5_FILE = "trajectory.h5"
MP4_FOLDER = Path("recordings") / "MP4"
POSE_KEY = "observation/robot_state/cartesian_position"  # [F, 6]
GRIPPER_KEY = "observation/robot_state/gripper_position"  # [F]
CAMERAS = ("left", "right", "wrist", "ext1", "ext2")  # the metadata's <camera>_mp4_path keys


def _import_h5py():
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "the DROID reader (data.kind=droid) needs h5py: pip install 'vjepa[droid]'"
        ) from err
    return h5py


# ----------------------------------------------------------------------------- poses and actions


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Extrinsic "xyz" Euler angles [..., 3] (about the fixed x, then y, then z axis) -> rotations
    [..., 3, 3], R = Rz(yaw) Ry(pitch) Rx(roll)."""
    a, b, c = (angles[..., i] for i in range(3))
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rows = [
        [cb * cc, sa * sb * cc - ca * sc, ca * sb * cc + sa * sc],
        [cb * sc, sa * sb * sc + ca * cc, ca * sb * sc - sa * cc],
        [-sb, sa * cb, ca * cb],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)  # [..., 3, 3]


def matrix_to_euler(matrix: np.ndarray) -> np.ndarray:
    """Rotations [..., 3, 3] -> extrinsic "xyz" Euler angles [..., 3] (pitch in [-pi/2, pi/2]; the usual
    ambiguity at pitch = +-pi/2, where roll and yaw share one axis)."""
    pitch = np.arcsin(np.clip(-matrix[..., 2, 0], -1.0, 1.0))
    roll = np.arctan2(matrix[..., 2, 1], matrix[..., 2, 2])
    yaw = np.arctan2(matrix[..., 1, 0], matrix[..., 0, 0])
    return np.stack([roll, pitch, yaw], axis=-1)


def pose_deltas(states: np.ndarray) -> np.ndarray:
    """States [T, 7] (x, y, z, roll, pitch, yaw, gripper) -> actions [T - 1, 7]: translation change, the
    relative rotation R_{t+1} R_t^T as Euler angles, gripper change."""
    rotations = euler_to_matrix(states[:, 3:6])  # [T, 3, 3]
    relative = rotations[1:] @ np.swapaxes(rotations[:-1], -1, -2)  # [T - 1, 3, 3]
    return np.concatenate(
        [states[1:, :3] - states[:-1, :3], matrix_to_euler(relative), states[1:, 6:] - states[:-1, 6:]],
        axis=1,
    ).astype(np.float32)


def read_droid_states(h5_path: Path) -> np.ndarray:
    """[F, 7] float64 states (cartesian_position, gripper_position) of one episode's trajectory.h5; ValueError
    naming the key when one is missing or misshapen."""
    h5py = _import_h5py()
    try:
        with h5py.File(h5_path, "r") as h5:
            for key in (POSE_KEY, GRIPPER_KEY):
                if key not in h5:
                    raise ValueError(f"{h5_path.name} has no {key}")
            pose = np.asarray(h5[POSE_KEY], dtype=np.float64)  # [F, 6]
            gripper = np.asarray(h5[GRIPPER_KEY], dtype=np.float64).reshape(-1)  # [F] (or stored [F, 1])
    except OSError as err:  # missing, truncated or not HDF5 at all
        raise ValueError(f"{h5_path.name} does not read as HDF5: {err}") from None
    if pose.ndim != 2 or pose.shape[1] != 6 or len(gripper) != len(pose):
        raise ValueError(f"{POSE_KEY} {pose.shape} and {GRIPPER_KEY} {gripper.shape} must be [F, 6] and [F]")
    if not np.isfinite(pose).all() or not np.isfinite(gripper).all():
        raise ValueError(f"{h5_path.name} holds non-finite poses or gripper positions")
    return np.concatenate([pose, gripper[:, None]], axis=1)  # [F, 7]


# ----------------------------------------------------------------------------- episodes


def find_episodes(root: str | Path) -> list[Path]:
    """Every episode folder under `root` (or `root` itself), sorted: a folder holding a trajectory.h5, a
    metadata_*.json or a recordings/ folder, so that one missing a piece is found and reported, not
    silently left out."""
    root = Path(root)
    found = {p.parent for p in root.rglob(H5_FILE)} | {p.parent for p in root.rglob("metadata_*.json")}
    found |= {p.parent for p in root.rglob("recordings") if p.is_dir()}
    return sorted(found)


def _video_path(episode: Path, camera: str) -> Path:
    metas = sorted(episode.glob("metadata_*.json"))
    if not metas:
        raise ValueError("no metadata_*.json (complete DROID episodes have one)")
    try:
        meta = json.loads(metas[0].read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{metas[0].name} does not read as JSON: {err}") from None
    recorded = meta.get(f"{camera}_mp4_path") if isinstance(meta, dict) else None
    if not isinstance(recorded, str) or not recorded:
        raise ValueError(f"{metas[0].name} has no {camera}_mp4_path")
    video = episode / MP4_FOLDER / Path(recorded).name
    if not video.is_file():
        raise ValueError(f"no video {MP4_FOLDER / Path(recorded).name} ({camera}_mp4_path)")
    return video


class DroidReader:
    """Clips of `frames` frames from DROID raw episode folders, `clips_per_trajectory` per episode at start
    frames drawn from (seed, episode number); rank r of `world_size` reads episodes r, r + W, ... Yields
    TrajectoryClip (key: the episode's path relative to the root, frames resized to `size`)."""

    def __init__(
        self,
        episodes: Sequence[str | Path],
        *,
        frames: int,
        size: int,
        root: str | Path | None = None,
        frame_step: int = 1,
        fps: float | None = None,
        camera: str = "left",
        clips_per_trajectory: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        decoder: str = "auto",
    ) -> None:
        if not episodes:
            raise ValueError("episodes must name at least one DROID episode folder")
        if frames < 2:
            raise ValueError(f"frames must be >= 2 (a clip needs one action), got {frames}")
        if frame_step < 1 or clips_per_trajectory < 1 or size < 1:
            raise ValueError("frame_step, clips_per_trajectory and size must be >= 1")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {fps}")
        if camera not in CAMERAS:
            raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got {rank} of {world_size}")
        _import_h5py()  # fail before any work when the extra is not installed
        self.episodes = [Path(e) for e in episodes]
        self.root = Path(root) if root is not None else None
        self.frames, self.frame_step, self.fps, self.size = frames, frame_step, fps, size
        self.camera, self.clips, self.seed = camera, clips_per_trajectory, seed
        self.rank, self.world_size = rank, world_size
        self.decoder = VideoDecoder(decoder)
        self.skipped = 0

    def _name(self, episode: Path) -> str:
        if self.root is not None and episode.is_relative_to(self.root):
            return episode.relative_to(self.root).as_posix() or episode.name
        return episode.as_posix()

    def __iter__(self) -> Iterator[TrajectoryClip]:
        for number, episode in enumerate(self.episodes):
            if number % self.world_size != self.rank:
                continue
            name = self._name(episode)
            try:
                clips = self._clips(name, episode, np.random.default_rng([self.seed, number]))
            except (BadSampleError, ValueError, KeyError, OSError) as err:
                self.skipped += 1
                log.warning("skipping DROID episode %s: %s", name, err)
                continue
            yield from clips

    def _clips(self, name: str, episode: Path, rng: np.random.Generator) -> list[TrajectoryClip]:
        """Every clip of one episode, read whole before any is yielded (so a bad episode yields none)."""
        video_path = _video_path(episode, self.camera)
        states = read_droid_states(episode / H5_FILE)  # [F, 7]

        def pick(num_frames: int, fps: float) -> np.ndarray:
            if num_frames != len(states):
                raise ValueError(f"the video has {num_frames} frames, {H5_FILE} {len(states)} rows")
            step = self.frame_step if self.fps is None else max(1, math.ceil(fps / self.fps - 1e-9))
            span = (self.frames - 1) * step + 1
            if span > num_frames:
                raise ValueError(f"{num_frames} frames are fewer than a clip spans ({span})")
            starts = np.sort(rng.integers(0, num_frames - span + 1, size=self.clips))  # [C]
            return starts[:, None] + np.arange(self.frames)[None, :] * step  # [C, T]

        video = self.decoder(video_path.read_bytes(), pick)  # frames [C, T, H, W, 3]
        clips = []
        for c, index in enumerate(video.indices):
            crop = spatial_views(video.frames[c], crop=self.size, views=1)[0]  # [3, T, size, size]
            clip_states = states[index]  # [T, 7]
            clips.append(
                TrajectoryClip(
                    key=name,
                    start=int(index[0]),
                    frames=crop.permute(1, 2, 3, 0).contiguous().numpy(),  # [T, size, size, 3]
                    states=clip_states.astype(np.float32),
                    actions=pose_deltas(clip_states),  # [T - 1, 7]
                )
            )
        return clips
