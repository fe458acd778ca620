"""Run logging: a JSONL line of scalars per logged step, TensorBoard events, and a tqdm progress bar.

Keys may appear on some steps only (the collapse monitors, every `log.monitor_every` steps): a step that
carries them is always written, the bar keeps showing the last `target_eff_dim`, and a `CollapseWatch`
logs a one-line warning when a monitor enters the collapsed state.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from vjepa.config import LogConfig
from vjepa.train.monitors import CollapseWatch
from vjepa.utils import atomic_write

log = logging.getLogger(__name__)
LOG_FILE = "log.jsonl"
MONITOR_SUFFIXES = ("eff_dim", "eff_rank", "clip_const")


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl, in the order written (a resumed run appends; a torn last line
    from a crash is dropped)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no training log (log.jsonl=false?)")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def trim_log(run_dir: str | Path, step: int) -> int:
    """Drops the records of steps >= `step` from a run's log.jsonl (atomically; a torn line goes too), so a
    run resumed at `step` logs each step once. -> the number of records dropped."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", -1) < step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    if len(kept) != len(lines):
        with atomic_write(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept))
    return len(lines) - len(kept)


class RunLogger:
    """Only rank 0 writes; other ranks get a logger that does nothing."""

    def __init__(self, run_dir: Path, cfg: LogConfig, *, total_steps: int, start_step: int, enabled: bool):
        self.cfg, self.enabled = cfg, enabled
        self.jsonl = self.tb = self.bar = None
        self.watch = CollapseWatch(warn_fraction=cfg.collapse_warn_fraction)
        self.eff_dim: float | None = None  # the last target_eff_dim, shown in the bar between monitor steps
        if not enabled:
            return
        if cfg.jsonl:
            self.jsonl = (run_dir / LOG_FILE).open("a")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        monitored = any(k.endswith(MONITOR_SUFFIXES) for k in scalars)
        if monitored:
            self.eff_dim = scalars.get("target_eff_dim", self.eff_dim)
            warning = self.watch.update(step, scalars)
            if warning is not None:
                log.warning(warning)
        if self.bar is not None:
            self.bar.update(1)
            extra = {} if self.eff_dim is None else {"eff_dim": f"{self.eff_dim:.1f}"}
            self.bar.set_postfix(
                loss=f"{scalars['loss']:.4f}",
                lr=f"{scalars['lr']:.2e}",
                clips_s=f"{scalars['clips_per_s']:.1f}",
                wait=f"{scalars['data_wait']:.0%}",
                **extra,
                refresh=False,
            )
        if step % self.cfg.every_steps and not monitored and "probe_top1" not in scalars:
            return
        if self.jsonl is not None:
            clean = {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in scalars.items()
            }
            self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
            self.jsonl.flush()
        if self.tb is not None:
            for key, value in scalars.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        for handle in (self.jsonl, self.tb, self.bar):
            if handle is not None:
                handle.close()
