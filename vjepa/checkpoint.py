"""The run folder and its checkpoints: every file name lives here, and the trainer state is saved and
restored here, next to the layout it is written in. No other module spells a checkpoint file name.

    <run>/config.yaml              the resolved config of the run
    <run>/env.json                 versions, launcher, world size
    <run>/init_model.pt            the run's initial weights (the random-weights baseline of a probe)
    <run>/checkpoints/latest       the name of the newest complete step folder (replaced atomically)
    <run>/checkpoints/step_00000100/
        COMPLETE                   written last: a folder without it is never resumed from
        config.yaml
        trainer_rank{r}.pt         step, data position and RNG states of rank r
        model.pt                   single process / DDP: encoder, predictor, target_encoder, opt
        deepspeed/                 DeepSpeed ZeRO: its own sharded files (the "tag" folder)
        target.pt                  DeepSpeed stages 0-2: the replicated EMA target
        target_rank{r}.pt          DeepSpeed ZeRO-3: rank r's fp32 shard of the EMA target
        ac_model.pt                `vjepa train-ac`: the action-conditioned predictor, its optimizer and shapes

A step folder is written as `step_XXXXXXXX.tmp/` and renamed when complete, so a crash during a save never
leaves a damaged folder that looks complete, and `latest` never points at one.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vjepa.models.weights import DamagedFile, read_torch_file
from vjepa.utils import atomic_write

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
INIT_FILE = "init_model.pt"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MARKER = "COMPLETE"
STEP_PREFIX = "step_"
TRAINER_FILE = "trainer_rank{rank}.pt"
MODEL_FILE = "model.pt"
DEEPSPEED_TAG = "deepspeed"
TARGET_FILE = "target.pt"
TARGET_SHARD_FILE = "target_rank{rank}.pt"
AC_MODEL_FILE = "ac_model.pt"
LOW_DISK_BYTES = 4 << 20  # a save that fails with less free space than this failed for want of space


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through `vjepa.utils.atomic_write`: a reader never sees half a file."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (`train.out_dir`)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def env(self) -> Path:
        return self.root / ENV_FILE

    @property
    def init_weights(self) -> Path:
        return self.root / INIT_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR


def is_checkpoint(folder: Path) -> bool:
    """True for a folder holding model weights in one of our layouts (complete or not)."""
    return (folder / MODEL_FILE).is_file() or (folder / DEEPSPEED_TAG).is_dir()


def resolve_checkpoint(path: str | Path, *, what: str = "--checkpoint") -> Path:
    """The checkpoint folder for a step folder, a `checkpoints/` folder or a run folder (newest complete)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{what}: no such folder {path}")
    if is_checkpoint(path):
        return path
    for root in (path, path / CHECKPOINTS_DIR):
        latest = CheckpointManager(root).latest() if root.is_dir() else None
        if latest is not None:
            return latest
    raise ValueError(
        f"{what}: {path} holds no checkpoint ({MODEL_FILE} or {DEEPSPEED_TAG}/) nor a complete step folder"
    )


class CheckpointManager:
    """Saves and finds step folders under `root` (`<run>/checkpoints`), keeping the newest `keep_last`.
    `barrier` synchronises ranks in distributed runs."""

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
        return f"{STEP_PREFIX}{step:08d}"

    def step_dir(self, step: int) -> Path:
        return self.root / self.step_dir_name(step)

    def complete(self) -> list[Path]:
        """Every complete checkpoint folder, newest first."""
        folders = [
            p for p in self.root.glob(STEP_PREFIX + "*") if (p / MARKER).is_file() and p.suffix != ".tmp"
        ]
        return sorted(folders, reverse=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        pointer = self.root / LATEST_FILE
        if pointer.is_file():
            path = self.root / pointer.read_text().strip()
            if (path / MARKER).is_file():
                return path
        complete = self.complete()
        return complete[0] if complete else None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Every rank calls this; `write(folder)` stores that rank's pieces into the temporary folder. A
        failed write (a full disk) removes the temporary folder and leaves the last complete one as it was."""
        final = self.step_dir(step)
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        try:
            write(tmp)
        except (OSError, RuntimeError) as err:
            # torch.save reports a full disk as a RuntimeError of its zip writer, so the free space decides
            full = getattr(err, "errno", None) == errno.ENOSPC or shutil.disk_usage(tmp).free < LOW_DISK_BYTES
            shutil.rmtree(tmp, ignore_errors=True)
            if not full and not isinstance(err, OSError):
                raise
            last = self.latest()
            kept = (
                f"the last complete checkpoint, {last}, is intact"
                if last
                else "no checkpoint was written yet"
            )
            reason = "no space left on device" if full else (err.strerror or str(err))
            code = errno.ENOSPC if full else err.errno
            message = f"saving the checkpoint of step {step} into {self.root} failed: {reason}; {kept}"
            raise OSError(code, message) from err
        self.barrier()
        if self.rank == 0:
            (tmp / MARKER).write_text(str(step))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            with atomic_write(self.root / LATEST_FILE) as tmp:
                tmp.write_text(final.name)
            self._prune()
        self.barrier()
        return final

    def _prune(self) -> None:
        complete = sorted(p for p in self.root.glob(STEP_PREFIX + "*") if p.suffix != ".tmp")
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(STEP_PREFIX + "*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------- trainer state


def rng_state() -> dict[str, Any]:
    """Every global RNG, as plain tensors and numbers (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(
    folder: Path, rank: int, *, step: int, data: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Rank `rank`'s step, data position, RNG states and the loop's own state (`extra`) into a step folder."""
    state = {"step": step, "data": data, "rng": rng_state(), "extra": extra or {}}
    atomic_torch_save(state, Path(folder) / TRAINER_FILE.format(rank=rank))


def load_trainer_state(folder: Path, rank: int) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Reads rank `rank`'s trainer state from a step folder and restores its RNG states;
    -> (step, data position, the loop's own state). A missing or unreadable file is a DamagedFile."""
    path = Path(folder) / TRAINER_FILE.format(rank=rank)
    state = read_torch_file(path, what=f"checkpoint {folder}")
    if not isinstance(state, dict) or not {"step", "data", "rng"} <= set(state):
        raise DamagedFile(f"checkpoint {folder}: {path.name} holds no trainer state")
    set_rng_state(state["rng"])
    return int(state["step"]), state["data"], dict(state.get("extra", {}))


def saved_world_size(folder: Path) -> int:
    """How many ranks wrote a step folder (one trainer state each)."""
    return len(list(Path(folder).glob(TRAINER_FILE.format(rank="*"))))
