"""A one-line console progress bar without dependencies: label, done/total, rate, ETA and a few fields,
rewritten in place at most every `min_interval` seconds. It draws only on a terminal unless forced, so logs
and captured output stay clean; `enabled=False` turns it off entirely."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """7 -> '7s', 125 -> '2m05s', 3725 -> '1h02m'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _field(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """`update(n, **fields)` after each unit of work; `close()` (or leaving a `with` block) ends the line.

    stream None means sys.stderr at construction time (so a test's captured stderr is honoured)."""

    def __init__(
        self,
        total: int,
        *,
        label: str,
        unit: str,
        stream: TextIO | None = None,
        enabled: bool = True,
        force: bool = False,
        min_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.label, self.unit = max(0, int(total)), label, unit
        self.stream = sys.stderr if stream is None else stream
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.active = enabled and (force or is_tty)
        self.min_interval, self.clock = min_interval, clock
        self.done, self.fields = 0, {}
        self.start = self.clock()
        self.last_draw = float("-inf")
        self.width = 0  # length of the last line drawn, to blank out a longer predecessor
        self.drawn = False

    def update(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        now = self.clock()
        if self.active and (now - self.last_draw >= self.min_interval or self.done >= self.total):
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The status text as it would be drawn now (no carriage return)."""
        elapsed = (self.clock() if now is None else now) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label} {self.done}/{self.total} {self.unit}", f"{rate:.3g} {self.unit}/s"]
        if 0 < self.done < self.total and rate > 0:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        parts += [f"{k}={_field(v)}" for k, v in self.fields.items()]
        return " | ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        self.stream.write("\r" + text + " " * max(0, self.width - len(text)))
        self.stream.flush()
        self.width, self.last_draw, self.drawn = len(text), now, True

    def close(self) -> None:
        """Draws the final state and ends the line (only if anything was drawn or it is active)."""
        if self.active:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()
            self.active = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
