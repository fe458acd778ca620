"""`train.phases` under torchrun (two gloo workers): every rank runs the same phase sequence in one process
group; phase two starts from phase one's final checkpoint (weights, target, optimizer state) on a larger
token grid, with DDP and with DeepSpeed ZeRO-3 (partitioned weights and EMA target), which trains phase two
as DDP does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_distributed import json_objects, run_torchrun

from vjepa.checkpoint import CheckpointManager

# phase b: larger clips, and an lr high enough that a lost AdamW state would show in its weights
PHASES = (
    "train.phases=[{name: a, steps: 2}, {name: b, steps: 2, overrides: "
    "{data.frames_per_clip: 8, data.crop_size: 48, optim.lr: 1.0e-3, optim.warmup_steps: 0}}]"
)
ZERO3 = ["dist.backend=deepspeed", "dist.zero_stage=3"]


def train_phases(run: Path, backend: list[str]) -> list[dict]:
    """`torchrun -m vjepa train` with two phases; -> the ranks' summaries."""
    proc = run_torchrun(
        [
            "-m",
            "vjepa",
            "train",
            "--config",
            "configs/quickstart.yaml",
            "model.name=vit_test",
            "model.pred_width=32",
            "model.pred_depth=2",
            "data.batch_size=2",
            "data.frames_per_clip=4",
            "data.crop_size=32",
            "log.progress=false",
            "log.tensorboard=false",
            f"train.out_dir={run}",
            *backend,
            PHASES,
        ]
    )
    summaries = json_objects(proc.stdout, '{"start_step"')
    assert summaries and all(
        (s["phase"], s["phases_done"], s["world_size"], s["steps_run"]) == ("b", 2, 2, 2) for s in summaries
    ), summaries
    assert all(math.isfinite(s["last_loss"]) for s in summaries)
    for folder in ("phase-0-a", "phase-1-b"):
        final = CheckpointManager(run / folder / "checkpoints").latest()
        assert final is not None and final.name == "step_00000002", folder
        assert (run / folder / "PHASE_DONE").is_file()
    return summaries


def exported(run: Path, out: Path) -> dict:
    from vjepa.cli import main

    assert main(["export", "--checkpoint", str(run / "phase-1-b"), "--out", str(out)]) == 0
    return torch.load(out, weights_only=True)


def losses(run: Path) -> list[float]:
    log = run / "phase-1-b" / "log.jsonl"
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


def adam_steps(final: Path) -> set[int]:
    """The AdamW step counts in rank 0's ZeRO optimizer file of a step folder."""
    (path,) = (final / "deepspeed").glob("*rank_0_*optim_states.pt")
    found: set[int] = set()

    def walk(x) -> None:
        if isinstance(x, dict):
            if "step" in x and "exp_avg" in x:
                found.add(int(x["step"]))
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(torch.load(path, map_location="cpu", weights_only=False))  # DeepSpeed pickles its own objects
    return found


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "run"
    train_phases(run, ["dist.backend=ddp"])
    return run


@pytest.mark.dist
@pytest.mark.slow  # about 30 s; phases over 2 ranks also run in the SLURM tier (tests/test_slurm.py)
def test_two_phases_under_torchrun_ddp(ddp_run: Path) -> None:
    opt = torch.load(ddp_run / "phase-1-b" / "checkpoints" / "step_00000002" / "model.pt", weights_only=True)
    assert {int(s["step"]) for s in opt["opt"]["state"].values()} == {4}  # AdamW ran on from phase a
    config = (ddp_run / "phase-1-b" / "config.yaml").read_text()
    assert "frames_per_clip: 8" in config and "crop_size: 48" in config


@pytest.mark.dist
@pytest.mark.slow
def test_two_phases_under_zero3_train_as_ddp(ddp_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_phases(run, ZERO3)
    final = run / "phase-1-b" / "checkpoints" / "step_00000002"
    assert {p.name for p in final.glob("target_rank*.pt")} == {"target_rank0.pt", "target_rank1.pt"}
    assert adam_steps(final) == {4}  # AdamW ran on from phase a
    assert losses(run) == pytest.approx(losses(ddp_run), rel=1e-5)
    ref, got = exported(ddp_run, tmp_path / "ddp.pt"), exported(run, tmp_path / "zero3.pt")
    for part in ("encoder", "predictor", "target_encoder"):
        for key, value in ref[part].items():
            torch.testing.assert_close(got[part][key], value, rtol=0, atol=2e-5, msg=f"{part}.{key}")
