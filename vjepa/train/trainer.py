"""Pretraining. `train_step` is one V-JEPA update, top to bottom; `train(cfg)` builds the run, resumes it
and loops over `train_step`.

The step reads: schedule values -> for each micro-batch (one, or `optim.accumulate`): EMA target features on
the full clip -> context encoder + predictor over every mask configuration and the L1 loss
(vjepa/objective.py), with the backward of all but the last -> finite and spike checks of the step's loss
on every rank -> the last backward -> gradient norm, finite check, clipping -> AdamW step -> EMA update. The
engine (vjepa/distributed/engine.py) only supplies what differs by backend: the wrapped forward, backward
without gradient reduction (`no_sync`), the step, the global gradient norm, and where the target's weights
live.

Shape legend: B batch, C channels, T frames, H/W pixels, N tokens, D encoder width.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from data_pipelines import BatchStream, MaskGenerator, VideoBatch, build_train_stream, normalize
from vjepa.checkpoint import (
    CheckpointManager,
    RunFolder,
    atomic_torch_save,
    save_trainer_state,
)
from vjepa.config import Config, save_config
from vjepa.distributed.engine import Engine, build_engine
from vjepa.distributed.env import DistEnv, read_env
from vjepa.models.builder import build_encoder, build_predictor, token_grid
from vjepa.objective import JepaModel, target_features
from vjepa.pretrained import read_pretrained
from vjepa.train.accumulate import StepTally, micro_batches, target_rows
from vjepa.train.compile import compile_models
from vjepa.train.metrics import RunLogger, trim_log
from vjepa.train.monitors import collapse_monitors
from vjepa.train.optim import build_optimizer, set_lr_wd
from vjepa.train.periodic_probe import PeriodicProbe
from vjepa.train.preemption import StopSignals, stop_with_launcher
from vjepa.train.resume import restore_newest
from vjepa.train.schedules import StepValues, values_at
from vjepa.train.spike_guard import SpikeGuard, SpikeLimit
from vjepa.utils import resolve_device

log = logging.getLogger(__name__)


class LossGuardError(RuntimeError):
    """Too many skipped steps (non-finite, or loss spikes: train.max_bad_steps in a row, or
    train.spike_guard.max_total spikes in all) stopped the run; `vjepa` prints it as one line."""


NONFINITE_LOSS, SPIKE, NONFINITE_GRADS = "non-finite loss", "loss spike", "non-finite gradients"


@dataclass(frozen=True)
class StepResult:
    loss: float  # the step's loss (summed over its micro-batches); nan when non-finite
    loss_per_mask: list[float]
    grad_norm: float  # global, before clipping; nan when the loss was already non-finite or a spike
    applied: bool  # False: the update was skipped on every rank
    target_std: float
    pred_std: float
    values: StepValues  # the schedules' lr, weight decay and EMA momentum at this step
    monitors: dict[str, float]  # collapse monitors (empty on steps that do not compute them)
    skipped_for: str = ""  # why the update was skipped (the same on every rank): NONFINITE_LOSS, SPIKE, ...


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(
    engine: Engine,
    batches: VideoBatch | Sequence[VideoBatch],
    step: int,
    cfg: Config,
    device: torch.device,
    *,
    monitor: bool = False,
    max_loss: float | None = None,
) -> StepResult:
    """One V-JEPA update on one batch, or on the `optim.accumulate` micro-batches of one step (their loss
    and gradients are exactly those of their concatenation, see accumulate.py). A non-finite loss or
    gradient, or a loss above `max_loss` (a spike, see spike_guard.py), skips the update on every rank."""
    values = values_at(step, cfg.optim, cfg.train.steps)
    micro = [b.to(device, non_blocking=True) for b in micro_batches(batches)]
    rows = target_rows(micro) if len(micro) > 1 else None  # [M] the whole step's target rows per mask config
    tally, monitors = StepTally(len(micro)), {}
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        with nullcontext() if last else engine.no_sync():  # gradients are reduced in the last backward only
            clips = normalize(batch.clips)  # [B, C, T, H, W] float, ImageNet mean/std
            with autocast_for(cfg.train.precision, device):
                targets = target_features(engine.target.module, clips)  # [B, N, D] layer-normed, no grad
                out = engine.model(clips, batch.masks, targets, rows)  # JepaModel.forward: jepa_loss
            if not last:
                engine.backward(out.loss)
        tally.add(out)
        if monitor and i == 0:
            monitors = collapse_monitors(targets, out)

    def skipped(why: str, loss: float, grad_norm: float) -> StepResult:
        return StepResult(
            loss=loss,
            loss_per_mask=tally.loss_per_mask,
            grad_norm=grad_norm,
            applied=False,
            target_std=tally.target_std,
            pred_std=tally.pred_std,
            values=values,
            monitors=monitors,
            skipped_for=why,
        )

    loss = tally.loss
    if not engine.all_ranks(math.isfinite(loss) and (max_loss is None or loss <= max_loss)):
        why = SPIKE if engine.all_ranks(math.isfinite(loss)) else NONFINITE_LOSS
        if len(micro) > 1:  # earlier micro-batches' gradients are held: make them non-finite, then every
            engine.backward(out.loss * float("nan"))  # backend discards them its own way (ZeRO: overflow)
        engine.drop_gradients(after_backward=len(micro) > 1)
        return skipped(why, loss if math.isfinite(loss) else float("nan"), float("nan"))
    engine.backward(out.loss)
    grad_norm = engine.grad_norm()  # global L2 norm before clipping, identical on every rank
    if not engine.all_ranks(bool(torch.isfinite(grad_norm))):
        engine.drop_gradients(after_backward=True)
        return skipped(NONFINITE_GRADS, loss, float(grad_norm))
    if cfg.optim.grad_clip is not None:
        engine.clip_gradients(cfg.optim.grad_clip, grad_norm)
    set_lr_wd(engine.optimizer, values.lr, values.weight_decay)
    engine.step()
    engine.target.update(engine.module.encoder, values.momentum)
    return StepResult(
        loss=loss,
        loss_per_mask=tally.loss_per_mask,
        grad_norm=float(grad_norm),
        applied=True,
        target_std=tally.target_std,
        pred_std=tally.pred_std,
        values=values,
        monitors=monitors,
    )


# ----------------------------------------------------------------------------- building a run


def build_models(cfg: Config, device: torch.device) -> JepaModel:
    m, d = cfg.model, cfg.data
    common = dict(
        frames=d.frames_per_clip,
        crop=d.crop_size,
        patch=m.patch_size,
        tubelet=m.tubelet_size,
        pos_embed=m.pos_embed,
        rope_layout=m.rope_layout,
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


def make_engine(cfg: Config, model: JepaModel, device: torch.device, env: DistEnv) -> Engine:
    """The engine for `cfg.dist`, given the config sections it needs (and `model.compile` applied)."""
    engine = build_engine(
        model,
        lambda module: build_optimizer(module, cfg.optim),
        optim=cfg.optim,
        dist=cfg.dist,
        precision=cfg.train.precision,
        micro_batch=cfg.data.batch_size,
        device=device,
        env=env,
    )
    if cfg.model.compile:
        compile_models(engine, cfg.model.compile_backend)
    return engine


@dataclass
class Run:
    """Everything one training process holds."""

    cfg: Config
    env: DistEnv
    device: torch.device
    folder: RunFolder
    engine: Engine
    data: BatchStream
    ckpts: CheckpointManager
    owns_group: bool
    guard: SpikeGuard
    probe: PeriodicProbe | None = None  # eval.every_steps: the run probing itself

    def save(self, step: int) -> None:
        """Collective: a complete step folder with the weights, this rank's trainer state, the config."""

        def write(folder: Path) -> None:
            self.engine.save(folder)
            extra = {"spike_guard": self.guard.state_dict()}
            save_trainer_state(folder, self.env.rank, step=step, data=self.data.state_dict(), extra=extra)
            if self.env.is_main:
                save_config(self.cfg, RunFolder(folder).config)

        self.ckpts.save(step, write)

    def close(self) -> None:
        self.engine.close()
        if self.owns_group:
            from vjepa.distributed.process_group import stop_process_group

            stop_process_group()


