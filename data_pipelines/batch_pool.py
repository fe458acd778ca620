"""Reused shared-memory buffers for the clips of the batches that DataLoader workers build.

Without a pool, each batch a worker builds goes into a new shared-memory segment:
- the worker creates the segment and faults in (zeroes) every page of it;
- the main process receives its file descriptor over a socket and maps it;
- the main process unmaps and frees it once the batch is dropped.
Through a real DataLoader worker on the 2-core development VM (`benchmarks/batch_transport.py`, two runs),
that cost 8.8-10.0 ms of worker CPU and 1.7-2.1 ms of main-process CPU per batch of 8 clips of 16 x 112 x 112;
with a reused slot, 1.2 ms and 0.6-0.7 ms. For 24 clips of 16 x 224 x 224 (55 MiB): 85-89 ms against 14 ms
in the worker.

A `BatchPool` holds `slots_per_worker` buffers of `slot_bytes` for every worker. The main process creates
them before the workers fork, so every worker already maps them. Their pages are allocated when first
written. Worker w writes a batch's clips into a free slot of its own and sends only a `SlotRef` per tensor
(slot, offset, shape, strides). The main process rebuilds the tensors over its own mapping of the slot.

When a slot is free again. The slot is released when the last tensor over it dies in the main process: a
finalizer on the array that owns the tensors' storage. Yielding the batch does not release it, so a batch
the caller keeps is never overwritten. A worker that finds none of its slots free, or a batch larger than
a slot, sends that batch through a new segment as before.

Flags: one shared int8 per slot, 0 free and 1 taken. Only worker w sets 0 -> 1 on its own slots, and only
the main process sets 1 -> 0, after the batch's last reader returned. At the start of each iteration, when
no worker is alive, the main process frees every slot it holds no batch in. That returns the slots of
batches that were built but never received, as after an early break.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

__all__ = ["BatchPool", "Slot", "SlotRef"]


@dataclass(frozen=True)
class SlotRef:
    """A uint8 tensor in slot `slot` of the pool, `offset` elements in: what travels instead of it."""

    slot: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class Slot:
    """A worker's hold on one slot while it builds a batch: hands out consecutive pieces of the buffer."""

    def __init__(self, pool: BatchPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.used = 0
        self.parts: list[tuple[torch.Tensor, SlotRef]] = []

    def tensor(self, shape: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor | None:
        """A uint8 tensor of `shape` and (dense) `stride` in the slot's free space; None if it does not fit."""
        numel = math.prod(shape)
        if self.used + numel > self.pool.slot_bytes:
            return None
        out = self.pool.buffers[self.index].as_strided(shape, stride, self.used)
        self.parts.append((out, SlotRef(self.index, self.used, tuple(shape), tuple(stride))))
        self.used += numel
        return out

    def ref(self, t: torch.Tensor) -> SlotRef | None:
        """The SlotRef of `t` if this slot handed it out."""
        return next((ref for part, ref in self.parts if part is t), None)

    def release_if_unused(self) -> None:
        """Frees the slot when the batch put nothing in it (it then never reaches the main process)."""
        if not self.parts:
            self.pool.flags[self.index] = 0


class BatchPool:
    """`workers` x `slots_per_worker` shared buffers of `slot_bytes`; see the module docstring."""

    def __init__(self, workers: int, slot_bytes: int, slots_per_worker: int = 5) -> None:
        if workers < 1 or slot_bytes < 1 or slots_per_worker < 1:
            raise ValueError(f"BatchPool({workers}, {slot_bytes}, {slots_per_worker}): all must be >= 1")
        self.workers = workers
        self.slot_bytes = slot_bytes
        self.slots_per_worker = slots_per_worker
        # `_new_shared` maps a new segment without touching its pages (share_memory_() would copy into it)
        self.buffers = [
            torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(slot_bytes))
            for _ in range(workers * slots_per_worker)
        ]
        self.flags = torch.zeros(len(self.buffers), dtype=torch.int8)
        self.flags.share_memory_()
        self.in_use = False  # an iteration's workers hold it (a second live iterator goes without)
        self._held: dict[int, int] = {}  # main side: slot -> batches over it not yet released
        self.received = 0  # main side: batches whose clips came through a slot

    # worker side

    def claim(self, worker: int) -> Slot | None:
        """A free slot of worker `worker`, now taken; None when all of them are taken."""
        first = worker * self.slots_per_worker
        for index in range(first, first + self.slots_per_worker):
            if int(self.flags[index]) == 0:
                self.flags[index] = 1
                return Slot(self, index)
        return None

    # main side

    def take(self) -> BatchPool | None:
        """The pool for an iteration that is about to start its workers, with the slots of batches built but
        never received (an earlier iteration's, stopped early) free again; None while another iteration's
        workers hold it (that one then goes without)."""
        if self.in_use:
            return None
        for index in range(len(self.buffers)):
            if index not in self._held:
                self.flags[index] = 0
        self.in_use = True
        return self

    def put_back(self) -> None:
        """The iteration that took the pool has stopped its workers."""
        self.in_use = False

    def lease(self, index: int) -> torch.Tensor:
        """Slot `index` as a 1-D uint8 tensor; the slot is freed once that tensor's storage is released (every
        view of it gone)."""
        if not 0 <= index < len(self.buffers):
            raise ValueError(f"a batch names slot {index}; the pool has {len(self.buffers)}")
        owner = self.buffers[index].numpy()  # a new array object over the slot each call: the storage owns it
        weakref.finalize(owner, self._release, index)
        self._held[index] = self._held.get(index, 0) + 1
        self.received += 1
        return torch.from_numpy(owner)

    def held(self) -> int:
        """Slots that batches in the main process still use."""
        return len(self._held)

    def _release(self, index: int) -> None:
        count = self._held.pop(index, 0) - 1
        if count > 0:
            self._held[index] = count
        else:
            self.flags[index] = 0
