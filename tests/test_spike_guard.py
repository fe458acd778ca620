"""The loss-spike guard (`train.spike_guard`): its bar is the trailing mean + k std of applied losses; a
planted spike is skipped, counted and leaves the weights and the optimizer untouched (with the guard off
the same step is trained on); its window is checkpointed, so a resumed run skips the same spike."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import dist_worker
import pytest
import torch
from tiny import TINY_RUN

from vjepa.checkpoint import CheckpointManager, load_trainer_state
from vjepa.config import SpikeGuardConfig, load_config
from vjepa.train.spike_guard import SpikeGuard

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_the_bar_is_the_trailing_mean_plus_k_std_of_applied_losses() -> None:
    guard = SpikeGuard(SpikeGuardConfig(std_factor=3.0, window=4, warmup=3))
    for loss in (1.0, 2.0):
        guard.record(loss, applied=True, spike=False)
    assert guard.limit() is None  # warming up
    guard.record(50.0, applied=False, spike=True)  # a skipped loss never enters the window
    for loss in (3.0, 4.0, 5.0):
        guard.record(loss, applied=True, spike=False)
    window = [2.0, 3.0, 4.0, 5.0]  # the last 4 applied
    limit = guard.limit()
    assert limit.value == pytest.approx(statistics.fmean(window) + 3.0 * statistics.pstdev(window))
    assert "above the trailing mean 3.5 + 3 x std 1.12 = 6.854 of the last 4 applied steps" in limit.describe(
        9
    )
    assert guard.skipped == 1
    restored = SpikeGuard(guard.cfg)
    restored.load_state_dict(guard.state_dict())
    assert restored.limit() == limit and restored.skipped == 1
    assert SpikeGuard(SpikeGuardConfig(std_factor=0.0, window=4, warmup=2)).limit() is None  # off


@pytest.mark.parametrize("key, value", [("window", 1), ("warmup", 1), ("warmup", 500), ("std_factor", -1)])
def test_bad_spike_guard_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"train.spike_guard.{key}"):
        load_config(None, [f"train.spike_guard.{key}={value}"])


def run_with_spike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> list[dict]:
    """Six steps as the loop runs them (guard limit -> train_step -> record), the loss of step 4 made 50x
    larger -> per step: result, the guard's skip count, and the weights + optimizer state before/after."""
    from vjepa import objective
    from vjepa.train import trainer

    cfg = dist_worker.make_config(
        "single", 0, "fp32", 1, str(tmp_path), ["train.spike_guard.warmup=3", *extra]
    )
    torch.manual_seed(0)
    engine = trainer.make_engine(cfg, trainer.build_models(cfg, CPU), CPU, dist_worker.read_env())
    guard, real, out = SpikeGuard(cfg.train.spike_guard), objective.jepa_loss, []

    def state() -> dict:
        opt = engine.optimizer.state_dict()["state"]
        return {
            **{f"p.{k}": v.clone() for k, v in engine.module.state_dict().items()},
            **{f"t.{k}": v.clone() for k, v in engine.target.module.state_dict().items()},
            **{f"o.{i}.{k}": v.clone() for i, s in opt.items() for k, v in s.items()},
        }

    for step in range(6):
        planted = step == 4
        if planted:
            monkeypatch.setattr(objective, "jepa_loss", lambda *a, **k: scaled(real(*a, **k), 50.0))
        before, limit = state(), guard.limit()
        batch = dist_worker.global_batch(step, len(cfg.mask))
        r = trainer.train_step(engine, batch, step, cfg, CPU, max_loss=None if limit is None else limit.value)
        guard.record(r.loss, applied=r.applied, spike=r.skipped_for == trainer.SPIKE)
        monkeypatch.setattr(objective, "jepa_loss", real)
        why = "" if r.applied else trainer.why_skipped(r, limit)
        out.append({"result": r, "skipped": guard.skipped, "before": before, "after": state(), "why": why})
    engine.close()
    return out


def scaled(out, factor: float):
    out.loss = out.loss * factor
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_planted_spike_is_skipped_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = run_with_spike(tmp_path / "on", monkeypatch)
    spike = steps[4]
    assert [s["result"].applied for s in steps] == [True] * 4 + [False, True]
    assert spike["result"].skipped_for == "loss spike" and spike["skipped"] == 1
    assert "above the trailing mean" in spike["why"] and "of the last 4 applied steps" in spike["why"]
    assert same(spike["before"], spike["after"])  # weights, target and AdamW moments untouched
    assert not same(steps[5]["before"], steps[5]["after"])  # the next step trains

    off = run_with_spike(tmp_path / "off", monkeypatch, "train.spike_guard.std_factor=0")
    assert all(s["result"].applied for s in off) and off[4]["skipped"] == 0
    assert not same(off[4]["before"], off[4]["after"])  # without the guard the spike is trained on
    assert off[4]["result"].loss == pytest.approx(spike["result"].loss, rel=1e-6)  # the same planted loss


def test_the_guard_state_survives_a_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 steps with a spike planted at step 6, straight and resumed from the step-4 checkpoint. The guard
    needs 4 applied losses (warmup): a resumed run that had lost its window would hold only those of steps
    4 and 5 at step 6 and train on the spike."""
    from vjepa import objective
    from vjepa.train import trainer

    real_loss, real_step = objective.jepa_loss, trainer.train_step

    def step_with_spike(engine, batches, step, *args, **kwargs):
        if step == 6:
            monkeypatch.setattr(objective, "jepa_loss", lambda *a, **k: scaled(real_loss(*a, **k), 50.0))
        try:
            return real_step(engine, batches, step, *args, **kwargs)
        finally:
            monkeypatch.setattr(objective, "jepa_loss", real_loss)

    monkeypatch.setattr(trainer, "train_step", step_with_spike)
    extra = [
        "train.steps=8",
        "checkpoint.every_steps=4",
        "checkpoint.keep_last=5",
        "train.spike_guard.warmup=4",
    ]
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [*TINY_RUN, *extra, f"train.out_dir={tmp_path}"])
    ckpts = CheckpointManager(tmp_path / "checkpoints")

    def outcome() -> tuple[list[dict], dict, dict]:
        rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
        _, _, loop_state = load_trainer_state(ckpts.step_dir(8), 0)
        return rows, loop_state["spike_guard"], torch.load(ckpts.step_dir(8) / "model.pt", weights_only=True)

    assert trainer.train(cfg).skipped_steps == 1
    rows, guard, weights = outcome()
    assert [r["skipped_steps"] for r in rows] == [0] * 6 + [1, 1] and guard["skipped"] == 1
    (tmp_path / "checkpoints" / "latest").unlink()
    ckpts.step_dir(8).joinpath("COMPLETE").unlink()
    resumed = trainer.train(cfg)
    assert resumed.start_step == 4 and resumed.skipped_steps == 1  # step 6 skipped again
    rows_b, guard_b, weights_b = outcome()
    assert [r["loss"] for r in rows_b] == pytest.approx([r["loss"] for r in rows], rel=1e-6, abs=0)
    assert guard_b["skipped"] == guard["skipped"] and len(guard_b["losses"]) == len(guard["losses"]) == 7
    assert guard_b["losses"] == pytest.approx(guard["losses"], rel=1e-6, abs=0)
    for part in ("encoder", "predictor", "target_encoder"):
        for key, value in weights[part].items():
            torch.testing.assert_close(weights_b[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")
