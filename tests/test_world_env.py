"""The built-in push scene (determinism, pushing, action bounds) and its trajectory shards (round trip)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.push_env import PushEnv, PushEnvParams
from data_pipelines.trajectories import TrajectoryReader, push_episode, write_push_trajectories


def _place(env: PushEnv, agent: tuple[float, float], obj: tuple[float, float]) -> None:
    """Puts the agent and the object at given positions, the distractor where it is."""
    env.set_state(np.concatenate([agent, obj, env.state[4:6]]))


def test_same_seed_and_actions_give_identical_episodes() -> None:
    env_a, env_b = PushEnv(), PushEnv()
    frames_a, states_a, actions_a = push_episode(env_a, seed=7, steps=12)
    frames_b, states_b, actions_b = push_episode(env_b, seed=7, steps=12)
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(states_a, states_b)
    np.testing.assert_array_equal(actions_a, actions_b)
    frames_c, states_c, _ = push_episode(env_a, seed=8, steps=12)
    assert not np.array_equal(frames_a[0], frames_c[0])
    assert not np.array_equal(states_a[0], states_c[0])
    assert frames_a.shape == (13, 64, 64, 3) and frames_a.dtype == np.uint8
    assert states_a.shape == (13, 6) and states_a.dtype == np.float32 and actions_a.shape == (12, 2)


def test_reset_with_the_same_seed_replays_the_episode() -> None:
    env = PushEnv()
    actions = np.random.default_rng(0).uniform(-0.05, 0.05, (6, 2))
    runs = []
    for _ in range(2):
        frame, state = env.reset(3)
        runs.append([(frame, state)] + [env.step(a) for a in actions])
    for (f1, s1), (f2, s2) in zip(*runs, strict=True):
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(s1, s2)


def test_the_object_moves_only_when_the_agent_touches_it() -> None:
    env = PushEnv()
    env.reset(0)
    touch = env.params.agent_radius + env.params.object_radius
    _place(env, agent=(0.2, 0.5), obj=(0.2 + touch + 0.12, 0.5))
    for _ in range(2):  # 2 x 0.05 to the right: the gap (0.12) does not close, the object stays put
        _, state = env.step(np.array([0.05, 0.0]))
        assert np.array_equal(state[2:4], np.float32([0.2 + touch + 0.12, 0.5]))
    _, state = env.step(np.array([0.05, 0.0]))  # now the agent overlaps it: pushed to touching distance
    assert state[2] > np.float32(0.2 + touch + 0.12)
    assert abs(float(state[3]) - 0.5) < 1e-6
    assert np.linalg.norm(state[2:4] - state[0:2]) == pytest.approx(touch, abs=1e-6)
    before = state[2:4].copy()
    _, state = env.step(np.array([-0.05, 0.0]))  # moving away leaves it where it is
    np.testing.assert_array_equal(state[2:4], before)


def test_an_object_pushed_into_a_wall_stops_and_holds_the_agent_back() -> None:
    env = PushEnv()
    env.reset(0)
    p = env.params
    touch = p.agent_radius + p.object_radius
    _place(env, agent=(1 - p.object_radius - touch, 0.5), obj=(1 - p.object_radius, 0.5))
    _, state = env.step(np.array([0.05, 0.0]))
    assert float(state[2]) <= 1 - p.object_radius + 1e-6
    assert np.linalg.norm(state[2:4] - state[0:2]) >= touch - 1e-6


def test_actions_are_clipped_to_the_bounds() -> None:
    env = PushEnv(PushEnvParams(distractor_speed=0.0))
    env.reset(1)
    _place(env, agent=(0.5, 0.5), obj=(0.9, 0.9))
    _, big = env.step(np.array([1e6, -1e6]))
    np.testing.assert_allclose(big[0:2], [0.55, 0.45], atol=1e-6)
    np.testing.assert_array_equal(env.clip_action(np.array([0.2, -0.01])), [0.05, -0.01])
    for bad in (np.array([np.nan, 0.0]), np.zeros(3)):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)


def test_bad_settings_and_calls_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="max_speed"):
        PushEnv(PushEnvParams(max_speed=0.5))
    with pytest.raises(ValueError, match="size"):
        PushEnv(PushEnvParams(size=63))
    with pytest.raises(ValueError, match="reset"):
        PushEnv().step(np.zeros(2))
    with pytest.raises(ValueError, match="seed"):
        PushEnv().reset(-1)


def test_the_agent_is_drawn_where_the_state_says() -> None:
    env = PushEnv()
    frames, states, _ = push_episode(env, seed=5, steps=8)
    red = (frames[..., 0] > 200) & (frames[..., 1] < 100) & (frames[..., 2] < 100)  # [F, H, W]
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    for f in range(len(frames)):
        centre = np.array([xs[red[f]].mean(), ys[red[f]].mean()]) / 64
        np.testing.assert_allclose(centre, states[f, 0:2], atol=1.5 / 64)


@pytest.mark.parametrize("frame_step", [1, 2])
def test_trajectory_shards_round_trip_with_aligned_actions(tmp_path: Path, frame_step: int) -> None:
    summary = write_push_trajectories(tmp_path, episodes=3, steps=10, seed=20, shard_size=2)
    assert len(summary["shards"]) == 2
    with tarfile.open(summary["shards"][0]) as tar:
        names = sorted(tar.getnames())
    assert names[:4] == [
        "ep00000020.actions.npy",
        "ep00000020.json",
        "ep00000020.mp4",
        "ep00000020.states.npy",
    ]
    reader = TrajectoryReader(
        summary["shards"], frames=4, frame_step=frame_step, clips_per_trajectory=2, seed=1
    )
    clips = list(reader)
    assert len(clips) == 6 and reader.skipped == 0
    env = PushEnv()
    for clip in clips:
        seed = int(clip.key.rsplit("ep", 1)[1])
        frames, states, actions = push_episode(env, seed=seed, steps=10)
        index = clip.start + frame_step * np.arange(4)
        np.testing.assert_array_equal(clip.states, states[index])
        expected = actions[clip.start : clip.start + 3 * frame_step].reshape(3, frame_step, 2).sum(1)
        np.testing.assert_allclose(clip.actions, expected, rtol=0, atol=1e-7)
        # each decoded frame is closest to the rendered frame at its own index (so video and arrays align)
        error = np.abs(clip.frames[:, None].astype(np.int16) - frames[None].astype(np.int16)).mean((2, 3, 4))
        np.testing.assert_array_equal(error.argmin(1), index)  # error: [T, F]
        assert clip.frames.shape == (4, 64, 64, 3)


def test_a_sample_whose_arrays_do_not_match_its_video_is_skipped(tmp_path: Path) -> None:
    summary = write_push_trajectories(tmp_path / "ok", episodes=1, steps=6, seed=0)
    with tarfile.open(summary["shards"][0]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    short = io.BytesIO()
    np.save(short, np.zeros((3, 6), np.float32))
    members["ep00000000.states.npy"] = short.getvalue()
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert json.loads(members["ep00000000.json"])["frames"] == 7
    reader = TrajectoryReader([bad], frames=2)
    assert list(reader) == [] and reader.skipped == 1


def test_vjepa_synth_env_push_writes_train_and_val_trajectories(tmp_path: Path) -> None:
    from vjepa.cli import main

    code = main(
        [
            "synth",
            "--env",
            "push",
            "--out",
            str(tmp_path),
            "--videos",
            "2",
            "--val-videos",
            "1",
            "--frames",
            "5",
        ]
    )
    assert code == 0
    train, val = sorted((tmp_path / "train").glob("*.tar")), sorted((tmp_path / "val").glob("*.tar"))
    clips = list(TrajectoryReader(train, frames=5)) + list(TrajectoryReader(val, frames=5))
    assert [c.key.split("/")[1] for c in clips] == [
        "ep00000000",
        "ep00000001",
        "ep00000002",
    ]  # val seeds follow
    assert all(c.frames.shape == (5, 64, 64, 3) and c.actions.shape == (4, 2) for c in clips)


def test_the_distractor_ignores_the_actions_and_set_state_checks_its_input() -> None:
    env = PushEnv()
    rng = np.random.default_rng(0)
    runs = []
    for scale in (0.0, 1.0):
        env.reset(2)
        runs.append(np.stack([env.step(scale * rng.uniform(-0.05, 0.05, 2))[1] for _ in range(20)]))
    np.testing.assert_array_equal(runs[0][:, 4:6], runs[1][:, 4:6])
    assert not np.array_equal(runs[0][:, 0:2], runs[1][:, 0:2])
    frame, state = env.set_state(np.array([0.2, 0.2, 0.7, 0.7, 0.5, 0.2]))
    np.testing.assert_allclose(state, [0.2, 0.2, 0.7, 0.7, 0.5, 0.2], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(frame, env.render())
    with pytest.raises(ValueError, match="overlap"):
        env.set_state(np.array([0.5, 0.5, 0.55, 0.5, 0.2, 0.2]))
    with pytest.raises(ValueError, match="arena"):
        env.set_state(np.array([0.01, 0.5, 0.7, 0.7, 0.2, 0.2]))
