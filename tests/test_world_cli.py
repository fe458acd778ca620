"""`vjepa plan` end to end on a tiny trained predictor: the report's numbers, valid PNGs, held-out seeds
only, deterministic given the seed. Plus the goal scenes and the report's statistics on their own, and the
slow end-to-end run (`vjepa synth --env push` -> `vjepa train` -> `vjepa train-ac` -> `vjepa plan`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY_RUN

from data_pipelines.push_env import PushEnv, PushEnvParams
from data_pipelines.trajectories import write_push_trajectories
from vjepa.cli import main
from vjepa.config import load_config
from vjepa.world.evaluate import Episode, goal_scene, summarise, training_seeds
from vjepa.world.plan_eval import METHODS

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
PLAN_FLAGS = ["--episodes", "3", "--steps", "3", "--samples", "12", "--elites", "3", "--iterations", "2"]


@pytest.fixture(scope="module")
def ac_run(tmp_path_factory) -> Path:
    """A tiny encoder (one pretraining step), six 32-px push trajectories and 8 steps of `vjepa train-ac`."""
    from vjepa.train.trainer import train

    root = tmp_path_factory.mktemp("plan")
    train(
        load_config(
            None, [*TINY_RUN, "train.steps=1", "checkpoint.every_steps=1", f"train.out_dir={root}/enc"]
        )
    )
    write_push_trajectories(root / "traj", episodes=6, steps=8, seed=0, params=PushEnvParams(size=32))
    overrides = [
        f"encoder.checkpoint={root}/enc",
        f"data.train={root}/traj",
        "data.crop=32",
        "predictor.width=24",
        "predictor.depth=1",
        "predictor.heads=2",
        "optim.steps=8",
        "optim.batch=4",
        "train.device=cpu",
        "train.progress=false",
        f"train.out_dir={root}/ac",
    ]
    assert main(["train-ac", *overrides]) == 0
    return root / "ac"


def check_report(report: dict, out: Path, *, episodes: int) -> None:
    assert set(report["methods"]) == set(METHODS) and report["episodes"] == episodes
    starts = {round(m["mean_start_distance"], 9) for m in report["methods"].values()}
    assert len(starts) == 1  # every controller ran the same episodes
    for name, m in report["methods"].items():
        assert m["n"] == episodes and len(m["final_distances"]) == episodes, name
        assert 0.0 <= m["success_rate"] <= 1.0, name
        assert m["success_se"] == pytest.approx(
            math.sqrt(m["success_rate"] * (1 - m["success_rate"]) / episodes)
        )
        assert m["mean_final_distance"] == pytest.approx(np.mean(m["final_distances"]), abs=1e-4)
        assert m["mean_final_distance"] >= 0 and math.isfinite(m["final_distance_se"]), name
    for key in ("trained_vs_random", "trained_vs_untrained"):
        assert set(report[key]) == {"difference", "se", "ratio"}
    assert -1.0 <= report["landscape"]["cosine_best_ideal"] <= 1.0
    for name in ("energy_landscape", "episode"):
        path = Path(report["plots"][name])
        assert path.parent == out and path.read_bytes()[:8] == PNG, name
    import matplotlib.image

    image = matplotlib.image.imread(out / "episode.png")
    assert image.ndim == 3 and image.shape[1] > 3 * image.shape[0]  # a strip: much wider than tall


def test_vjepa_plan_runs_end_to_end_and_reports_every_controller(
    ac_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "plan"
    code = main(["plan", "--predictor", str(ac_run), "--out", str(out), "--device", "cpu", *PLAN_FLAGS])
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    check_report(report, out, episodes=3)
    assert line["methods"]["random"]["success_rate"] == report["methods"]["random"]["success_rate"]
    assert report["seeds"] == [1_000_000, 1_000_002] and report["predictor"]["run"].endswith("step_00000008")
    # the same command again gives the same numbers (seeded episodes, goals, CEM draws and random actions)
    again = tmp_path / "again"
    main(["plan", "--predictor", str(ac_run), "--out", str(again), "--device", "cpu", *PLAN_FLAGS])
    second = json.loads((again / "report.json").read_text())
    assert second["methods"] == report["methods"] and second["landscape"] == report["landscape"]


def test_vjepa_plan_refuses_training_seeds_and_bad_paths(ac_run: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "plan")
    cases = [
        (["--predictor", str(ac_run), "--seed", "4"], "--seed: the planning episodes [4, 5] are training"),
        (["--predictor", str(tmp_path / "none")], "--predictor: no such folder"),
        (["--predictor", str(tmp_path)], "holds no AC checkpoint"),
        (["--predictor", str(ac_run), "--encoder", str(tmp_path / "x")], "--encoder: "),
        (["--predictor", str(ac_run), "--elites", "20"], "--elites: must be <= samples"),
    ]
    for flags, message in cases:
        assert main(["plan", "--out", out, *PLAN_FLAGS, *flags]) == 2
        assert message in capsys.readouterr().err, message
    assert not (tmp_path / "plan" / "report.json").exists()


def test_goal_scenes_move_only_the_agent_and_leave_the_episode_at_its_start() -> None:
    env = PushEnv(PushEnvParams(size=32))
    for seed in range(5):
        start_frame, start = env.reset(seed)
        goal_frame, goal = goal_scene(env, seed, (0.15, 0.3))
        assert 0.15 - 1e-6 <= np.linalg.norm(goal[0:2] - start[0:2]) <= 0.3 + 1e-6
        np.testing.assert_array_equal(goal[2:], start[2:])
        np.testing.assert_array_equal(env.render(), start_frame)  # back at the start
        assert not np.array_equal(goal_frame, start_frame)
        assert np.array_equal(goal_scene(env, seed, (0.15, 0.3))[1], goal)  # seeded


def test_the_report_statistics_and_training_seeds() -> None:
    frame = np.zeros((2, 2, 3), np.uint8)
    runs = [Episode(i, 0.2, d, [frame], frame) for i, d in enumerate([0.01, 0.04, 0.2, 0.3])]
    summary = summarise(runs, tolerance=0.05)
    assert summary["success_rate"] == 0.5 and summary["success_se"] == pytest.approx(0.25)
    assert summary["mean_final_distance"] == pytest.approx(0.1375)
    assert summary["final_distance_se"] == pytest.approx(np.std([0.01, 0.04, 0.2, 0.3], ddof=1) / 2)
    assert training_seeds(["traj-000000/ep00000012", "traj-000001/ep00000003", "other/x"]) == {3, 12}


@pytest.mark.slow
def test_trajectories_to_a_planning_report_through_the_commands(tmp_path: Path) -> None:
    """The shortened end-to-end run: write push trajectories, pretrain a tiny encoder briefly, train the AC
    predictor briefly, plan a few episodes; the report's numbers are present. No success threshold."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }

    def vjepa(*argv: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "vjepa", *argv],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    data, enc, ac, out = (tmp_path / n for n in ("push", "enc", "ac", "plan"))
    vjepa(
        "synth",
        "--env",
        "push",
        "--out",
        str(data),
        "--videos",
        "24",
        "--val-videos",
        "4",
        "--frames",
        "13",
        "--size",
        "32",
    )
    vjepa("train", *TINY_RUN, "train.steps=3", "checkpoint.every_steps=3", f"train.out_dir={enc}")
    summary = json.loads(
        vjepa(
            "train-ac",
            "--config",
            str(REPO / "configs/ac/push_tiny.yaml"),
            f"encoder.checkpoint={enc}",
            f"data.train={data}/train",
            "data.crop=32",
            "optim.steps=30",
            "optim.batch=8",
            "train.progress=false",
            f"train.out_dir={ac}",
        )
        .strip()
        .splitlines()[-1]
    )
    assert (
        summary["steps_run"] == 30
        and summary["trajectories"] == 24
        and summary["last_loss"] < summary["first_loss"]
    )
    vjepa(
        "plan", "--predictor", str(ac), "--out", str(out), "--device", "cpu", "--progress", "off", *PLAN_FLAGS
    )
    check_report(json.loads((out / "report.json").read_text()), out, episodes=3)
