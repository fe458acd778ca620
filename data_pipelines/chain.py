"""Where each batch of a loader's stream ended, shared by its DataLoader workers.

A batch takes the next samples of the rank's epoch order until it has enough that load, so where batch
i + 1 starts is known only once batch i is built, by another worker process. Each worker publishes the end
of its batch here and the worker of the next batch waits for it (meanwhile working ahead on a guess, see
`dataset.ClipDataset`). The slots are a ring in shared memory, created by the main process before it
starts the workers (inherited through fork, or passed as shared memory through spawn): slot i % RING holds
(i, epoch, batch, end) once batch i of the iteration is built, i counted from the iteration's start. A
slot is overwritten only by batch i + RING, which cannot be built before batch i + 1 has read slot i.
"""

from __future__ import annotations

import os
import time

import torch

__all__ = ["Chain", "Link"]

RING = 64
_END = -1  # in the epoch field: the stream ended after this batch
_POLL_S = (0.0002, 0.005)  # first and longest sleep between looks while waiting


Link = tuple[
    int, int, int
]  # (epoch, batch j in the epoch, end: the epoch-order position after its last sample)


class Chain:
    """The batch ends of one iteration over a loader's stream."""

    def __init__(self) -> None:
        self.slots = torch.full((RING, 4), -2, dtype=torch.int64)  # [RING, (i, epoch, batch, end)]
        self.slots.share_memory_()
        self.stopped = torch.zeros(1, dtype=torch.int64)  # set by the main process before it stops workers
        self.stopped.share_memory_()
        self._owner = os.getpid()  # the main process; workers are its children

    def publish(self, i: int, link: Link | None) -> None:
        """Batch i ended at `link` (None: the stream ended before batch i)."""
        epoch, batch, end = link if link is not None else (_END, 0, 0)
        slot = self.slots[i % RING]
        slot[1], slot[2], slot[3] = epoch, batch, end
        slot[0] = i  # last: a reader that sees the tag sees the fields written before it

    def get(self, i: int) -> Link | None | bool:
        """Where batch i ended; None if the stream ended before it; False if it is not built yet."""
        tag, epoch, batch, end = self.slots[i % RING].tolist()
        if tag != i:
            return False
        return None if epoch == _END else (epoch, batch, end)

    def latest(self, before: int) -> tuple[int, Link] | None:
        """(i, where batch i ended) for the newest published batch i < `before`, if any is in the ring."""
        tags = self.slots[:, 0].tolist()
        best = max((t for t in tags if 0 <= t < before), default=None)
        if best is None:
            return None
        got = self.get(best)
        return (best, got) if isinstance(got, tuple) else None

    def stop(self) -> None:
        """Ends every wait: the main process is shutting its workers down, and the batch a worker waits
        for may be one another worker will no longer build."""
        self.stopped[0] = 1

    def wait(self, i: int) -> Link | None:
        """Blocks until batch i is published (None: the stream ended, or `stop` was called). A worker whose
        main process died stops instead of waiting forever (DataLoader checks that between batches only)."""
        sleep, checked = _POLL_S[0], time.monotonic()
        while (got := self.get(i)) is False:
            if self.stopped[0]:
                return None
            time.sleep(sleep)
            sleep = min(2 * sleep, _POLL_S[1])
            if time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                if os.getpid() != self._owner and os.getppid() != self._owner:
                    raise SystemExit(f"loader worker {os.getpid()}: main process gone")
        return got  # type: ignore[return-value]
