"""`vjepa train-ac`: the action-conditioned predictor trained on a frozen encoder's per-frame features of
trajectory shards or DROID episodes. `train_step` is one update, top to bottom; `train_ac(cfg)` builds the
run, resumes it and loops.

The step reads: the step's batch from this rank's feature bank (seeded by (train.seed, step, rank)) -> lr of
the step -> loss = L1 teacher forcing + loss.rollout_weight x L1 rollout over loss.rollout_steps (one forward
of ACObjective) -> the losses averaged over the ranks (what is logged) -> backward (DDP averages the
gradients) -> global gradient norm, clipping -> AdamW step. A non-finite loss or gradient on any rank skips
the update on every rank (logged and counted).

Parallelism (`dist.backend=ddp`) comes from the pretraining engines (vjepa/distributed/engine.py,
`build_replica_engine`): every rank holds the predictor, encodes its own share of the trajectories (rank r
reads trajectories r, r + W, ...) and draws optim.batch clips a step from it, so the update is that of one
process on the union of the ranks' batches. Rank 0 writes the log, the config and the model file; every rank
writes its trainer state (its bank's fingerprint).

Resume is exact: the weights, AdamW's moments and the step come back from the checkpoint, the schedule and
the batches are functions of the step, and each bank is re-encoded from the same trajectories (its
fingerprint must match the checkpoint's, which needs the same number of processes).

Shape legend: B batch, T frames per clip, N patch tokens, F feature width, A action dims, S state dims.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from vjepa import host_memory
from vjepa.checkpoint import (
    AC_MODEL_FILE,
    CheckpointManager,
    RunFolder,
    atomic_torch_save,
    load_trainer_state,
    save_trainer_state,
    saved_world_size,
)
from vjepa.config import save_config, to_dict
from vjepa.distributed import process_group
from vjepa.distributed.engine import ReplicaEngine, build_replica_engine
from vjepa.distributed.env import DistEnv, read_env
from vjepa.eval.progress import Progress
from vjepa.models.weights import read_torch_file
from vjepa.train.metrics import LOG_FILE, trim_log
from vjepa.utils import resolve_device
from vjepa.world.ac_checkpoint import build_ac_predictor
from vjepa.world.ac_objective import ACObjective
from vjepa.world.ac_predictor import ACPredictor
from vjepa.world.config import ACConfig, ACOptimSettings
from vjepa.world.features import FeatureBank, encode_bank, load_frozen_encoder, trajectory_reader

__all__ = ["ACRun", "build_ac_run", "lr_at", "resume_ac", "train_ac", "train_step"]

log = logging.getLogger(__name__)


def lr_at(step: int, optim: ACOptimSettings) -> float:
    """Linear warmup to optim.lr over optim.warmup_steps, then cosine to optim.final_lr at optim.steps."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(1, optim.steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.final_lr + 0.5 * (optim.lr - optim.final_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class ACRun:
    cfg: ACConfig
    env: DistEnv
    device: torch.device
    folder: RunFolder
    engine: ReplicaEngine  # engine.module: the ACObjective; engine.model: what the forward goes through
    bank: FeatureBank  # this rank's clips
    shapes: dict[str, Any]
    encoder_info: dict[str, Any]
    ckpts: CheckpointManager
    totals: dict[str, int]  # over all ranks: clips, trajectories, skipped trajectories
    trajectories: list[str]  # every rank's trajectory keys, sorted (the planner keeps off their seeds)
    owns_group: bool = False

    @property
    def predictor(self) -> ACPredictor:
        return self.engine.module.predictor

    def save(self, step: int) -> None:
        """Collective: a complete step folder: the predictor, optimizer, shapes and config (rank 0), and
        every rank's data position and RNG states."""

        def write(folder) -> None:
            if self.env.is_main:
                state = {
                    "predictor": self.predictor.state_dict(),
                    "optimizer": self.engine.optimizer.state_dict(),
                    "shapes": self.shapes,
                    "encoder": self.encoder_info,
                    "trajectories": self.trajectories,
                    "config": to_dict(self.cfg),
                }
                atomic_torch_save(state, folder / AC_MODEL_FILE)
                save_config(self.cfg, RunFolder(folder).config)
            data = {"next_step": step, "clips": len(self.bank), "fingerprint": self.bank.fingerprint()}
            save_trainer_state(folder, self.env.rank, step=step, data=data)

        self.ckpts.save(step, write)

    def close(self) -> None:
        if self.owns_group:
            process_group.stop_process_group()


