"""Faults: a damaged newest checkpoint falls back to the one before it, a full disk during a save names the
folder and keeps the last checkpoint, a checkpoint of another run is refused in one line, a finite but
diverging loss is not trained on, resumed runs log each step once, and a worker stops with its launcher."""

from __future__ import annotations

import json
import logging
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
TINY = TINY_RUN


def cfg_for(run: Path, *extra: str):
    return load_config(QUICKSTART, [*TINY, f"train.out_dir={run}", *extra])


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("damage", ["truncated model", "empty trainer state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, caplog, damage: str
) -> None:
    from vjepa.train.trainer import train

    train(cfg_for(tmp_path, "train.steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=3"))
    newest = CheckpointManager(tmp_path / "checkpoints").latest()
    assert newest.name == "step_00000004"
    victim = newest / ("model.pt" if damage == "truncated model" else "trainer_rank0.pt")
    victim.write_bytes(
        victim.read_bytes()[: victim.stat().st_size // 3] if damage == "truncated model" else b""
    )
    damaged = victim.read_bytes()
    with caplog.at_level(logging.WARNING):
        summary = train(
            cfg_for(tmp_path, "train.steps=3", "checkpoint.every_steps=2", "checkpoint.keep_last=3")
        )
    assert summary.start_step == 2 and summary.steps_run == 1  # from the checkpoint before the damaged one
    assert str(victim) in caplog.text and "trying the one before it" in caplog.text
    assert victim.read_bytes() == damaged  # nothing deleted or rewritten
    assert steps_logged(tmp_path) == list(range(3))


def test_every_checkpoint_damaged_is_an_error_that_deletes_nothing(tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    train(cfg_for(tmp_path, "train.steps=4", "checkpoint.every_steps=2"))
    folders = CheckpointManager(tmp_path / "checkpoints").complete()
    for folder in folders:
        (folder / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="every checkpoint in .* is damaged"):
        train(cfg_for(tmp_path, "train.steps=6"))
    assert all((f / "model.pt").is_file() for f in folders)


def test_a_checkpoint_of_another_run_is_refused_in_one_line(tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    train(cfg_for(tmp_path, "train.steps=2"))
    with pytest.raises(ValueError, match=r"model.name: 'vit_test' -> 'vit_tiny'.*train.init_from"):
        train(cfg_for(tmp_path, "train.steps=4", "model.name=vit_tiny"))
    with pytest.raises(ValueError, match=r"data.batch_size: 2 -> 4.*allow_new_batch_size"):
        train(cfg_for(tmp_path, "train.steps=4", "data.batch_size=4"))
    with pytest.raises(
        ValueError, match=r"optim.accumulate: 1 -> 2.*allow_new_batch_size"
    ):  # the global batch
        train(cfg_for(tmp_path, "train.steps=4", "optim.accumulate=2"))
    summary = train(
        cfg_for(tmp_path, "train.steps=4", "data.batch_size=4", "checkpoint.allow_new_batch_size=true")
    )
    assert summary.start_step == 2 and summary.steps_run == 2


def test_disk_full_during_a_save_names_the_folder_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    if os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root to mount")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = mnt / "run"
        train(cfg_for(run, "train.steps=2", "checkpoint.save_init=false"))  # one checkpoint fits in 16 MiB
        filler = mnt / "filler"
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 64 * 1024))  # leave too little for the next checkpoint
        with pytest.raises(OSError, match=r"step 4 into .*checkpoints failed: no space left on device"):
            train(cfg_for(run, "train.steps=4", "checkpoint.every_steps=4"))
        ckpts = CheckpointManager(run / "checkpoints")
        assert ckpts.latest().name == "step_00000002" and not list(ckpts.root.glob("*.tmp"))
        torch.load(ckpts.latest() / "model.pt", weights_only=True)  # intact
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_diverging_loss_is_skipped_and_never_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vjepa import objective
    from vjepa.train import trainer

    real = objective.jepa_loss
    calls = {"n": 0}

    def spiking(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] > 6:  # steps 0-5 are healthy, then the loss jumps 100x (finite)
            out.loss = out.loss * 100.0
        return out

    monkeypatch.setattr(objective, "jepa_loss", spiking)
    extra = [
        "train.steps=12",
        "checkpoint.every_steps=2",
        "train.spike_guard.warmup=3",
        "train.max_bad_steps=3",
    ]
    with pytest.raises(
        trainer.LossGuardError,
        match=r"3 consecutive .*above the trailing mean .* of the last 6 applied steps \(train.spike_guard\)"
        r".*The last checkpoint, .*step_00000006",
    ):
        trainer.train(cfg_for(tmp_path / "guarded", *extra))
    rows = [json.loads(line) for line in (tmp_path / "guarded" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0] * 6 + [1, 2, 3]
    calls["n"] = 0
    summary = trainer.train(cfg_for(tmp_path / "off", *extra, "train.spike_guard.std_factor=0"))
    assert summary.skipped_steps == 0  # without the guard the same losses are trained on


def test_the_spike_guard_total_cap_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other step spikes: never max_bad_steps in a row, but spike_guard.max_total in all."""
    from vjepa import objective
    from vjepa.train import trainer

    real = objective.jepa_loss
    calls = {"n": 0}

    def spiking(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] > 4 and calls["n"] % 2:  # steps 4, 6, 8, ... spike
            out.loss = out.loss * 100.0
        return out

    monkeypatch.setattr(objective, "jepa_loss", spiking)
    extra = [
        "train.steps=20",
        "train.spike_guard.warmup=3",
        "train.max_bad_steps=2",
        "train.spike_guard.max_total=3",
    ]
    with pytest.raises(trainer.LossGuardError, match=r"3 loss spikes skipped in all .*max_total=3"):
        trainer.train(cfg_for(tmp_path, *extra))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 0, 0, 1, 1, 2, 2, 3]


def test_a_resumed_run_logs_each_step_once(tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    train(cfg_for(tmp_path, "train.steps=6", "checkpoint.every_steps=4"))  # checkpoints at 4 and 6
    (tmp_path / "checkpoints" / "latest").unlink()
    CheckpointManager(tmp_path / "checkpoints").step_dir(6).joinpath("COMPLETE").unlink()  # as if killed at 5
    assert steps_logged(tmp_path) == list(range(6))
    train(cfg_for(tmp_path, "train.steps=8", "checkpoint.every_steps=4"))
    assert steps_logged(tmp_path) == list(range(8))


def test_a_worker_stops_when_its_torchrun_agent_dies(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
        "-m", "vjepa", "train", "--config", str(QUICKSTART), *TINY,
        "train.steps=100000", "checkpoint.every_steps=100000", f"train.out_dir={run}",
    ]  # fmt: skip
    agent = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((run / "log.jsonl").is_file() and len(steps_logged(run)) >= 2):
            time.sleep(0.1)
        kids = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        assert kids, "the agent has no worker"
        worker = int(kids[0])
        agent.send_signal(signal.SIGKILL)  # the agent dies without stopping its worker
        agent.wait(timeout=30)
        deadline = time.time() + 60
        while time.time() < deadline and Path(f"/proc/{worker}").exists():
            status = Path(f"/proc/{worker}/status").read_text() if Path(f"/proc/{worker}").exists() else ""
            if "zombie" in status:
                break
            time.sleep(0.2)
        assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text()
        latest = CheckpointManager(run / "checkpoints").latest()  # it saved on the SIGTERM it was sent
        assert latest is not None and int(latest.name.split("_")[1]) >= 2
    finally:
        if agent.poll() is None:
            agent.kill()


def test_a_run_saved_before_optim_accumulate_existed_resumes(tmp_path: Path) -> None:
    """A saved config without the key (an earlier version's run) counts as accumulate 1."""
    import yaml

    from vjepa.train.trainer import train

    train(cfg_for(tmp_path, "train.steps=2"))
    for config in tmp_path.rglob("config.yaml"):
        raw = yaml.safe_load(config.read_text())
        del raw["optim"]["accumulate"]
        config.write_text(yaml.safe_dump(raw))
    assert train(cfg_for(tmp_path, "train.steps=3")).start_step == 2
