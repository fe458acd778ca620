"""Run logging: a JSONL line of scalars per logged step, TensorBoard events, and a tqdm progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vjepa.config import LogConfig


class RunLogger:
    """Only rank 0 writes; other ranks get a logger that does nothing."""

    def __init__(self, run_dir: Path, cfg: LogConfig, *, total_steps: int, start_step: int, enabled: bool):
        self.cfg, self.enabled = cfg, enabled
        self.jsonl = self.tb = self.bar = None
        if not enabled:
            return
        if cfg.jsonl:
            self.jsonl = (run_dir / "log.jsonl").open("a")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{scalars['loss']:.4f}",
                lr=f"{scalars['lr']:.2e}",
                clips_s=f"{scalars['clips_per_s']:.1f}",
                wait=f"{scalars['data_wait']:.0%}",
                refresh=False,
            )
        if step % self.cfg.every_steps:
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
