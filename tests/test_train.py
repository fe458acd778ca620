"""The single-process training engine: schedules, parameter groups, EMA, checkpoints, exact resume (also
after SIGKILL), non-finite steps, logs, and the pretraining recipes."""

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
from vjepa.config import OptimConfig, load_config
from vjepa.distributed.target import ema_update, make_target
from vjepa.train.optim import param_groups
from vjepa.train.schedules import lr_at, momentum_at, values_at, weight_decay_at

REPO = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_RUN,
    "optim.warmup_steps=3",
]


def tiny_config(tmp_path: Path, *extra: str):
    return load_config(REPO / "configs" / "quickstart.yaml", [*TINY, f"train.out_dir={tmp_path}", *extra])


# ----------------------------------------------------------------------------- schedules and optimizer


def test_vjepa1_schedules_shape():
    cfg = OptimConfig(warmup_steps=10, start_lr=1e-4, lr=1e-3, final_lr=1e-6, schedule_scale=1.25)
    assert lr_at(0, cfg, 100) == pytest.approx(1e-4)
    assert lr_at(5, cfg, 100) == pytest.approx(5.5e-4)
    assert lr_at(10, cfg, 100) == pytest.approx(1e-3)
    lrs = [lr_at(s, cfg, 100) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # cosine decays monotonically
    assert lrs[-1] > cfg.final_lr  # the curve runs over 1.25x the steps: its end is never reached
    assert weight_decay_at(0, cfg, 100) == pytest.approx(cfg.weight_decay)
    assert weight_decay_at(125, cfg, 100) == pytest.approx(cfg.final_weight_decay)
    assert momentum_at(0, cfg, 100) == pytest.approx(cfg.ema_start)
    assert momentum_at(125, cfg, 100) == pytest.approx(cfg.ema_end)
    assert values_at(37, cfg, 100) == values_at(37, cfg, 100)  # pure function of the step


def test_vjepa2_schedule_with_cooldown():
    cfg = OptimConfig(
        schedule="vjepa2",
        warmup_steps=4,
        start_lr=0.0,
        lr=1.0,
        final_lr=0.0,
        cooldown_steps=10,
        ema_start=0.99925,
        ema_end=0.99925,
    )
    assert lr_at(2, cfg, 30) == pytest.approx(0.5)
    assert lr_at(10, cfg, 30) == lr_at(19, cfg, 30) == 1.0
    assert lr_at(25, cfg, 30) == pytest.approx(0.5)
    assert weight_decay_at(29, cfg, 30) == cfg.weight_decay
    assert momentum_at(29, cfg, 30) == 0.99925


def test_no_weight_decay_on_biases_norms_positions_and_mask_tokens(tmp_path):
    from vjepa.train.trainer import build_models

    model = build_models(tiny_config(tmp_path), torch.device("cpu"))
    decay, no_decay = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    nd = {names[id(p)] for p in no_decay["params"]}
    assert (
        "predictor.mask_tokens.0" in nd
        and "encoder.norm.weight" in nd
        and "encoder.blocks.0.attn.qkv.bias" in nd
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_ema_stays_fp32_and_moves_at_high_momentum():
    online = torch.nn.Linear(64, 64).to(torch.bfloat16)
    target = make_target(online)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in target.parameters())
    before = target.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(0.5)
    ema_update(target, online, momentum=0.9995)
    moved = (target.weight - before).abs().mean().item()
    assert moved == pytest.approx(0.0005 * 0.5, rel=0.05)  # an update a bf16 EMA would round away


# ----------------------------------------------------------------------------- checkpoints


def test_crash_during_save_keeps_latest(tmp_path):
    ckpt = CheckpointManager(tmp_path, keep_last=2)
    ckpt.save(1, lambda folder: (folder / "model.pt").write_text("one"))

    def broken(folder: Path) -> None:
        (folder / "model.pt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.save(2, broken)
    assert ckpt.latest() == tmp_path / "step_00000001"
    assert (ckpt.latest() / "model.pt").read_text() == "one"
    for step in (3, 4, 5):
        ckpt.save(step, lambda folder: (folder / "model.pt").write_text("ok"))
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000004", "step_00000005"]


# ----------------------------------------------------------------------------- exact resume


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]  # a resumed run logs replayed steps again: the last entry wins
    return out


def _final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "step_00000012" / "model.pt", weights_only=True)


