"""A real 2-node torchrun job on one machine: two agents started with launch/torchrun.sh on loopback, one
process each, a c10d rendezvous, DeepSpeed ZeRO-2 on gloo. One worker is killed mid-run; the elastic
restart resumes both ranks from the newest checkpoint and the run finishes, with no hang (every wait in
this test is bounded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.dist]

REPO = Path(__file__).resolve().parents[1]
STEPS = 10


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def worker_of(agent: subprocess.Popen) -> int | None:
    for pid in children(agent.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vjepa" in cmd and b"train" in cmd and b"torch.distributed.run" not in cmd:
            return pid
    return None


def logged_steps(run: Path) -> list[int]:
    log = run / "log.jsonl"
    return [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.is_file() else []


def test_two_agents_restart_from_the_last_checkpoint_after_a_worker_dies(tmp_path: Path) -> None:
    run = tmp_path / "run"
    port = free_port(span=2)  # the rendezvous port and the group store next to it
    cmd = [
        "bash", str(REPO / "launch" / "torchrun.sh"),
        "--nnodes", "2", "--rdzv", f"127.0.0.1:{port}", "--rdzv-id", "elastic-test", "--max-restarts", "2",
        "--nproc", "1", "--",
        "--config", str(REPO / "configs" / "quickstart.yaml"),
        "model.name=vit_test", "model.pred_width=32", "model.pred_depth=2", "model.pred_heads=4",
        "data.frames_per_clip=4", "data.crop_size=32", "data.batch_size=2",
        "log.progress=false", "log.tensorboard=false",
        "dist.backend=deepspeed", "dist.zero_stage=2", "dist.timeout_minutes=2",
        f"train.steps={STEPS}", "checkpoint.every_steps=2", "checkpoint.keep_last=10", f"train.out_dir={run}",
    ]  # fmt: skip
    env = {**os.environ, "VJEPA_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO"}
    logs = [(tmp_path / f"agent{i}.log").open("w") for i in range(2)]
    agents = [subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO) for f in logs]
    try:
        deadline = time.time() + 300
        while len(logged_steps(run)) < 5 and time.time() < deadline and all(a.poll() is None for a in agents):
            time.sleep(0.2)
        assert len(logged_steps(run)) >= 5, (tmp_path / "agent0.log").read_text()[-3000:]
        victim = worker_of(agents[1])
        assert victim is not None, "no worker process under the second agent"
        os.kill(victim, signal.SIGKILL)
        codes = [a.wait(timeout=400) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
        for f in logs:
            f.close()
    text = "".join((tmp_path / f"agent{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], text[-4000:]
    resumed = [line for line in text.splitlines() if "resumed from" in line]
    assert len(resumed) == 2, text[-4000:]  # both ranks of the restarted group resumed
    step = int(resumed[0].rsplit("at step", 1)[1])
    assert step >= 4 and step % 2 == 0
    assert all(f"at step {step}" in line for line in resumed)
    assert (run / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").is_file()
    steps = logged_steps(run)
    assert sorted(set(steps)) == list(range(STEPS)) and steps[-1] == STEPS - 1
