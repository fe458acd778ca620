"""Checkpoint folders written atomically and pruned to the last K.

Layout: `<run>/checkpoints/step_00000100/` holds `model.pt` (or DeepSpeed's sharded files), one
`trainer_rank{r}.pt` per rank (step, data position, RNG states) and `config.yaml`, plus a `COMPLETE`
marker. Everything is written into `step_XXXXXXXX.tmp/` first and renamed when complete; `latest` is a
small file replaced atomically afterwards. A crash during a save therefore never damages `latest`.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "COMPLETE"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Saves and finds checkpoints under `root`. `barrier` synchronises ranks in distributed runs."""

    def __init__(
        self,
        root: str | Path,
        *,
        keep_last: int = 2,
        rank: int = 0,
        barrier: Callable[[], None] = lambda: None,
    ) -> None:
        self.root, self.keep_last, self.rank, self.barrier = Path(root), keep_last, rank, barrier

    @staticmethod
    def step_dir_name(step: int) -> str:
        return f"step_{step:08d}"

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        pointer = self.root / "latest"
        if pointer.is_file():
            path = self.root / pointer.read_text().strip()
            if (path / MARKER).is_file():
                return path
        complete = sorted(
            p for p in self.root.glob("step_*") if (p / MARKER).is_file() and p.suffix != ".tmp"
        )
        return complete[-1] if complete else None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Every rank calls this; `write(folder)` stores that rank's pieces into the temporary folder."""
        tmp = self.root / (self.step_dir_name(step) + ".tmp")
        final = self.root / self.step_dir_name(step)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        write(tmp)
        self.barrier()
        if self.rank == 0:
            (tmp / MARKER).write_text(str(step))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _atomic_write_text(self.root / "latest", final.name)
            self._prune()
        self.barrier()
        return final

    def _prune(self) -> None:
        complete = sorted(p for p in self.root.glob("step_*") if p.suffix != ".tmp")
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