def test_resume_after_sigkill_is_exact(tmp_path):
    from vjepa.train.trainer import train

    args = [*TINY, "train.steps=12", "checkpoint.every_steps=4", "checkpoint.keep_last=5"]
    train(load_config(REPO / "configs" / "quickstart.yaml", [*args, f"train.out_dir={tmp_path / 'a'}"]))

    run_b = tmp_path / "b"
    cmd = [
        sys.executable,
        "-m",
        "vjepa",
        "train",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        *args,
        f"train.out_dir={run_b}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill between the saves at steps 4 and 8
        log = run_b / "log.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 6:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert CheckpointManager(run_b / "checkpoints").latest().name == "step_00000004"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["start_step"] == 4

    la, lb = _losses(tmp_path / "a"), _losses(run_b)
    assert sorted(la) == sorted(lb) == list(range(12))
    for step in la:
        assert lb[step] == pytest.approx(la[step], abs=1e-6), step
    sa, sb = _final_state(tmp_path / "a"), _final_state(run_b)
    for part in ("encoder", "predictor", "target_encoder"):
        for key, value in sa[part].items():
            torch.testing.assert_close(sb[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")


# ----------------------------------------------------------------------------- bad steps and logs


def test_nonfinite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    from vjepa.train import trainer

    cfg = tiny_config(tmp_path, "train.steps=10", "checkpoint.every_steps=2", "train.max_bad_steps=3")
    from vjepa import objective

    real_loss = objective.jepa_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real_loss(*args, **kwargs)
        if calls["n"] > 4:  # steps 0-3 are healthy, then every loss is NaN
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(objective, "jepa_loss", poisoned)
    with pytest.raises(RuntimeError, match="train.max_bad_steps"):
        trainer.train(cfg)
    latest = CheckpointManager(tmp_path / "checkpoints").latest()
    assert latest is not None and latest.name == "step_00000004"
    state = torch.load(latest / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["encoder"].values())
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 0, 0, 1, 2, 3]


def test_run_folder_has_config_env_logs_and_tensorboard(tmp_path):
    from vjepa.train.trainer import train

    cfg = tiny_config(tmp_path, "train.steps=3", "log.tensorboard=true")
    summary = train(cfg)
    assert summary.start_step == 0 and summary.steps_run == 3
    assert load_config(tmp_path / "config.yaml") == cfg
    assert json.loads((tmp_path / "env.json").read_text())["world_size"] == 1
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "target_std", "pred_std", "clips_per_s", "data_wait", "grad_norm"} <= set(rows[0])
    assert rows[-1]["data_skipped"] == 0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    again = train(cfg)  # a finished run resumes at its end and does nothing more
    assert again.start_step == 3 and again.steps_run == 0


@pytest.mark.parametrize(
    "recipe", sorted((REPO / "configs" / "pretrain").glob("*.yaml")), ids=lambda p: p.stem
)
def test_pretrain_recipes_load(recipe):
    has_sources = "sources:" in recipe.read_text()  # the recipes of several sources name placeholder paths
    cfg = load_config(recipe, [] if has_sources else ["data.sources=[{path: /data/shards}]"])
    assert cfg.model.name in ("vit_large", "vit_huge", "vit_giant")
    assert cfg.dist.backend == "deepspeed" and cfg.train.precision == "bf16"


@pytest.mark.parametrize("recipe", ["vjepa2_vitl16_images", "vjepa21_vitl16"])
def test_vjepa2_and_21_recipes_train_videos_and_images_in_two_phases(recipe):
    """Both phases resolve (16 then 64 frames, images beside the videos in each), the predictor has a mask
    token per (clip length, mask configuration), and the V-JEPA 2.1 recipe switches on its objective."""
    from vjepa.train.phase_config import resolve_phases
    from vjepa.train.trainer import build_models

    cfg = load_config(REPO / "configs" / "pretrain" / f"{recipe}.yaml")
    phases = resolve_phases(cfg)
    assert [p.cfg.data.clip_lengths() for p in phases] == [[16, 1], [64, 1]]
    assert [p.cfg.train.steps for p in phases] == [240000, 12000]
    assert phases[1].cfg.optim.cooldown_steps == 12000 and phases[1].cfg.data.batch_size == 12
    images = [s for s in cfg.data.sources if s.frames_per_clip == 1]
    assert len(images) == 1 and len(cfg.data.sources) == 4
    model = build_models(phases[0].cfg, torch.device("meta"))
    assert len(model.predictor.mask_tokens) == 2 * 2
    if recipe == "vjepa21_vitl16":
        assert cfg.loss.levels == [5, 11, 17, 23] and cfg.loss.context_weight == 0.5
        assert (cfg.loss.context_warmup_start, cfg.loss.context_warmup_steps) == (15000, 15000)
        assert model.dense is not None and model.dense.levels == 4 and model.dense.context
    else:
        assert cfg.loss.is_default and model.dense is None