def _encode_share(cfg: ACConfig, env: DistEnv, device: torch.device) -> tuple[FeatureBank, dict, dict]:
    """This rank's feature bank, the shapes and the encoder's description. A failure on any rank (no
    readable clips, frames of the wrong size) stops every rank, with the error where it happened."""
    encoder, info = load_frozen_encoder(cfg.encoder, crop=cfg.data.crop, device=device)
    start = time.perf_counter()
    error: ValueError | None = None
    try:
        reader = trajectory_reader(cfg.data, seed=cfg.train.seed, rank=env.rank, world_size=env.world_size)
        bank = encode_bank(encoder, reader, cfg.data, device=device, batch_frames=cfg.train.encode_batch)
    except ValueError as err:
        error = err
    if not process_group.all_true(error is None, device):
        raise error or ValueError(f"data.train: another rank could not read its share of {cfg.data.train}")
    log.info(
        "encoded %d clips of %d trajectories in %.1f s (%d skipped)",
        len(bank),
        len(set(bank.keys)),
        time.perf_counter() - start,
        bank.skipped,
    )
    shapes = {
        "feature_dim": int(bank.features.shape[-1]),
        "action_dim": int(bank.actions.shape[-1]),
        "state_dim": int(bank.states.shape[-1]),
        "grid": [int(encoder.grid[1]), int(encoder.grid[2])],
    }
    return bank, shapes, info


def _optimizer(objective: torch.nn.Module, optim: ACOptimSettings) -> torch.optim.AdamW:
    decay = [p for p in objective.parameters() if p.ndim > 1]
    no_decay = [p for p in objective.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr_at(0, optim), betas=optim.betas)


def build_ac_run(cfg: ACConfig) -> ACRun:
    """Device, process group (dist.backend=ddp), frozen encoder, this rank's feature bank, predictor,
    engine, optimizer and run folder (config written by rank 0)."""
    cfg.check_paths()
    host_memory.apply(cfg.train.host_memory)
    env = read_env()
    device = resolve_device(cfg.train.device, index=env.local_rank, key="train.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = cfg.dist.backend != "single" and process_group.start_process_group(
        env, device, timeout=timedelta(minutes=cfg.dist.timeout_minutes)
    )
    try:
        bank, shapes, info = _encode_share(cfg, env, device)
        shares = process_group.gather_objects((sorted(set(bank.keys)), len(bank), bank.skipped))
        trajectories = sorted(key for keys, _, _ in shares for key in keys)
        totals = {
            "clips": sum(n for _, n, _ in shares),
            "trajectories": len(trajectories),
            "skipped_trajectories": sum(n for _, _, n in shares),
        }
        predictor = build_ac_predictor(cfg.predictor, shapes, seed=cfg.train.seed, device=device).train()
        objective = ACObjective(
            predictor, rollout_steps=cfg.loss.rollout_steps, rollout_weight=cfg.loss.rollout_weight
        )
        engine = build_replica_engine(
            objective,
            lambda module: _optimizer(module, cfg.optim),
            backend=cfg.dist.backend,
            device=device,
            env=env,
        )
    except BaseException:
        if owns_group:
            process_group.stop_process_group()
        raise
    folder = RunFolder(cfg.train.out_dir)
    if env.is_main:
        folder.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder.config)
    ckpts = CheckpointManager(
        folder.checkpoints, keep_last=cfg.train.keep_last, rank=env.rank, barrier=engine.barrier
    )
    return ACRun(
        cfg, env, device, folder, engine, bank, shapes, info, ckpts, totals, trajectories, owns_group
    )


def resume_ac(run: ACRun) -> int:
    """Restores the newest complete checkpoint of the run folder, if any; -> the first step to run. Every
    rank checks its own bank against its trainer state; a mismatch on any rank stops all of them."""
    latest = run.ckpts.latest()
    if latest is None:
        return 0
    saved = saved_world_size(latest)
    if saved != run.env.world_size:
        raise ValueError(
            f"checkpoint {latest} was written by {saved} process(es) and this run has {run.env.world_size}: "
            "each rank's clips depend on the number of processes; resume with the same number"
        )
    step, data, _ = load_trainer_state(latest, run.env.rank)
    same = data.get("fingerprint") == run.bank.fingerprint()
    if not run.engine.all_ranks(same):
        raise ValueError(
            f"data: the clips of data.train={run.cfg.data.train} (with data.* and train.seed) are not those the "
            f"checkpoint {latest} was trained on; use another train.out_dir for a new run"
        )
    state = read_torch_file(latest / AC_MODEL_FILE, what=f"checkpoint {latest}", map_location=run.device)
    try:
        run.predictor.load_state_dict(state["predictor"])
        run.engine.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"checkpoint {latest} does not fit predictor.* / optim.* of this config: {err}"
        ) from None
    if run.env.is_main:  # the steps after the checkpoint run again and are logged again
        trim_log(run.folder.root, step)
    log.info("resumed from %s at step %d", latest, step)
    return step