def write_run_folder(cfg: Config, env: DistEnv, folder: RunFolder, initial: JepaModel | None) -> None:
    """The resolved config, the environment and (for a fresh run) the initial weights: rank 0's, which every
    engine broadcasts; the target starts as a copy of the encoder."""
    folder.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder.config)
    folder.env.write_text(json.dumps(environment_info(env), indent=2))
    if initial is not None:
        parts = {
            "encoder": initial.encoder,
            "predictor": initial.predictor,
            "target_encoder": initial.encoder,
        }
        atomic_torch_save({k: m.state_dict() for k, m in parts.items()}, folder.init_weights)


def build_run(cfg: Config) -> Run:
    """Device, process group, models, engine, data and checkpoint manager for `cfg`; writes the run
    folder's config, environment and (on a fresh start) the initial weights."""
    from vjepa.distributed.process_group import start_process_group

    cfg.check_paths()  # data sources exist and train.out_dir can be written, before anything is built
    env = read_env()
    device = resolve_device(cfg.train.device, index=env.local_rank, key="train.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # ddp/deepspeed run in a process group (raises if it cannot start); torn down in Run.close if started here
    owns_group = cfg.dist.backend != "single" and start_process_group(
        env, device, timeout=timedelta(minutes=cfg.dist.timeout_minutes)
    )
    torch.manual_seed(cfg.train.seed + env.rank)
    folder = RunFolder(cfg.train.out_dir)
    model = build_models(cfg, device)
    ckpts = CheckpointManager(folder.checkpoints, keep_last=cfg.checkpoint.keep_last, rank=env.rank)
    if env.is_main:
        fresh = not (cfg.checkpoint.resume and ckpts.latest() is not None)
        write_run_folder(cfg, env, folder, model if fresh and cfg.checkpoint.save_init else None)
    engine = make_engine(cfg, model, device, env)
    ckpts.barrier = engine.barrier
    grid = token_grid(
        frames=cfg.data.frames_per_clip,
        crop=cfg.data.crop_size,
        patch=cfg.model.patch_size,
        tubelet=cfg.model.tubelet_size,
    )
    masks = MaskGenerator(cfg.mask, grid=grid, seed=cfg.train.seed, rank=env.rank)
    data = build_train_stream(
        cfg.data, mask_generator=masks, seed=cfg.train.seed, rank=env.rank, world_size=env.world_size
    )
    guard = SpikeGuard(cfg.train.spike_guard)
    probe = PeriodicProbe(cfg, device, main=env.is_main) if cfg.eval.every_steps > 0 else None
    return Run(cfg, env, device, folder, engine, data, ckpts, owns_group, guard, probe)


def resume(run: Run) -> int:
    """Restores the newest readable checkpoint (see resume.py), or else the `train.init_from` weights;
    -> the first step."""
    cfg = run.cfg
    restored = restore_newest(run) if cfg.checkpoint.resume else None
    if restored is not None:
        step, extra = restored
        if "spike_guard" in extra:
            run.guard.load_state_dict(extra["spike_guard"])
        if run.env.is_main:  # the steps after the checkpoint run again and are logged again
            trim_log(run.folder.root, step)
        return step
    if cfg.train.init_from:
        run.engine.load_weights(read_pretrained(cfg.train.init_from, what="train.init_from", model=cfg.model))
        log.info("initialised weights from %s", cfg.train.init_from)
    return 0


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class TrainSummary:
    start_step: int
    steps: int  # train.steps: where the run ends
    steps_run: int  # by this call (0 for a finished run resumed)
    skipped_steps: int
    first_loss: float | None  # the first and last finite losses of this process's steps
    last_loss: float | None
    run_dir: str
    world_size: int
    rank: int
    pid: int
    stopped_by: str  # the signal that stopped the run early (a checkpoint was written), "" otherwise


def train(cfg: Config) -> TrainSummary:
    """Runs (or resumes) pretraining as configured. SIGUSR1, SIGTERM and SIGINT stop it after the current
    step with a checkpoint to resume from (see preemption.py)."""
    with StopSignals() as signals:
        stop_with_launcher()
        run = build_run(cfg)
        try:
            return loop(run, resume(run), signals)
        finally:
            run.close()


def loop(run: Run, start: int, signals: StopSignals) -> TrainSummary:
    cfg, steps = run.cfg, run.cfg.train.steps
    logger = RunLogger(run.folder.root, cfg.log, total_steps=steps, start_step=start, enabled=run.env.is_main)
    bad_in_a_row, skipped, first, last, stopped_by, done = 0, 0, None, None, "", start
    stream = iter(run.data)
    try:
        for step in range(start, steps):
            if step == start and stop_requested(run, signals):  # before any step: nothing new to save
                stopped_by = signals.name or "a signal on another rank"
                log.warning("stopping before step %d (%s); nothing to save", step, stopped_by)
                break
            t0 = time.perf_counter()
            batches, stream = next_batches(run.data, stream, cfg.optim.accumulate)  # micro-batches, in order
            t1 = time.perf_counter()
            monitor = cfg.log.monitor_every > 0 and step % cfg.log.monitor_every == 0
            limit = run.guard.limit()
            max_loss = None if limit is None else limit.value
            result = train_step(
                run.engine, batches, step, cfg, run.device, monitor=monitor, max_loss=max_loss
            )
            t2 = time.perf_counter()
            run.guard.record(result.loss, applied=result.applied, spike=result.skipped_for == SPIKE)
            bad_in_a_row = 0 if result.applied else bad_in_a_row + 1
            skipped += not result.applied
            if not result.applied:
                log.warning(
                    "step %d: %s; update skipped (%d in a row)",
                    step,
                    why_skipped(result, limit),
                    bad_in_a_row,
                )
            else:
                first, last = result.loss if first is None else first, result.loss
            metrics = step_metrics(result, batches, run, skipped, t1 - t0, t2 - t0)
            if run.probe is not None and run.probe.due(step + 1):
                metrics.update(run.probe(run.engine.target.module))
                if "probe_top1" in metrics:
                    log.info(
                        "step %d: probe top-1 %.3f (eval.data=%s)", step, metrics["probe_top1"], cfg.eval.data
                    )
            logger.log(step, metrics)
            if bad_in_a_row >= cfg.train.max_bad_steps:
                raise LossGuardError(
                    f"{bad_in_a_row} consecutive skipped steps ({why_skipped(result, limit)}; train.max_bad_steps="
                    f"{cfg.train.max_bad_steps}); stopping. {last_checkpoint(run)}"
                )
            if run.guard.exhausted():
                raise LossGuardError(
                    f"{run.guard.skipped} loss spikes skipped in all ({why_skipped(result, limit)}; "
                    f"train.spike_guard.max_total={cfg.train.spike_guard.max_total}); stopping. "
                    f"{last_checkpoint(run)}"
                )
            done = step + 1
            stop = stop_requested(run, signals)
            # No periodic save in a streak of skipped steps: the last checkpoint stays the last good one. (Skipped
            # steps leave the weights as they were, so a save on a signal loses nothing either way.)
            if stop or (bad_in_a_row == 0 and (done % cfg.checkpoint.every_steps == 0 or done == steps)):
                run.save(done)
            if stop:
                stopped_by = signals.name or "a signal on another rank"
                log.warning(
                    "stopped after step %d (%s): checkpoint written to %s; run the same command to resume",
                    step,
                    stopped_by,
                    run.ckpts.step_dir(done),
                )
                break
    finally:
        logger.close()
    return TrainSummary(
        start_step=start,
        steps=steps,
        steps_run=done - start,
        skipped_steps=skipped,
        first_loss=first,
        last_loss=last,
        run_dir=str(run.folder.root),
        world_size=run.env.world_size,
        rank=run.env.rank,
        pid=os.getpid(),
        stopped_by=stopped_by,
    )


def why_skipped(result: StepResult, limit: SpikeLimit | None) -> str:
    """The rule that skipped the step, with its numbers."""
    if result.skipped_for != SPIKE:
        return result.skipped_for
    if limit is not None and result.loss > limit.value:
        return limit.describe(result.loss)
    return "a loss spike on another rank (train.spike_guard)"


def last_checkpoint(run: Run) -> str:
    latest = run.ckpts.latest()
    if latest is None:
        return "No checkpoint was written yet."
    return f"The last checkpoint, {latest}, is intact; the run resumes from it when started again."


def stop_requested(run: Run, signals: StopSignals) -> bool:
    """True on every rank as soon as one rank has received a stop signal (one tiny all-reduce per step)."""
    return not run.engine.all_ranks(not signals.requested)


def step_metrics(
    result: StepResult, batches: list[VideoBatch], run: Run, skipped: int, wait_s: float, total_s: float
) -> dict[str, float]:
    values, total_s = result.values, max(total_s, 1e-9)
    return {
        "loss": result.loss,
        **{f"loss_mask{k}": v for k, v in enumerate(result.loss_per_mask)},
        "lr": values.lr,
        "weight_decay": values.weight_decay,
        "momentum": values.momentum,
        "grad_norm": result.grad_norm,
        "target_std": result.target_std,
        "pred_std": result.pred_std,
        **result.monitors,
        "clips_per_s": sum(b.clips.shape[0] for b in batches) * run.env.world_size / total_s,
        "data_wait": wait_s / total_s,
        "skipped_steps": skipped,
        "data_skipped": run.data.stats()["skipped"],  # undecodable videos so far on this rank
    }


def next_batches(data: BatchStream, stream, count: int):
    """The next `count` batches (one step's micro-batches) and the stream to go on with."""
    batches = []
    for _ in range(count):
        batch, stream = next_batch(data, stream)
        batches.append(batch)
    return batches, stream


def next_batch(data: BatchStream, stream):
    """The next batch; at the end of an epoch (non-resampled data) the next epoch starts."""
    try:
        return next(stream), stream
    except StopIteration:
        stream = iter(data)
        try:
            return next(stream), stream
        except StopIteration:
            raise ValueError("data: the training data yields no batches (check data.sources)") from None
