"""`vjepa train-ac`: the action-conditioned predictor trained on a frozen encoder's per-frame features of
trajectory shards. `train_step` is one update, top to bottom; `train_ac(cfg)` builds the run, resumes it and
loops. One process only: DDP and DeepSpeed are not wired for AC training yet (the features are cached once,
so a tiny predictor trains at CPU speed; a multi-rank version would shard the bank and wrap the predictor).

The step reads: the step's batch from the feature bank (seeded by (train.seed, step)) -> lr of the step ->
loss = L1 teacher forcing + loss.rollout_weight x L1 rollout over loss.rollout_steps -> backward -> gradient
norm, clipping -> AdamW step. A non-finite loss skips the update (logged and counted).

Resume is exact: the weights, AdamW's moments and the step come back from the checkpoint, the schedule and
the batches are functions of the step, and the bank is re-encoded from the same shards (its fingerprint
must match the checkpoint's).

Shape legend: B batch, T frames per clip, N patch tokens, F feature width, A action dims, S state dims.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from vjepa.checkpoint import (
    AC_MODEL_FILE,
    CheckpointManager,
    RunFolder,
    atomic_torch_save,
    load_trainer_state,
    save_trainer_state,
)
from vjepa.config import save_config, to_dict
from vjepa.eval.progress import Progress
from vjepa.models.weights import read_torch_file
from vjepa.train.metrics import LOG_FILE, trim_log
from vjepa.utils import resolve_device
from vjepa.world.ac_checkpoint import build_ac_predictor
from vjepa.world.ac_objective import rollout_loss, teacher_forcing_loss
from vjepa.world.ac_predictor import ACPredictor
from vjepa.world.config import ACConfig, ACOptimSettings
from vjepa.world.features import FeatureBank, encode_bank, load_frozen_encoder

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
    device: torch.device
    folder: RunFolder
    predictor: ACPredictor
    optimizer: torch.optim.AdamW
    bank: FeatureBank
    shapes: dict[str, Any]
    encoder_info: dict[str, Any]
    ckpts: CheckpointManager

    def save(self, step: int) -> None:
        """A complete step folder: predictor, optimizer, shapes, data position, RNG states, config."""

        def write(folder) -> None:
            state = {
                "predictor": self.predictor.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "shapes": self.shapes,
                "encoder": self.encoder_info,
                "trajectories": sorted(set(self.bank.keys)),
                "config": to_dict(self.cfg),
            }
            atomic_torch_save(state, folder / AC_MODEL_FILE)
            data = {"next_step": step, "clips": len(self.bank), "fingerprint": self.bank.fingerprint()}
            save_trainer_state(folder, 0, step=step, data=data)
            save_config(self.cfg, RunFolder(folder).config)

        self.ckpts.save(step, write)


def build_ac_run(cfg: ACConfig) -> ACRun:
    """Device, frozen encoder, feature bank, predictor, optimizer and run folder (config written)."""
    cfg.check_paths()
    device = resolve_device(cfg.train.device, key="train.device")
    encoder, info = load_frozen_encoder(cfg.encoder, crop=cfg.data.crop, device=device)
    start = time.perf_counter()
    bank = encode_bank(
        encoder,
        cfg.data.shards(),
        cfg.data,
        seed=cfg.train.seed,
        device=device,
        batch_frames=cfg.train.encode_batch,
    )
    log.info(
        "encoded %d clips of %d trajectories in %.1f s",
        len(bank),
        len(set(bank.keys)),
        time.perf_counter() - start,
    )
    shapes = {
        "feature_dim": int(bank.features.shape[-1]),
        "action_dim": int(bank.actions.shape[-1]),
        "state_dim": int(bank.states.shape[-1]),
        "grid": [int(encoder.grid[1]), int(encoder.grid[2])],
    }
    del encoder
    predictor = build_ac_predictor(cfg.predictor, shapes, seed=cfg.train.seed, device=device).train()
    decay = [p for p in predictor.parameters() if p.ndim > 1]
    no_decay = [p for p in predictor.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr_at(0, cfg.optim), betas=cfg.optim.betas)
    folder = RunFolder(cfg.train.out_dir)
    folder.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder.config)
    ckpts = CheckpointManager(folder.checkpoints, keep_last=cfg.train.keep_last)
    return ACRun(cfg, device, folder, predictor, optimizer, bank, shapes, info, ckpts)


def resume_ac(run: ACRun) -> int:
    """Restores the newest complete checkpoint of the run folder, if any; -> the first step to run."""
    latest = run.ckpts.latest()
    if latest is None:
        return 0
    state = read_torch_file(latest / AC_MODEL_FILE, what=f"checkpoint {latest}")
    step, data, _ = load_trainer_state(latest, 0)
    if data.get("fingerprint") != run.bank.fingerprint():
        raise ValueError(
            f"data: the clips of data.train={run.cfg.data.train} (with data.* and train.seed) are not those the "
            f"checkpoint {latest} was trained on; use another train.out_dir for a new run"
        )
    try:
        run.predictor.load_state_dict(state["predictor"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"checkpoint {latest} does not fit predictor.* / optim.* of this config: {err}"
        ) from None
    trim_log(run.folder.root, step)  # the steps after the checkpoint run again and are logged again
    log.info("resumed from %s at step %d", latest, step)
    return step


def train_step(run: ACRun, step: int) -> dict[str, float]:
    """One update of the AC predictor; -> the step's scalars (losses nan and applied 0 when skipped)."""
    cfg = run.cfg
    features, actions, states = run.bank.batch(step, seed=cfg.train.seed, size=cfg.optim.batch)
    features = features.to(run.device)  # [B, T, N, F]
    actions, states = actions.to(run.device), states.to(run.device)  # [B, T - 1, A], [B, T, S]
    lr = lr_at(step, cfg.optim)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_tf = teacher_forcing_loss(run.predictor, features, actions, states)
    loss_rollout = (
        rollout_loss(run.predictor, features, actions, states, steps=cfg.loss.rollout_steps)
        if cfg.loss.rollout_weight > 0
        else torch.zeros((), device=run.device)
    )
    loss = loss_tf + cfg.loss.rollout_weight * loss_rollout
    scalars = {
        "loss": float(loss.detach()),
        "loss_tf": float(loss_tf.detach()),
        "loss_rollout": float(loss_rollout.detach()),
        "lr": lr,
    }
    run.optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(scalars["loss"]):
        log.warning("step %d: non-finite loss; update skipped", step)
        return {**scalars, "grad_norm": float("nan"), "applied": 0}
    loss.backward()
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.predictor.parameters(), clip))
    if not math.isfinite(grad_norm):
        run.optimizer.zero_grad(set_to_none=True)
        log.warning("step %d: non-finite gradients; update skipped", step)
        return {**scalars, "grad_norm": grad_norm, "applied": 0}
    run.optimizer.step()
    return {**scalars, "grad_norm": grad_norm, "applied": 1}


