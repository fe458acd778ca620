"""The loss-spike guard (`train.spike_guard`): a finite loss far above the recent ones is not trained on.

After `warmup` applied steps, a step whose loss exceeds mean + `std_factor` x std of the last `window`
applied steps' losses is skipped on every rank, exactly like a non-finite one: it counts towards
`train.max_bad_steps` (consecutive skipped steps) and the run stops once `max_total` spikes have been skipped
in all. Only applied steps enter the window, so a spike never raises the bar for the next one. The window
and the count are checkpointed with the loop (a resumed run decides exactly as an uninterrupted one).

Each rank judges its own loss against its own window; the trainer's all-rank check then skips the step
everywhere if any rank saw a spike.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from vjepa.config import SpikeGuardConfig


@dataclass(frozen=True)
class SpikeLimit:
    """The bar of one step: mean + factor x std of the last `count` applied losses."""

    mean: float
    std: float
    factor: float
    count: int

    @property
    def value(self) -> float:
        return self.mean + self.factor * self.std

    def describe(self, loss: float) -> str:
        return (
            f"loss {loss:.4g} above the trailing mean {self.mean:.4g} + {self.factor:g} x std {self.std:.3g}"
            f" = {self.value:.4g} of the last {self.count} applied steps (train.spike_guard)"
        )


class SpikeGuard:
    def __init__(self, cfg: SpikeGuardConfig) -> None:
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.window)  # the last applied steps' losses
        self.skipped = 0  # spikes skipped over the whole run

    def limit(self) -> SpikeLimit | None:
        """This step's bar, or None while the guard is off or still warming up."""
        if self.cfg.std_factor <= 0 or len(self.losses) < self.cfg.warmup:
            return None
        mean = statistics.fmean(self.losses)
        return SpikeLimit(mean, statistics.pstdev(self.losses, mean), self.cfg.std_factor, len(self.losses))

    def record(self, loss: float, *, applied: bool, spike: bool) -> None:
        """A step's outcome: an applied loss enters the window; `spike`: skipped as a spike (on any rank, so
        every rank counts the same steps and stops together)."""
        if applied:
            self.losses.append(loss)
        self.skipped += spike

    def exhausted(self) -> bool:
        """True once `max_total` spikes have been skipped (never with max_total=0)."""
        return self.cfg.max_total > 0 and self.skipped >= self.cfg.max_total

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.losses = deque((float(x) for x in state["losses"]), maxlen=self.cfg.window)
        self.skipped = int(state["skipped"])
