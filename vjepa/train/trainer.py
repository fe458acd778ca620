"""Pretraining: `train(cfg)` sets up models, engine, data, logging and checkpoints; `train_step` is one
V-JEPA update and reads top to bottom.

Shape legend: B batch, C channels, T frames, H/W pixels.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from data_pipelines.batch import VideoBatch
from data_pipelines.transforms import normalize
from vjepa.config import Config, save_config
from vjepa.distributed.env import DistEnv, read_env
from vjepa.models.builder import build_encoder, build_predictor, token_grid
from vjepa.models.jepa import JepaModel
from vjepa.train.checkpoint import CheckpointManager, rng_state, set_rng_state
from vjepa.train.data import build_train_data
from vjepa.train.metrics import RunLogger
from vjepa.train.schedules import StepValues, values_at

log = logging.getLogger(__name__)


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_for(cfg: Config, device: torch.device):
    if cfg.train.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class StepResult:
    loss: float
    loss_per_mask: list[float]
    grad_norm: float
    applied: bool
    target_std: float
    pred_std: float
    values: StepValues  # the schedules' lr, weight decay and EMA momentum at this step


def train_step(engine, batch: VideoBatch, step: int, cfg: Config, device: torch.device) -> StepResult:
    """One V-JEPA update: target forward (no grad) -> context encoder + predictor per mask configuration
    -> L1 loss -> backward -> (clip) -> AdamW step -> EMA update. A non-finite loss or gradient skips
    the update on every rank."""
    values = values_at(step, cfg.optim, cfg.train.steps)
    batch = batch.to(device, non_blocking=True)
    clips = normalize(batch.clips)  # [B, C, T, H, W] float, ImageNet mean/std
    with autocast_for(cfg, device):
        out = engine.forward(clips, batch.masks)
    loss_ok = engine.all_finite(bool(torch.isfinite(out.loss.detach())))
    if not loss_ok:
        engine.skip()
        return StepResult(
            float("nan"), out.loss_per_mask, float("nan"), False, out.target_std, out.pred_std, values
        )
    engine.backward(out.loss)
    grad_norm, applied = engine.step(values.lr, values.weight_decay)
    if applied:
        engine.ema(values.momentum)
    return StepResult(
        float(out.loss.detach()), out.loss_per_mask, grad_norm, applied, out.target_std, out.pred_std, values
    )


def environment_info(env: DistEnv) -> dict:
    import vjepa

    return {
        "vjepa": vjepa.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "world_size": env.world_size,
        "launcher": env.source,
        "host": platform.node(),
        "cuda": torch.cuda.is_available(),
    }


def build_models(cfg: Config, device: torch.device) -> JepaModel:
    m, d = cfg.model, cfg.data
    common = dict(
        frames=d.frames_per_clip,
        crop=d.crop_size,
        patch=m.patch_size,
        tubelet=m.tubelet_size,
        pos_embed=m.pos_embed,
        attention=m.attention,
        grad_ckpt=m.activation_checkpointing,
    )
    encoder = build_encoder(m.name, device=device, **common)
    predictor = build_predictor(
        embed_dim=encoder.width,
        width=m.pred_width,
        depth=m.pred_depth,
        heads=m.pred_heads,
        num_mask_tokens=len(cfg.mask),
        device=device,
        **common,
    )
    return JepaModel(encoder, predictor)


def train(cfg: Config) -> dict:
    """Runs (or resumes) pretraining as configured; returns a summary of what happened."""
    from vjepa.distributed.engine import build_engine
    from vjepa.distributed.process_group import start_process_group, stop_process_group

    env = read_env()
    device = resolve_device(cfg.train.device, env.local_rank)
    # ddp/deepspeed run in a process group (raises if it cannot start); torn down below if started here
    owns_group = cfg.dist.backend != "single" and start_process_group(env, device)
    torch.manual_seed(cfg.train.seed + env.rank)
    run_dir = Path(cfg.train.out_dir)
    engine = build_engine(cfg, build_models(cfg, device), device, env)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "env.json").write_text(json.dumps(environment_info(env), indent=2))
    ckpts = CheckpointManager(
        run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last, rank=env.rank, barrier=engine.barrier
    )
    grid = token_grid(
        frames=cfg.data.frames_per_clip,
        crop=cfg.data.crop_size,
        patch=cfg.model.patch_size,
        tubelet=cfg.model.tubelet_size,
    )
    data = build_train_data(cfg, grid=grid, rank=env.rank, world_size=env.world_size)
    start = 0
    latest = ckpts.latest() if cfg.checkpoint.resume else None
    if latest is not None:
        start = restore(engine, data, latest, env.rank)
        log.info("resumed from %s at step %d", latest, start)
    elif cfg.train.init_from:
        init = Path(cfg.train.init_from)
        if not init.is_file():
            raise ValueError(f"train.init_from: no such model file {init}")
        engine.load_weights(torch.load(init, map_location=device, weights_only=False))
        log.info("initialised weights from %s", init)

    def save(step: int) -> None:
        def write(folder: Path) -> None:
            engine.save(folder, env.rank)
            torch.save(
                {"step": step, "data": data.state_dict(), "rng": rng_state()},
                folder / f"trainer_rank{env.rank}.pt",
            )
            if env.is_main:
                save_config(cfg, folder / "config.yaml")

        ckpts.save(step, write)

    logger = RunLogger(run_dir, cfg.log, total_steps=cfg.train.steps, start_step=start, enabled=env.is_main)
    bad_in_a_row, skipped, losses = 0, 0, []
    stream = iter(data)
    try:
        for step in range(start, cfg.train.steps):
            t0 = time.perf_counter()
            batch, stream = next_batch(data, stream)
            t1 = time.perf_counter()
            result = train_step(engine, batch, step, cfg, device)
            t2 = time.perf_counter()
            if result.applied:
                bad_in_a_row = 0
            else:
                bad_in_a_row, skipped = bad_in_a_row + 1, skipped + 1
                log.warning(
                    "step %d: non-finite loss or gradients; update skipped (%d in a row)", step, bad_in_a_row
                )
            losses.append(result.loss)
            values = result.values
            clips = batch.clips.shape[0] * env.world_size
            logger.log(
                step,
                {
                    "loss": result.loss,
                    **{f"loss_mask{k}": v for k, v in enumerate(result.loss_per_mask)},
                    "lr": values.lr,
                    "weight_decay": values.weight_decay,
                    "momentum": values.momentum,
                    "grad_norm": result.grad_norm,
                    "target_std": result.target_std,
                    "pred_std": result.pred_std,
                    "clips_per_s": clips / max(t2 - t0, 1e-9),
                    "data_wait": (t1 - t0) / max(t2 - t0, 1e-9),
                    "skipped_steps": skipped,
                    "data_skipped": data.stats()["skipped"],  # undecodable videos so far on this rank
                },
            )
            if bad_in_a_row >= cfg.train.max_bad_steps:
                raise RuntimeError(
                    f"{bad_in_a_row} consecutive non-finite steps (train.max_bad_steps="
                    f"{cfg.train.max_bad_steps}); stopping. The last checkpoint in {ckpts.root} is intact."
                )
            done = step + 1
            # No save in the middle of a non-finite streak: the last checkpoint stays the last good one.
            if bad_in_a_row == 0 and (done % cfg.checkpoint.every_steps == 0 or done == cfg.train.steps):
                save(done)
    finally:
        logger.close()
        engine.close()
        if owns_group:
            stop_process_group()
    finite = [x for x in losses if math.isfinite(x)]
    return {
        "start_step": start,
        "steps": cfg.train.steps,
        "losses": losses,
        "skipped_steps": skipped,
        "first_loss": finite[0] if finite else None,
        "last_loss": finite[-1] if finite else None,
        "run_dir": str(run_dir),
        "world_size": env.world_size,
        "rank": env.rank,
        "pid": os.getpid(),
    }


def next_batch(data, stream):
    """The next batch; at the end of an epoch (non-resampled data) the next epoch starts."""
    try:
        return next(stream), stream
    except StopIteration:
        stream = iter(data)
        try:
            return next(stream), stream
        except StopIteration:
            raise ValueError("data: the training data yields no batches (check data.sources)") from None


def restore(engine, data, folder: Path, rank: int) -> int:
    engine.load(folder)
    state = torch.load(folder / f"trainer_rank{rank}.pt", weights_only=False)
    data.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    return int(state["step"])