def _record(step: int, scalars: dict[str, float]) -> str:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in scalars.items()}
    return json.dumps({"step": step, **clean})


def loop(run: ACRun, start: int, *, until: int | None = None) -> dict[str, Any]:
    """Steps `start` .. optim.steps - 1 (or only up to `until`, saving there: a run stopped early)."""
    cfg, steps = run.cfg, run.cfg.optim.steps
    end = steps if until is None else min(until, steps)
    shown = cfg.train.progress
    first = last = None
    skipped = 0
    with (
        (run.folder.root / LOG_FILE).open("a") as log_file,
        Progress(
            end - start, label="train-ac", unit="steps", enabled=shown is not False, force=shown is True
        ) as bar,
    ):
        for step in range(start, end):
            t0 = time.perf_counter()
            scalars = train_step(run, step)
            scalars["clips_per_s"] = cfg.optim.batch / max(time.perf_counter() - t0, 1e-9)
            skipped += 1 - scalars["applied"]
            if scalars["applied"]:
                first, last = scalars["loss"] if first is None else first, scalars["loss"]
            if step % cfg.train.log_every == 0 or step == steps - 1:
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
        "clips": len(run.bank),
        "trajectories": len(set(run.bank.keys)),
        "run_dir": str(run.folder.root),
    }


def train_ac(cfg: ACConfig) -> dict[str, Any]:
    """Runs (or resumes from train.out_dir's newest checkpoint) AC training as configured; -> a summary."""
    run = build_ac_run(cfg)
    return loop(run, resume_ac(run))
