"""`vjepa plan`'s settings, in a module of their own that imports neither torch nor the config machinery, so
that `vjepa --help` (which builds the command's flags from these fields) stays light."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["PlanSettings"]

PlanDevice = Literal["auto", "cpu", "cuda"]


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {message}")


@dataclass
class PlanSettings:
    """`vjepa plan`: CEM + MPC on held-out episodes of the push scene, against random actions and an
    untrained predictor. Every flag of the command maps onto one of these."""

    predictor: str = ""  # an AC run folder, its checkpoints/ folder or a step folder
    encoder: str = ""  # the frozen encoder's checkpoint; empty: the AC run's encoder.checkpoint
    out: str = ""  # report folder: report.json, energy_landscape.png, episode.png
    episodes: int = 20
    seed: int = 1_000_000  # episode i is PushEnv.reset(seed + i); must not be a training trajectory's seed
    steps: int = 12  # actions executed per episode (MPC: plan, act, observe, replan)
    horizon: int = 2  # steps planned ahead by CEM
    samples: int = 64
    elites: int = 8
    iterations: int = 3
    goal_distance: tuple[float, float] = (0.15, 0.3)  # the goal's agent offset from the start, drawn in
    tolerance: float = 0.05  # success: final agent position within this of the goal's
    grid: int = 21  # the energy landscape's points per action axis
    device: PlanDevice = "auto"

    def validate(self, prefix: str = "") -> None:
        key = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: f"--{name.replace('_', '-')}")
        _check(bool(self.predictor), key("predictor"), "required (a `vjepa train-ac` run folder)")
        _check(bool(self.out), key("out"), "required (the report folder)")
        for name in ("episodes", "steps", "horizon", "samples", "elites", "iterations"):
            _check(getattr(self, name) >= 1, key(name), f"must be >= 1, got {getattr(self, name)}")
        _check(self.elites <= self.samples, key("elites"), f"must be <= samples ({self.samples})")
        _check(self.seed >= 0, key("seed"), f"must be >= 0, got {self.seed}")
        low, high = self.goal_distance
        _check(
            0 < low <= high < 1, key("goal_distance"), f"need 0 < low <= high < 1, got {self.goal_distance}"
        )
        _check(self.tolerance > 0, key("tolerance"), f"must be > 0, got {self.tolerance}")
        _check(self.grid >= 3, key("grid"), f"must be >= 3, got {self.grid}")
        from vjepa.config import check_writable_folder

        check_writable_folder(self.out, key("out"))
