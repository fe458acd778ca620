"""The DROID raw layout as a `vjepa train-ac` data source (data.kind=droid, data_pipelines/droid.py): tiny
episode folders written here with h5py and the project's mp4 encoder. Frames line up with their states,
actions are the documented end-effector deltas, a broken episode is skipped and counted, and train-ac runs
on them."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import frame_numbers, numbered_frames
from tiny import TINY_RUN

from data_pipelines.droid import DroidReader, euler_to_matrix, find_episodes, matrix_to_euler, pose_deltas
from data_pipelines.encode import encode_video
from vjepa.config import load_config
from vjepa.world.ac_checkpoint import read_ac_checkpoint
from vjepa.world.config import load_ac_config

h5py = pytest.importorskip("h5py")  # a dev dependency; `pip install 'vjepa[droid]'` for users

ROWS = 24  # frames (= h5 rows) per episode; numbered frames stay distinguishable up to 30
SERIAL = "23456789"


def episode_states(seed: int, rows: int = ROWS) -> np.ndarray:
    """[rows, 7] smooth random poses (x, y, z, roll, pitch, yaw) and a gripper position in [0, 1]."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0, 0.05, (rows, 6)), axis=0)
    gripper = np.clip(np.cumsum(rng.normal(0, 0.1, rows)), 0, 1)
    return np.concatenate([walk, gripper[:, None]], axis=1)


def write_episode(
    folder: Path, states: np.ndarray, *, fps: float = 15.0, video_rows: int | None = None
) -> Path:
    """A DROID-layout episode: metadata_<uuid>.json, trajectory.h5 (robot_state poses and gripper, plus
    commanded actions the reader does not use) and recordings/MP4/<serial>.mp4 of numbered 64x48 frames."""
    folder.mkdir(parents=True)
    (folder / "recordings" / "MP4").mkdir(parents=True)
    recorded = f"success/2023-06-01/{folder.name}/recordings/MP4/{SERIAL}.mp4"
    meta = {
        "uuid": f"LAB+abcd1234+{folder.name}",
        "left_mp4_path": recorded,
        "trajectory_length": len(states),
    }
    (folder / "metadata_LAB+abcd1234.json").write_text(json.dumps(meta))
    with h5py.File(folder / "trajectory.h5", "w") as h5:
        h5["observation/robot_state/cartesian_position"] = states[:, :6]
        h5["observation/robot_state/gripper_position"] = states[:, 6]
        h5["action/cartesian_velocity"] = np.zeros((len(states), 6))
        h5["action/gripper_position"] = states[:, 6]
    frames = numbered_frames(video_rows or len(states), height=48, width=64)
    (folder / "recordings" / "MP4" / f"{SERIAL}.mp4").write_bytes(encode_video(frames, fps=fps, gop=4))
    return folder


@pytest.fixture(scope="module")
def droid(tmp_path_factory) -> dict:
    """Three good episodes and three broken ones (damaged h5, no video, video and h5 disagreeing)."""
    root = tmp_path_factory.mktemp("droid")
    states = {f"lab/ep{i}": episode_states(i) for i in range(3)}
    for name, s in states.items():
        write_episode(root / name, s)
    (write_episode(root / "lab/bad_h5", episode_states(7)) / "trajectory.h5").write_bytes(b"not hdf5")
    (write_episode(root / "lab/no_video", episode_states(8)) / "recordings/MP4" / f"{SERIAL}.mp4").unlink()
    write_episode(root / "lab/short_video", episode_states(9), video_rows=ROWS - 4)
    return {"root": root, "states": states}


def test_euler_conversions_match_elementary_rotations() -> None:
    rng = np.random.default_rng(0)
    angles = rng.uniform(-1.2, 1.2, (16, 3))  # pitch inside (-pi/2, pi/2)

    def about(axis: int, theta: float) -> np.ndarray:
        c, s = np.cos(theta), np.sin(theta)
        i, j = (axis + 1) % 3, (axis + 2) % 3  # the plane it turns, in right-handed order
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    for a, matrix in zip(angles, euler_to_matrix(angles)):
        expected = about(2, a[2]) @ about(1, a[1]) @ about(0, a[0])  # extrinsic x, then y, then z
        np.testing.assert_allclose(matrix, expected, atol=1e-12)
    np.testing.assert_allclose(matrix_to_euler(euler_to_matrix(angles)), angles, atol=1e-10)


def test_actions_are_end_effector_deltas() -> None:
    states = episode_states(3, rows=6)
    actions = pose_deltas(states)  # [5, 7]
    assert actions.shape == (5, 7) and actions.dtype == np.float32
    np.testing.assert_allclose(actions[:, :3], np.diff(states[:, :3], axis=0), atol=1e-6)
    np.testing.assert_allclose(actions[:, 6], np.diff(states[:, 6]), atol=1e-6)
    rotations = euler_to_matrix(states[:, 3:6])
    # the rotation action applied to frame t's orientation gives frame t + 1's
    np.testing.assert_allclose(
        euler_to_matrix(actions[:, 3:6].astype(np.float64)) @ rotations[:-1], rotations[1:], atol=1e-5
    )
    yaw_only = np.zeros((3, 7))
    yaw_only[:, 5] = [0.1, 0.3, 0.2]
    np.testing.assert_allclose(pose_deltas(yaw_only)[:, 3:6], [[0, 0, 0.2], [0, 0, -0.1]], atol=1e-6)


