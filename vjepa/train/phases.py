"""Running `train.phases`: several training phases one after the other in one `vjepa train`, e.g. the
V-JEPA 2 recipe's pretraining on 16-frame clips, then a cooldown on 64-frame clips at a higher resolution
with a linear lr decay. Each phase is an ordinary run folder inside the run folder:

    <out_dir>/phases.json                  the phase list the run was started with (name, steps, overrides)
    <out_dir>/phase-<i>-<name>/            the phase's run folder: config.yaml, env.json, checkpoints/, logs
    <out_dir>/phase-<i>-<name>/PHASE_DONE  written atomically after the phase's final checkpoint (it names it)

So `vjepa export --checkpoint <out_dir>/phase-1-cooldown` and the probes read a phase like any run.

- Phase i > 0 starts from the final checkpoint of phase i - 1: encoder, predictor, EMA target and the AdamW
  moments carry over (published V-JEPA 2 starts its cooldown from the pretraining checkpoint's weights and
  optimizer state, only the step count restarts; AdamW's per-parameter moments do not depend on the clip
  size). Its own schedule runs over its own step counter from 0; betas and eps are the phase's own (a saved
  AdamW state would bring back the old ones); the loss guard and the data stream start afresh.
- Position tables: fixed sin-cos tables are buffers built for each phase's token grid and never copied
  between phases; RoPE has no table. There is no learned table to interpolate.
- Resume: rerunning the same command skips every phase with a PHASE_DONE marker and resumes the first
  unfinished phase from its newest checkpoint (or starts it from the phase before). A changed phase list is
  refused; phases appended after the saved list are accepted. `checkpoint.resume=false` starts over.
- A stop signal (SIGUSR1 / SIGTERM / SIGINT, see preemption.py) ends the phase with a checkpoint and ends
  the command: the next phase is not started, and the requeued job resumes where it stopped. Every rank runs
  the same phase sequence in the one process group started here for all phases.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vjepa.checkpoint import MARKER, CheckpointManager
from vjepa.config import Config, OptimConfig
from vjepa.distributed.env import DistEnv, read_env
from vjepa.train.phase_config import Phase, phase_list, resolve_phases
from vjepa.train.preemption import StopSignals, stop_with_launcher
from vjepa.train.trainer import TrainSummary, build_run, loop, resume
from vjepa.utils import atomic_write, resolve_device

log = logging.getLogger(__name__)

MANIFEST_FILE = "phases.json"
DONE_FILE = "PHASE_DONE"


@dataclass(frozen=True)
class PhasedSummary(TrainSummary):
    """The summary of the last phase this call ran (its steps, losses, run_dir), and where the run stands."""

    phase: str = ""  # the phase the summary is of
    phase_index: int = 0
    phases_done: int = 0  # how many phases are finished now
    phases_total: int = 0


def train_phases(cfg: Config) -> PhasedSummary:
    """Runs (or resumes) every phase of `cfg.train.phases` in order; stops after a phase that was stopped by a
    signal (see the module docstring)."""
    phases = resolve_phases(cfg)  # every phase checked before any work (load_config did it already)
    for phase in phases:
        phase.cfg.check_paths()
    with StopSignals() as signals:
        stop_with_launcher()
        env = read_env()
        owns_group = start_group(phases[0].cfg, env)
        try:
            return run_phases(cfg, phases, env, signals)
        finally:
            if owns_group:
                from vjepa.distributed.process_group import stop_process_group

                stop_process_group()


def start_group(cfg: Config, env: DistEnv) -> bool:
    """The process group every phase runs in (ddp/deepspeed), started once; -> whether it was started here."""
    from vjepa.distributed.process_group import start_process_group

    if cfg.dist.backend == "single":
        return False
    device = resolve_device(cfg.train.device, index=env.local_rank, key="train.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return start_process_group(env, device, timeout=timedelta(minutes=cfg.dist.timeout_minutes))


def run_phases(cfg: Config, phases: list[Phase], env: DistEnv, signals: StopSignals) -> PhasedSummary:
    root = Path(cfg.train.out_dir)
    check_manifest(root, cfg, env)
    previous: Path | None = None  # the final checkpoint of the phase before
    summary: TrainSummary | None = None
    for phase in phases:
        final = finished(phase) if cfg.checkpoint.resume else None
        if final is not None:
            log.info("%s finished earlier (%s): skipped", phase.label, final)
            previous = final
            continue
        log.info("%s of %d: %d steps in %s", phase.label, len(phases), phase.cfg.train.steps, phase.folder)
        summary, final = run_phase(phase, previous, env, signals)
        if final is None or summary.stopped_by:  # a signal stopped the run: the next phase waits
            return summarise(summary, phase, phases, done=phase.index + (final is not None))
        previous = final
    if summary is None:  # every phase had finished before
        last = phases[-1]
        steps = last.cfg.train.steps
        summary = TrainSummary(
            start_step=steps,
            steps=steps,
            steps_run=0,
            skipped_steps=0,
            first_loss=None,
            last_loss=None,
            run_dir=str(last.folder),
            world_size=env.world_size,
            rank=env.rank,
            pid=os.getpid(),
            stopped_by="",
        )
    return summarise(summary, phases[-1], phases, done=len(phases))


def run_phase(
    phase: Phase, previous: Path | None, env: DistEnv, signals: StopSignals
) -> tuple[TrainSummary, Path | None]:
    """One phase: built, resumed (or started from `previous`), trained; -> its summary and, when it ran to
    its end, its final checkpoint (marked done)."""
    cfg = phase.cfg
    # the global RNGs as a fresh process has them, so a phase started after a restart runs as it would have
    random.seed(cfg.train.seed + env.rank)
    np.random.seed(cfg.train.seed + env.rank)
    run = build_run(cfg)
    try:
        start = resume(run)
        if start == 0 and previous is not None:
            run.engine.load_phase_start(previous)
            set_betas_eps(run.engine.optimizer, cfg.optim)
            log.info("%s starts from %s (weights, target and optimizer state)", phase.label, previous)
        summary = loop(run, start, signals)
        steps = cfg.train.steps
        if summary.start_step + summary.steps_run < steps:
            return summary, None
        final = run.ckpts.step_dir(steps)
        if not run.engine.all_ranks(run.ckpts.latest() == final):  # last step skipped: same weights
            run.save(steps)
        if env.is_main:
            with atomic_write(phase.folder / DONE_FILE) as tmp:
                tmp.write_text(json.dumps({"name": phase.name, "steps": steps, "checkpoint": final.name}))
        run.engine.barrier()
        return summary, final
    finally:
        run.close()
        del run
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def finished(phase: Phase) -> Path | None:
    """The final checkpoint of `phase` when its PHASE_DONE marker says it finished, else None."""
    marker = phase.folder / DONE_FILE
    if not marker.is_file():
        return None
    try:
        name = json.loads(marker.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{marker}: unreadable ({err}); delete it to run {phase.label} again") from None
    final = phase.folder / "checkpoints" / name
    if not (final / MARKER).is_file() or final != CheckpointManager(final.parent).step_dir(
        phase.cfg.train.steps
    ):
        raise ValueError(
            f"{marker} names {final}, which is not the complete final checkpoint of {phase.label} "
            f"(train.phases.{phase.index}.steps={phase.cfg.train.steps}); delete the marker to run it again"
        )
    return final


def check_manifest(root: Path, cfg: Config, env: DistEnv) -> None:
    """Refuses a run folder started with another phase list (phases appended after it are accepted) or one
    holding a single-phase run; rank 0 records the list. `checkpoint.resume=false` starts over."""
    now = phase_list(cfg)
    path = root / MANIFEST_FILE
    if cfg.checkpoint.resume:
        if CheckpointManager(root / "checkpoints").latest() is not None:
            raise ValueError(
                f"train.phases: {root} holds a single-phase run (checkpoints/); use another train.out_dir"
            )
        saved = read_manifest(path)
        if saved is not None and now[: len(saved)] != saved:
            first = next(i for i in range(len(saved)) if i >= len(now) or now[i] != saved[i])
            was = saved[first]
            is_now = now[first] if first < len(now) else "no phase"
            raise ValueError(
                f"train.phases: {root} was started with another phase list (train.phases.{first} was {was}, "
                f"now {is_now}). Rerun with the saved list (in {path}; phases may be appended after it), use "
                "another train.out_dir, or start over with checkpoint.resume=false"
            )
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if not cfg.checkpoint.resume:
            for marker in root.glob(f"phase-*/{DONE_FILE}"):
                marker.unlink()
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(now, indent=2))


def read_manifest(path: Path) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"train.phases: {path} is unreadable ({err})") from None


def set_betas_eps(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
    """The phase's own betas and eps (loading a saved AdamW state also loads the saved groups' values)."""
    for group in optimizer.param_groups:
        group["betas"], group["eps"] = tuple(cfg.betas), cfg.eps


def summarise(summary: TrainSummary, phase: Phase, phases: list[Phase], *, done: int) -> PhasedSummary:
    fields = {k: getattr(summary, k) for k in TrainSummary.__dataclass_fields__}
    return PhasedSummary(
        **fields, phase=phase.name, phase_index=phase.index, phases_done=done, phases_total=len(phases)
    )
