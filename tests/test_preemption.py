"""Stopping on a signal: SIGTERM / SIGUSR1 / SIGINT finish the current step, write a checkpoint at the step
reached and stop; the resumed run continues exactly; a second signal during the save changes nothing; a
signal before the first step exits cleanly; data-loader workers survive the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import TINY_RUN

from vjepa.checkpoint import CheckpointManager
from vjepa.config import load_config

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
TINY = [
    *TINY_RUN,
    "optim.warmup_steps=3",
    "train.steps=12",
    "checkpoint.every_steps=100",  # no periodic save before the end: only the signal saves
    "checkpoint.keep_last=5",
]


def logged_steps(run_dir: Path) -> list[int]:
    log = run_dir / "log.jsonl"
    return [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.is_file() else []


def losses(run_dir: Path) -> dict[int, float]:
    return {
        json.loads(x)["step"]: json.loads(x)["loss"] for x in (run_dir / "log.jsonl").read_text().splitlines()
    }


def train_cmd(run_dir: Path, *extra: str) -> list[str]:
    config = str(QUICKSTART)
    return [
        sys.executable,
        "-m",
        "vjepa",
        "train",
        "--config",
        config,
        *TINY,
        f"train.out_dir={run_dir}",
        *extra,
    ]


def signal_mid_run(cmd: list[str], run_dir: Path, sig: int, *, after_steps: int, group: bool = False):
    """Starts `cmd`, sends `sig` once `after_steps` steps are logged (to the whole process group with
    `group`, as a terminal's Ctrl-C does), and waits for the process to end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group
    )
    deadline = time.time() + 180
    while time.time() < deadline and len(logged_steps(run_dir)) < after_steps and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the signal: " + proc.stderr.read()[-2000:]
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_mid_run_saves_at_the_step_reached_and_resumes_exactly(tmp_path: Path, sig: int) -> None:
    from vjepa.train.trainer import train

    train(load_config(QUICKSTART, [*TINY, f"train.out_dir={tmp_path / 'a'}"]))  # the uninterrupted run
    run_b = tmp_path / "b"
    code, out, err = signal_mid_run(train_cmd(run_b), run_b, sig, after_steps=4)
    assert code == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    reached = len(logged_steps(run_b))
    assert summary["stopped_by"] == signal.Signals(sig).name and 4 <= reached < 12
    assert summary["steps_run"] == reached
    latest = CheckpointManager(run_b / "checkpoints").latest()
    assert latest is not None and latest.name == f"step_{reached:08d}"
    assert f"{signal.Signals(sig).name} received" in err and "run the same command to resume" in err

    proc = subprocess.run(
        train_cmd(run_b),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["start_step"] == reached
    assert logged_steps(run_b) == list(range(12))  # no gap, nothing repeated
    la, lb = losses(tmp_path / "a"), losses(run_b)
    for step in range(12):
        assert lb[step] == pytest.approx(la[step], abs=1e-6), step
    final = "checkpoints/step_00000012/model.pt"
    sa = torch.load(tmp_path / "a" / final, weights_only=True)
    sb = torch.load(run_b / final, weights_only=True)
    for key, value in sa["target_encoder"].items():
        torch.testing.assert_close(sb["target_encoder"][key], value, rtol=0, atol=1e-6)


def test_ctrl_c_with_loader_workers_saves_and_says_so(tmp_path: Path, shard_dir: Path) -> None:
    """SIGINT to the whole process group (the workers get it too, as from a terminal)."""
    run = tmp_path / "run"
    files = [
        "data.dataset=files",
        f"data.sources=[{{path: '{shard_dir}'}}]",
        "data.num_workers=2",
        "data.resampled=true",
    ]
    code, out, err = signal_mid_run(train_cmd(run, *files), run, signal.SIGINT, after_steps=3, group=True)
    assert code == 0, err[-3000:]
    reached = len(logged_steps(run))
    assert json.loads(out.strip().splitlines()[-1])["stopped_by"] == "SIGINT"
    assert CheckpointManager(run / "checkpoints").latest().name == f"step_{reached:08d}"
    assert "SIGINT received" in err and "checkpoint written" in err


def test_a_second_signal_during_the_save_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vjepa import checkpoint
    from vjepa.train import run as run_module
    from vjepa.train import trainer

    real_step, real_save = trainer.train_step, checkpoint.save_trainer_state
    saves = []

    def step_then_signal(engine, batch, step, *args, **kwargs):
        result = real_step(engine, batch, step, *args, **kwargs)
        if step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    def save_with_interruption(folder, rank, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the save
        saves.append(kwargs["step"])
        real_save(folder, rank, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step_then_signal)
    monkeypatch.setattr(run_module, "save_trainer_state", save_with_interruption)
    # what the handlers were: a process started in the background by a shell begins with SIGINT ignored
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    summary = trainer.train(load_config(QUICKSTART, [*TINY, f"train.out_dir={tmp_path}"]))
    assert summary.stopped_by == "SIGUSR1" and summary.steps_run == 3 and saves == [3]
    latest = CheckpointManager(tmp_path / "checkpoints").latest()
    assert latest.name == "step_00000003" and (latest / "COMPLETE").is_file()
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored afterwards
    monkeypatch.undo()
    again = trainer.train(load_config(QUICKSTART, [*TINY, f"train.out_dir={tmp_path}"]))
    assert again.start_step == 3 and again.stopped_by == "" and logged_steps(tmp_path) == list(range(12))


def test_a_signal_before_the_first_step_exits_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vjepa.train import trainer

    real_resume = trainer.resume

    def resume_then_signal(run):
        start = real_resume(run)
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. preempted while the models were being built
        return start

    monkeypatch.setattr(trainer, "resume", resume_then_signal)
    summary = trainer.train(load_config(QUICKSTART, [*TINY, f"train.out_dir={tmp_path}"]))
    assert summary.stopped_by == "SIGTERM" and summary.steps_run == 0
    assert CheckpointManager(tmp_path / "checkpoints").latest() is None and logged_steps(tmp_path) == []
