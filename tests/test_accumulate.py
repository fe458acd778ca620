"""Gradient accumulation (`optim.accumulate`) is exact: 4 micro-batches of 2 train exactly like one batch of
8 (the same clips and masks) in one process, under DDP and under DeepSpeed ZeRO-2 (2 processes, gloo), while
a plain average of the micro-batches' losses would not match; a step skipped after the earlier micro-batches'
backward leaves no trace (DeepSpeed discards them through ZeRO's overflow path); a run with accumulation
resumes exactly.

Tolerances (fp32): the accumulated loss is a sum of four partial sums instead of one sum, which moves it by
a few ulps (measured: 2e-8 relative; weights after the AdamW step 1.2e-7 absolute, one ulp, for a step that moves
them by ~2e-3 = lr). A plain average of the micro-batches' losses is off by 4.6e-4 relative on these clips (at
initialisation every token's error is about the same, which is what keeps the gap that small); the test asserts
more than 100x the tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import accum_worker as worker
import pytest
import torch
from test_distributed import run_torchrun
from tiny import TINY_RUN

from data_pipelines import normalize
from vjepa.checkpoint import CheckpointManager
from vjepa.config import load_config
from vjepa.distributed.env import DistEnv
from vjepa.objective import target_features

ROOT = Path(__file__).resolve().parents[1]
LOSS_RTOL, WEIGHT_ATOL = 1e-6, 1e-6


def assert_exact(got: dict) -> None:
    whole, accum = got["loss"]
    assert all(got["applied"])
    assert accum == pytest.approx(whole, rel=LOSS_RTOL)
    assert got["loss_per_mask"][1] == pytest.approx(got["loss_per_mask"][0], rel=LOSS_RTOL)
    assert got["grad_norm"][1] == pytest.approx(got["grad_norm"][0], rel=1e-5)
    assert got["moved"] > 1000 * WEIGHT_ATOL  # the step changed the weights far more than the tolerance
    assert got["model_diff"] <= WEIGHT_ATOL and got["target_diff"] <= WEIGHT_ATOL, got
    # a skipped step (after the earlier micro-batches' backward) changes nothing and leaves nothing behind
    assert got["spike_skipped_for"] == ["loss spike", "loss spike"] and got["spike_moved"] == [0.0, 0.0]
    assert all(got["next_applied"]) and got["next_loss"][1] == pytest.approx(got["next_loss"][0], rel=1e-5)
    assert got["final_diff"] <= 10 * WEIGHT_ATOL, got


def test_four_micro_batches_of_two_equal_one_batch_of_eight(tmp_path: Path) -> None:
    got = worker.compare("single", 0, DistEnv(), str(tmp_path))
    assert_exact(got)


def test_a_plain_average_of_micro_batch_losses_would_not_match(tmp_path: Path) -> None:
    """The micro-batches' own losses (each normalised by its own target rows), averaged: not the batch's."""
    cfg = worker.make_config("single", 0, 1, str(tmp_path))
    from vjepa.train.trainer import build_models

    model = build_models(cfg, worker.CPU)
    batch = worker.uneven_batch(100, len(cfg.mask))
    with torch.no_grad():

        def loss(b) -> float:
            clips = normalize(b.clips)
            return float(model(clips, b.masks, target_features(model.encoder, clips)).loss)

        whole = loss(batch)
        naive = sum(loss(b) for b in worker.split(batch, worker.ACCUMULATE)) / worker.ACCUMULATE
    assert abs(naive - whole) > 100 * LOSS_RTOL * whole, (naive, whole)


@pytest.mark.dist
@pytest.mark.parametrize(
    "backend, stage",
    [("ddp", 0), ("deepspeed", 2), pytest.param("deepspeed", 3, marks=pytest.mark.slow)],  # ZeRO-1 passes too
    ids=["ddp", "zero2", "zero3"],
)
def test_accumulation_is_exact_on_two_processes(tmp_path: Path, backend: str, stage: int) -> None:
    out = tmp_path / "result.json"
    run_torchrun(
        [str(ROOT / "tests" / "accum_worker.py"), "--out", str(out), "--workdir", str(tmp_path)]
        + ["--backend", backend, "--stage", str(stage)]
    )
    got = json.loads(out.read_text())
    assert got["world_size"] == 2
    for rank in got["ranks"]:
        assert_exact(rank)
    assert got["ranks"][0]["loss"][0] != got["ranks"][1]["loss"][0]  # each rank trained on its own clips


def test_a_run_with_accumulation_resumes_exactly(tmp_path: Path) -> None:
    """6 steps of 2 micro-batches straight, and the same run resumed from its step-3 checkpoint (the later
    one removed, as if killed after step 3): the same losses and final weights."""
    from vjepa.train.trainer import train

    def cfg():
        extra = ["optim.accumulate=2", "train.steps=6", "checkpoint.every_steps=3", "checkpoint.keep_last=5"]
        return load_config(
            ROOT / "configs" / "quickstart.yaml", [*TINY_RUN, *extra, f"train.out_dir={tmp_path}"]
        )

    train(cfg())
    ckpts = CheckpointManager(tmp_path / "checkpoints")
    straight_state = torch.load(ckpts.step_dir(6) / "model.pt", weights_only=True)
    straight_log = (tmp_path / "log.jsonl").read_text().splitlines()
    (tmp_path / "checkpoints" / "latest").unlink()
    ckpts.step_dir(6).joinpath("COMPLETE").unlink()
    summary = train(cfg())
    assert summary.start_step == 3 and summary.steps_run == 3
    resumed_log = (tmp_path / "log.jsonl").read_text().splitlines()
    losses = [[json.loads(line)["loss"] for line in log] for log in (straight_log, resumed_log)]
    assert len(losses[1]) == 6 and losses[1] == pytest.approx(losses[0], rel=1e-6, abs=0)
    resumed_state = torch.load(ckpts.step_dir(6) / "model.pt", weights_only=True)
    for part in ("encoder", "predictor", "target_encoder"):
        for key, value in straight_state[part].items():
            torch.testing.assert_close(
                resumed_state[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}"
            )


def test_accumulate_values_and_contradicting_deepspeed_keys_are_errors() -> None:
    from vjepa.distributed.deepspeed_config import deepspeed_config

    with pytest.raises(ValueError, match="optim.accumulate: must be >= 1"):
        load_config(None, ["optim.accumulate=0"])

    def derive(*extra: str) -> dict:
        cfg = load_config(None, ["data.batch_size=2", "optim.accumulate=4", "dist.backend=deepspeed", *extra])
        return deepspeed_config(
            cfg.dist,
            world_size=2,
            micro_batch=2,
            accumulate=cfg.optim.accumulate,
            grad_clip=None,
            precision="fp32",
        )

    ds = derive()
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_batch_size"] == 16
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert (
        derive("dist.deepspeed.gradient_accumulation_steps=4")["train_batch_size"] == 16
    )  # agreeing is fine
    with pytest.raises(
        ValueError, match=r"dist.deepspeed.gradient_accumulation_steps: must equal optim.accumulate=4"
    ):
        derive("dist.deepspeed.gradient_accumulation_steps=2")
    with pytest.raises(ValueError, match=r"dist.deepspeed.train_batch_size: .* = 16"):
        derive("dist.deepspeed.train_batch_size=4")
