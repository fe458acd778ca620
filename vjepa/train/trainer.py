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

import logging
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from data_pipelines import BatchStream, MixedBatch, VideoBatch, normalize
from vjepa.config import Config
from vjepa.dense.config import context_weight_at
from vjepa.distributed.engine import Engine
from vjepa.objective import packed_target_features
from vjepa.train.accumulate import StepTally, micro_batches, target_rows
from vjepa.train.metrics import RunLogger
from vjepa.train.monitors import collapse_monitors
from vjepa.train.optim import set_lr_wd
from vjepa.train.preemption import StopSignals, stop_with_launcher

# Building a run lives in run.py; build_models and make_engine are re-exported for the callers of this module.
from vjepa.train.run import Run, build_models, build_run, make_engine, resume
from vjepa.train.schedules import StepValues, values_at
from vjepa.train.spike_guard import SpikeLimit

__all__ = [
    "StepResult",
    "TrainSummary",
    "build_models",
    "build_run",
    "loop",
    "make_engine",
    "resume",
    "train",
]
__all__ += ["train_step"]

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
    terms: dict[str, float] = field(default_factory=dict)  # loss.* terms: context_loss, context_weight
    skipped_for: str = ""  # why the update was skipped (the same on every rank): NONFINITE_LOSS, SPIKE, ...


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(
    engine: Engine,
    batches: VideoBatch | MixedBatch | Sequence[VideoBatch | MixedBatch],
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
    model = engine.module
    # the whole step's rows per (clip length, mask configuration), when accumulating
    rows = (
        target_rows(micro, model.clip_lengths, len(model.predictor.mask_tokens)) if len(micro) > 1 else None
    )
    lam = context_weight_at(step, cfg.loss)  # V-JEPA 2.1's context-loss weight (0 when off)
    tally, monitors, terms = StepTally(len(micro)), {}, {}
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        with nullcontext() if last else engine.no_sync():  # gradients are reduced in the last backward only
            groups = batch.groups()  # one per clip length (a MixedBatch has several)
            clips = [normalize(g.clips) for g in groups]  # [B, C, T, H, W] float each, ImageNet mean/std
            masks = [g.masks for g in groups]
            with autocast_for(cfg.train.precision, device):
                # [B, N, L*D] layer-normed, no grad
                targets = packed_target_features(engine.target.module, clips, cfg.loss.levels)
                if len(groups) == 1:
                    clips, targets, masks = clips[0], targets[0], masks[0]
                out = engine.model(clips, masks, targets, lam, rows)  # JepaModel.forward: jepa_loss
            if not last:
                engine.backward(out.loss)
        tally.add(out)
        terms = {k: terms.get(k, 0.0) + v if k == "context_loss" else v for k, v in out.terms.items()}
        if monitor and i == 0:
            monitors = collapse_monitors(targets if len(groups) == 1 else targets[0], out)

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
            terms=terms,
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
        terms=terms,
    )


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
    step with a checkpoint to resume from (see preemption.py). `train.phases`: see phases.py."""
    if cfg.train.phases:
        from vjepa.train.phases import train_phases

        return train_phases(cfg)
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
    result: StepResult,
    batches: list[VideoBatch | MixedBatch],
    run: Run,
    skipped: int,
    wait_s: float,
    total_s: float,
) -> dict[str, float]:
    values, total_s = result.values, max(total_s, 1e-9)
    return {
        "loss": result.loss,
        **{f"loss_mask{k}": v for k, v in enumerate(result.loss_per_mask)},
        **result.terms,
        "lr": values.lr,
        "weight_decay": values.weight_decay,
        "momentum": values.momentum,
        "grad_norm": result.grad_norm,
        "target_std": result.target_std,
        "pred_std": result.pred_std,
        **result.monitors,
        "clips_per_s": sum(b.num_clips for b in batches) * run.env.world_size / total_s,
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
