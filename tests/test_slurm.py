"""The real SLURM job script on a real one-node SLURM cluster (started by the fixture): a 2-task DeepSpeed
ZeRO-2 run on CPU, and a run that gets the time-limit warning signal mid-run, checkpoints at the step it
reached, requeues itself and continues from exactly that step.

Marked `slurm`: deselected by default; `.ci/run` installs SLURM and runs them with VJEPA_REQUIRE_SLURM=1,
which turns "SLURM cannot start here" from a skip into a failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from slurm_cluster import SlurmCluster, missing_binaries, start_cluster

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "slurm" / "pretrain.sbatch"
TINY = [
    "--config",
    str(REPO / "configs" / "quickstart.yaml"),
    "model.name=vit_test",
    "model.pred_width=32",
    "model.pred_depth=2",
    "model.pred_heads=4",
    "data.frames_per_clip=4",
    "data.crop_size=32",
    "data.batch_size=2",
    "log.progress=false",
    "log.tensorboard=false",
    "dist.backend=deepspeed",
    "dist.zero_stage=2",
]


def unavailable(reason: str) -> None:
    if os.environ.get("VJEPA_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM tests required (VJEPA_REQUIRE_SLURM=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    if sys.platform != "linux" or os.geteuid() != 0:
        unavailable("the test cluster needs Linux and root (munged, slurmd)")
    missing = missing_binaries()
    if missing:
        unavailable(
            f"SLURM is not installed (missing {', '.join(missing)}; "
            "apt-get install slurmctld slurmd slurm-client munge)"
        )
    try:
        c = start_cluster(tmp_path_factory.mktemp("slurm"))
    except RuntimeError as err:
        unavailable(str(err))
    c.env.update(VJEPA_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    yield c
    c.stop()


def submit(cluster: SlurmCluster, out: Path, *overrides: str, wait: bool = False) -> str:
    flags = ["--parsable", "--nodes=1", "--ntasks=2", f"--output={out / 'sbatch.out'}"] + (
        ["--wait"] if wait else []
    )
    proc = cluster.run(
        "sbatch", *flags, str(SCRIPT), *TINY, f"train.out_dir={out / 'run'}", *overrides, timeout=600
    )
    return proc.stdout.strip().split(";")[0]


def wait_for(cluster: SlurmCluster, job: str, states: set[str], timeout: float) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = cluster.job(job)
        if info.get("JobState") in states:
            return info
        time.sleep(1)
    raise AssertionError(f"job {job} never reached {states}: {cluster.job(job)}\n{cluster.logs()}")


def logged_steps(run: Path) -> list[int]:
    log = run / "log.jsonl"
    return [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.is_file() else []


def test_pretrain_script_runs_two_tasks_with_deepspeed(cluster: SlurmCluster, tmp_path: Path) -> None:
    job = submit(cluster, tmp_path, "train.steps=4", "checkpoint.every_steps=2", wait=True)
    info = wait_for(cluster, job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
    run = tmp_path / "run"
    job_log = (run / "slurm" / f"job-{job}.log").read_text()
    assert info["JobState"] == "COMPLETED", job_log + cluster.logs()
    assert "2 tasks" in job_log and "status 0" in job_log
    assert json.loads((run / "env.json").read_text())["launcher"] == "slurm"
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert logged_steps(run) == [0, 1, 2, 3]
    step = run / "checkpoints" / "step_00000004"
    assert (
        (step / "COMPLETE").is_file()
        and (step / "deepspeed").is_dir()
        and (step / "trainer_rank1.pt").is_file()
    )
    assert {p.name for p in (run / "slurm").glob("job-*-task-*.log")} == {
        f"job-{job}-task-0.log",
        f"job-{job}-task-1.log",
    }


def test_warning_signal_checkpoints_requeues_and_continues_exactly(
    cluster: SlurmCluster, tmp_path: Path
) -> None:
    steps = 40
    job = submit(cluster, tmp_path, f"train.steps={steps}", "checkpoint.every_steps=1000")
    run = tmp_path / "run"
    deadline = time.time() + 300
    while len(logged_steps(run)) < 6 and time.time() < deadline:
        time.sleep(0.2)
    assert len(logged_steps(run)) >= 6, cluster.job(job)
    cluster.run("scancel", "--signal=USR1", "--batch", job)  # what --signal=B:USR1@120 sends before the limit
    wait_for(cluster, job, {"PENDING"}, timeout=120)
    info = cluster.job(job)
    assert info["Restarts"] == "1", info
    first = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert len(first) == 1, first  # only the signal saved: no periodic checkpoint was due
    reached = int(first[0].split("_")[1])
    assert 6 <= reached < steps and logged_steps(run) == list(range(reached))
    start_requeued(cluster, job)
    info = wait_for(cluster, job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=300)
    job_log = (run / "slurm" / f"job-{job}.log").read_text()
    assert info["JobState"] == "COMPLETED", job_log + cluster.logs()
    assert "SIGUSR1" in job_log and f"requeueing job {job}" in job_log and "(restart 1)" in job_log
    assert logged_steps(run) == list(range(steps))  # no gap, nothing repeated
    task0 = (run / "slurm" / f"job-{job}-task-0.log").read_text()
    assert f"resumed from {run / 'checkpoints' / first[0]} at step {reached}" in task0
    assert (run / "checkpoints" / f"step_{steps:08d}" / "COMPLETE").is_file()


def test_extract_script_splits_the_parts_over_two_tasks(cluster: SlurmCluster, tmp_path: Path) -> None:
    from tiny import TINY_RUN

    from data_pipelines.synthetic import write_synthetic_dataset
    from vjepa.cli import main
    from vjepa.config import load_config
    from vjepa.eval.extract import load_features
    from vjepa.train.trainer import train

    run = tmp_path / "run"
    train(load_config(None, [*TINY_RUN, "train.steps=1", "checkpoint.every_steps=1", f"train.out_dir={run}"]))
    data = tmp_path / "data"
    write_synthetic_dataset(data, videos=10, val_videos=4, classes=2, frames=8, size=32, seed=0, workers=1)
    args = ["--checkpoint", str(run), "--data", str(data), "--part-size", "3", "--batch", "4"]
    out = tmp_path / "features"
    flags = ["--parsable", "--wait", "--nodes=1", "--ntasks=2", f"--output={tmp_path / 'sbatch.out'}"]
    script = REPO / "launch" / "slurm" / "extract.sbatch"
    job = cluster.run("sbatch", *flags, str(script), *args, "--out", str(out), timeout=600).stdout.strip()
    job = job.split(";")[0]
    info = wait_for(cluster, job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
    job_log = (out / "slurm" / f"job-{job}.log").read_text()
    assert info["JobState"] == "COMPLETED", job_log + cluster.logs()
    summaries = [json.loads(line) for line in job_log.splitlines() if line.startswith("{")]
    assert sorted((s["rank"], s["world"]) for s in summaries) == [(0, 2), (1, 2)], job_log
    assert main(["extract", *args, "--out", str(tmp_path / "local")]) == 0  # one process, here
    for split in ("train", "val"):
        a, b = load_features(out / split), load_features(tmp_path / "local" / split)
        assert a.keys == b.keys and torch.equal(a.tokens, b.tokens)


def start_requeued(cluster: SlurmCluster, job: str) -> None:
    """SLURM holds a requeued job for a while before it is eligible again; let it start now. Not in the
    same second as the requeue: slurmd revokes the killed run's credential by job id and time in seconds,
    and a restart within that second is refused as "Job credential revoked" (seen once in this suite)."""
    time.sleep(2.0)
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")


def test_warning_signal_in_phase_two_requeues_and_resumes_in_phase_two(
    cluster: SlurmCluster, tmp_path: Path
) -> None:
    """`train.phases` under the job script: the warning signal during the second phase checkpoints it; the
    requeued job skips the finished first phase and continues the second from the step it reached."""
    steps = 30
    phases = (
        f"train.phases=[{{name: a, steps: 2}}, {{name: b, steps: {steps}, "
        "overrides: {data.frames_per_clip: 8, data.crop_size: 48}}]"
    )
    job = submit(cluster, tmp_path, phases, "checkpoint.every_steps=1000")
    run, run_b = tmp_path / "run", tmp_path / "run" / "phase-1-b"
    deadline = time.time() + 300
    while len(logged_steps(run_b)) < 4 and time.time() < deadline:
        time.sleep(0.2)
    assert len(logged_steps(run_b)) >= 4, cluster.job(job)
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    wait_for(cluster, job, {"PENDING"}, timeout=120)
    first = sorted(p.name for p in (run_b / "checkpoints").glob("step_*"))
    assert len(first) == 1, first  # the signal's checkpoint, in phase b
    reached = int(first[0].split("_")[1])
    assert 4 <= reached < steps and not (run_b / "PHASE_DONE").exists()
    start_requeued(cluster, job)
    info = wait_for(cluster, job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=300)
    job_log = (run / "slurm" / f"job-{job}.log").read_text()
    assert info["JobState"] == "COMPLETED", job_log + cluster.logs()
    assert logged_steps(run / "phase-0-a") == [0, 1]  # phase a ran once
    assert logged_steps(run_b) == list(range(steps))  # no gap, nothing repeated
    task0 = (run / "slurm" / f"job-{job}-task-0.log").read_text()
    assert "phase 0 (a) finished earlier" in task0
    assert f"resumed from {run_b / 'checkpoints' / first[0]} at step {reached}" in task0
    assert (run_b / "PHASE_DONE").is_file()