def train_step(run: ACRun, step: int) -> dict[str, float]:
    """One update of the AC predictor; -> the step's scalars, the losses averaged over the ranks (losses nan
    and applied 0 when skipped)."""
    cfg, engine = run.cfg, run.engine
    features, actions, states = run.bank.batch(
        step, seed=cfg.train.seed, size=cfg.optim.batch, rank=run.env.rank
    )
    features = features.to(run.device)  # [B, T, N, F]
    actions, states = actions.to(run.device), states.to(run.device)  # [B, T - 1, A], [B, T, S]
    lr = lr_at(step, cfg.optim)
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    loss, loss_tf, loss_rollout = engine.model(features, actions, states)  # ACObjective.forward
    means = process_group.mean_over_ranks(
        [float(loss.detach()), float(loss_tf.detach()), float(loss_rollout.detach())], run.device
    )
    scalars = {"loss": means[0], "loss_tf": means[1], "loss_rollout": means[2], "lr": lr}
    if not math.isfinite(scalars["loss"]):  # the mean is non-finite when any rank's loss is
        engine.drop_gradients(after_backward=False)
        log.warning("step %d: non-finite loss; update skipped", step)
        return {**scalars, "grad_norm": float("nan"), "applied": 0}
    engine.backward(loss)
    grad_norm = engine.grad_norm()  # of the rank-averaged gradients, identical on every rank
    if not engine.all_ranks(bool(torch.isfinite(grad_norm))):
        engine.drop_gradients(after_backward=True)
        log.warning("step %d: non-finite gradients; update skipped", step)
        return {**scalars, "grad_norm": float(grad_norm), "applied": 0}
    if cfg.optim.grad_clip is not None:
        engine.clip_gradients(cfg.optim.grad_clip, grad_norm)
    engine.step()
    return {**scalars, "grad_norm": float(grad_norm), "applied": 1}


def _record(step: int, scalars: dict[str, float]) -> str:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in scalars.items()}
    return json.dumps({"step": step, **clean})


def loop(run: ACRun, start: int, *, until: int | None = None) -> dict[str, Any]:
    """Steps `start` .. optim.steps - 1 (or only up to `until`, saving there: a run stopped early)."""
    cfg, steps, main = run.cfg, run.cfg.optim.steps, run.env.is_main
    end = steps if until is None else min(until, steps)
    shown = cfg.train.progress if main else False
    first = last = None
    skipped = 0
    with (
        (run.folder.root / LOG_FILE).open("a") if main else nullcontext() as log_file,
        Progress(
            end - start, label="train-ac", unit="steps", enabled=shown is not False, force=shown is True
        ) as bar,
    ):
        for step in range(start, end):
            t0 = time.perf_counter()
            scalars = train_step(run, step)
            clips = cfg.optim.batch * run.env.world_size
            scalars["clips_per_s"] = clips / max(time.perf_counter() - t0, 1e-9)
            skipped += 1 - scalars["applied"]
            if scalars["applied"]:
                first, last = scalars["loss"] if first is None else first, scalars["loss"]
            if log_file is not None and (step % cfg.train.log_every == 0 or step == steps - 1):
                log_file.write(_record(step, scalars) + "\n")
                log_file.flush()
            bar.update(1, loss=scalars["loss"], tf=scalars["loss_tf"], rollout=scalars["loss_rollout"])
            done = step + 1
            if done % cfg.train.checkpoint_every == 0 or done in (steps, end):
                run.save(done)
    return {
        "start_step": start,
        "steps": steps,
        "steps_run": end - start,
        "skipped_steps": skipped,
        "first_loss": first,
        "last_loss": last,
        **run.totals,
        "world_size": run.env.world_size,
        "run_dir": str(run.folder.root),
    }


def train_ac(cfg: ACConfig) -> dict[str, Any]:
    """Runs (or resumes from train.out_dir's newest checkpoint) AC training as configured; -> a summary."""
    run = build_ac_run(cfg)
    try:
        return loop(run, resume_ac(run))
    finally:
        run.close()