def test_clips_align_frames_states_and_actions(droid) -> None:
    episodes = find_episodes(droid["root"])
    assert [e.name for e in episodes] == ["bad_h5", "ep0", "ep1", "ep2", "no_video", "short_video"]
    good = [e for e in episodes if e.name.startswith("ep")]
    reader = DroidReader(good, root=droid["root"], frames=4, size=32, fps=4.0, clips_per_trajectory=3, seed=1)
    clips = list(reader)
    assert len(clips) == 9 and reader.skipped == 0
    for clip in clips:
        assert (
            clip.frames.shape == (4, 32, 32, 3)
            and clip.states.shape == (4, 7)
            and clip.actions.shape == (3, 7)
        )
        shown = frame_numbers(clip.frames)  # which video frames the clip holds
        np.testing.assert_array_equal(shown, clip.start + 4 * np.arange(4))  # ceil(15 fps / 4 fps) = 4
        states = droid["states"][clip.key][shown]
        np.testing.assert_allclose(clip.states, states, atol=1e-6)
        np.testing.assert_allclose(clip.actions, pose_deltas(states), atol=1e-6)
    assert {c.key for c in clips} == {"lab/ep0", "lab/ep1", "lab/ep2"}
    every_other = DroidReader(good[:1], frames=3, size=32, frame_step=2)  # no fps: data.frame_step
    clip = next(iter(every_other))
    np.testing.assert_array_equal(frame_numbers(clip.frames), clip.start + 2 * np.arange(3))
    halves = [list(DroidReader(good, frames=4, size=32, rank=r, world_size=2, seed=1)) for r in (0, 1)]
    assert [[c.key for c in h] for h in halves] == [[str(good[0]), str(good[2])], [str(good[1])]]


def test_broken_episodes_are_skipped_counted_and_named_once(droid, caplog) -> None:
    reader = DroidReader(find_episodes(droid["root"]), root=droid["root"], frames=4, size=32, fps=4.0)
    with caplog.at_level(logging.WARNING, logger="data_pipelines.droid"):
        clips = list(reader)
    assert len(clips) == 3 and reader.skipped == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    for name, reason in (("bad_h5", "trajectory.h5"), ("no_video", "no video"), ("short_video", "20 frames")):
        assert sum(f"lab/{name}:" in line for line in lines) == 1 and any(reason in line for line in lines), (
            lines
        )


def test_without_h5py_the_error_names_the_extra(droid, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"vjepa\[droid\]"):
        DroidReader(find_episodes(droid["root"]), frames=4, size=32)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.kind=droid"], "data.state: must be all for data.kind=droid"),
        (["data.fps=4"], "data.fps: applies to data.kind=droid only"),
        (["data.kind=droid", "data.state=all", "data.fps=0"], "data.fps: must be > 0"),
        (["data.kind=droid", "data.state=all", "data.camera=top"], "data.camera"),
    ],
)
def test_droid_config_mistakes_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_ac_config(None, ["encoder.checkpoint=x", "data.train=y", *overrides], check_paths=False)


def test_train_ac_runs_on_droid_episodes(droid, tmp_path: Path, capsys) -> None:
    from vjepa.train.trainer import train
    from vjepa.world.train import train_ac

    train(
        load_config(
            None, [*TINY_RUN, "train.steps=1", "checkpoint.every_steps=1", f"train.out_dir={tmp_path}/enc"]
        )
    )
    with pytest.raises(ValueError, match="data.train: .* holds no DROID episode folders"):
        load_ac_config(
            None,
            [
                f"encoder.checkpoint={tmp_path}/enc",
                f"data.train={tmp_path}/enc",
                "data.kind=droid",
                "data.state=all",
            ],
        )
    overrides = [
        f"encoder.checkpoint={tmp_path}/enc",
        f"data.train={droid['root']}",
        "data.kind=droid",
        "data.state=all",
        "data.fps=4",
        "data.crop=32",
        "data.clips_per_trajectory=2",
        "predictor.width=24",
        "predictor.depth=1",
        "predictor.heads=2",
        "optim.steps=2",
        "optim.batch=4",
        "train.device=cpu",
        "train.progress=false",
        f"train.out_dir={tmp_path}/ac",
    ]
    summary = train_ac(load_ac_config(None, overrides))
    assert summary["steps_run"] == 2 and summary["skipped_steps"] == 0
    assert summary["clips"] == 6 and summary["trajectories"] == 3 and summary["skipped_trajectories"] == 3
    ckpt = read_ac_checkpoint(tmp_path / "ac")
    assert ckpt.shapes["action_dim"] == 7 and ckpt.shapes["state_dim"] == 7
    assert ckpt.trajectories == ["lab/ep0", "lab/ep1", "lab/ep2"]
    assert all(torch.isfinite(p).all() for p in ckpt.predictor().parameters())
    from vjepa.cli import main

    code = main(["plan", "--predictor", str(tmp_path / "ac"), "--out", str(tmp_path / "plan")])
    err = capsys.readouterr().err
    assert code == 2 and "--predictor: " in err and "data.kind=droid" in err, err  # push-scene planning only
