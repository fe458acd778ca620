"""`train.phases`: two phases with different clip lengths and crop sizes in one `train(cfg)`; every phase's
config checked before any work; a SIGKILL in the second phase resumes there exactly; a stop signal in the
first phase does not start the second; a changed phase list is refused."""

from __future__ import annotations

import json
import logging
import os
import shutil
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
from vjepa.layers.pos_embed import sincos_3d

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
A_STEPS, B_STEPS = 4, 6
# phase b: twice the frames and a larger crop, its own schedule (vjepa2 with a cooldown over the phase)
B_OVERRIDES = (
    "{data.frames_per_clip: 8, data.crop_size: 48, optim.schedule: vjepa2, optim.warmup_steps: 0, "
    f" optim.cooldown_steps: {B_STEPS}}}"
)
PHASES = (
    f"train.phases=[{{name: a, steps: {A_STEPS}}}, {{name: b, steps: {B_STEPS}, overrides: {B_OVERRIDES}}}]"
)
ARGS = [*TINY_RUN, "optim.warmup_steps=2", "checkpoint.every_steps=2", "checkpoint.keep_last=5", PHASES]


def phase_dir(run: Path, phase: str) -> Path:
    return run / {"a": "phase-0-a", "b": "phase-1-b"}[phase]


def rows(run: Path, phase: str) -> list[dict]:
    log = phase_dir(run, phase) / "log.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []


def final_state(run: Path, phase: str) -> dict:
    steps = A_STEPS if phase == "a" else B_STEPS
    path = phase_dir(run, phase) / "checkpoints" / f"step_{steps:08d}" / "model.pt"
    return torch.load(path, weights_only=True)


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    sa, sb = final_state(run_a, "b"), final_state(run_b, "b")
    for part in ("encoder", "predictor", "target_encoder"):
        for key, value in sa[part].items():
            torch.testing.assert_close(sb[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")


def cli(run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vjepa",
        "train",
        "--config",
        str(QUICKSTART),
        *ARGS,
        f"train.out_dir={run}",
        *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    """Both phases in one in-process `train(cfg)` call: (run folder, summary)."""
    from vjepa.train.trainer import train

    run = tmp_path_factory.mktemp("phases") / "run"
    summary = train(load_config(QUICKSTART, [*ARGS, f"train.out_dir={run}"]))
    return run, summary


# ----------------------------------------------------------------------------- checked before any work


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("{data.crop_siz: 48}", "unknown config key 'train.phases.1.data.crop_siz'"),
        ("{data.crop_size: 40}", "train.phases.1.data.crop_size: 40 is not divisible"),
        ("{data: {frames_per_clip: x}}", "train.phases.1.data.frames_per_clip: expected an integer"),
        ("{model.name: vit_tiny}", "train.phases.1.model.name: a phase cannot change model.name"),
        ("{train.out_dir: elsewhere}", "train.phases.1.train.out_dir: a phase cannot change"),
        ("{optim.cooldown_steps: 99}", "train.phases.1.optim.cooldown_steps"),
        ("{mask: [{num_blocks: 2}]}", "train.phases.1.mask: 1 mask configurations"),
    ],
)
def test_a_bad_key_or_value_in_phase_two_stops_the_command_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, override: str, named: str
) -> None:
    from vjepa.cli import main

    phases = f"train.phases=[{{name: a, steps: 2}}, {{name: b, steps: 2, overrides: {override}}}]"
    run = tmp_path / "run"
    code = main(["train", "--config", str(QUICKSTART), *TINY_RUN, f"train.out_dir={run}", phases])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert not run.exists()  # nothing was built or written


def test_phase_names_and_steps_are_checked(tmp_path: Path) -> None:
    for phases, named in [
        ("[{name: a, steps: 0}]", "train.phases.0.steps"),
        ("[{name: a, steps: 1}, {name: a, steps: 1}]", "train.phases.1.name: 'a' names two phases"),
        ("[{name: 'a/b', steps: 1}]", "train.phases.0.name"),
    ]:
        with pytest.raises(ValueError, match=named):
            load_config(QUICKSTART, [*TINY_RUN, f"train.phases={phases}"])
    assert load_config(QUICKSTART, TINY_RUN).train.phases == []  # no phases: one run, as before


# ----------------------------------------------------------------------------- two phases in one call


def test_two_phases_with_other_clips_run_in_one_call(uninterrupted) -> None:
    run, summary = uninterrupted
    assert (summary.phase, summary.phase_index, summary.phases_done, summary.phases_total) == ("b", 1, 2, 2)
    assert summary.steps == summary.steps_run == B_STEPS and summary.run_dir == str(phase_dir(run, "b"))
    assert [r["step"] for r in rows(run, "a")] == list(range(A_STEPS))
    b_rows = rows(run, "b")
    cfg_b = load_config(phase_dir(run, "b") / "config.yaml")
    assert [r["step"] for r in b_rows] == list(range(B_STEPS))  # phase b's own step counter
    assert b_rows[0]["lr"] == pytest.approx(cfg_b.optim.lr) and b_rows[-1]["lr"] < b_rows[0]["lr"]  # cooldown
    assert (cfg_b.data.frames_per_clip, cfg_b.data.crop_size, cfg_b.train.steps) == (8, 48, B_STEPS)
    # the fixed sin-cos tables are the ones of each phase's own token grid
    sa, sb = final_state(run, "a"), final_state(run, "b")
    torch.testing.assert_close(sa["encoder"]["pos_embed"][0], sincos_3d(48, (2, 2, 2)))
    torch.testing.assert_close(sb["encoder"]["pos_embed"][0], sincos_3d(48, (4, 3, 3)))
    # phase b continued phase a's AdamW state (its step count runs on) and wrote no random baseline
    steps = {int(s["step"]) for s in sb["opt"]["state"].values()}
    assert steps == {A_STEPS + B_STEPS}
    assert not (phase_dir(run, "b") / "init_model.pt").exists()
    assert json.loads((run / "phases.json").read_text())[1]["name"] == "b"


def test_a_finished_run_reruns_nothing_and_a_lost_marker_only_closes_its_phase(
    uninterrupted, tmp_path
) -> None:
    from vjepa.train.trainer import train

    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    cfg = load_config(QUICKSTART, [*ARGS, f"train.out_dir={run}"])
    again = train(cfg)
    assert (again.phase, again.steps_run, again.phases_done) == ("b", 0, 2)
    (phase_dir(run, "a") / "PHASE_DONE").unlink()  # killed between phase a's final checkpoint and its marker
    again = train(cfg)
    assert (phase_dir(run, "a") / "PHASE_DONE").is_file() and again.phases_done == 2
    assert len(rows(run, "a")) == A_STEPS and len(rows(run, "b")) == B_STEPS  # no step ran again


def test_a_restart_at_the_phase_boundary_starts_phase_two_as_the_uninterrupted_run(uninterrupted, tmp_path):
    """Killed after phase a finished, before phase b's first checkpoint: phase b starts from phase a's end."""
    from vjepa.train.trainer import train

    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    shutil.rmtree(phase_dir(run, "b"))
    summary = train(load_config(QUICKSTART, [*ARGS, f"train.out_dir={run}"]))
    assert (summary.phase, summary.start_step, summary.steps_run) == ("b", 0, B_STEPS)
    assert_same_weights(uninterrupted[0], run)


def test_a_changed_phase_list_is_refused(uninterrupted, tmp_path) -> None:
    from vjepa.train.trainer import train

    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    changed = PHASES.replace(f"steps: {B_STEPS},", f"steps: {B_STEPS + 2},")
    changed = changed.replace(f"cooldown_steps: {B_STEPS}", f"cooldown_steps: {B_STEPS + 2}")
    cfg = load_config(QUICKSTART, [*ARGS, changed, f"train.out_dir={run}"])
    with pytest.raises(ValueError, match=r"another phase list \(train.phases.1 was"):
        train(cfg)
    assert len(rows(run, "b")) == B_STEPS


def test_rope_phases_run_with_other_clips(tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    b = "{name: b, steps: 2, overrides: {data: {frames_per_clip: 8, crop_size: 48}}}"  # the nested form
    phases = f"train.phases=[{{name: a, steps: 2}}, {b}]"
    cfg = load_config(QUICKSTART, [*TINY_RUN, "model.pos_embed=rope", f"train.out_dir={tmp_path}", phases])
    summary = train(cfg)
    assert (summary.phase, summary.steps_run, summary.phases_done) == ("b", 2, 2)
    assert all(r["loss"] == r["loss"] for r in rows(tmp_path, "b"))  # finite: no NaN


# ----------------------------------------------------------------------------- kills and signals


def start_and_wait(cmd: list[str], until) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not until() and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended first: " + proc.stderr.read()[-2000:]
    return proc


def test_a_kill_in_phase_two_resumes_in_phase_two_exactly(uninterrupted, tmp_path: Path, caplog) -> None:
    from vjepa.train.trainer import train

    run = tmp_path / "run"
    proc = start_and_wait(cli(run), lambda: CheckpointManager(phase_dir(run, "b") / "checkpoints").latest())
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(CheckpointManager(phase_dir(run, "b") / "checkpoints").latest().name.split("_")[1])
    assert killed_at < B_STEPS and not (phase_dir(run, "b") / "PHASE_DONE").exists()
    done_a = (phase_dir(run, "a") / "PHASE_DONE").stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="vjepa.train.phases"):
        summary = train(load_config(QUICKSTART, [*ARGS, f"train.out_dir={run}"]))  # the same run again
    assert (summary.phase, summary.start_step, summary.phases_done) == ("b", killed_at, 2)
    assert "phase 0 (a) finished earlier" in caplog.text
    assert (phase_dir(run, "a") / "PHASE_DONE").stat().st_mtime_ns == done_a  # phase a did not run again
    ref = {r["step"]: r["loss"] for r in rows(uninterrupted[0], "b")}
    got = {r["step"]: r["loss"] for r in rows(run, "b")}  # the replayed steps are logged again: last wins
    assert sorted(got) == list(range(B_STEPS))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step
    assert_same_weights(uninterrupted[0], run)


def test_a_stop_signal_in_phase_one_does_not_start_phase_two(uninterrupted, tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    run = tmp_path / "run"
    proc = start_and_wait(cli(run), lambda: len(rows(run, "a")) >= 1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["stopped_by"], summary["phase"], summary["phases_total"]) == ("SIGTERM", "a", 2)
    assert not phase_dir(run, "b").exists()
    assert CheckpointManager(phase_dir(run, "a") / "checkpoints").latest() is not None

    again = train(load_config(QUICKSTART, [*ARGS, f"train.out_dir={run}"]))
    assert (again.phase, again.phases_done) == ("b", 2)
    assert_same_weights(uninterrupted[0], run)
