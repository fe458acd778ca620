"""The batch that travels from the data-loader workers to the training step.

Shape legend: B batch, C channels, T frames, H/W pixels, K tokens kept per sample (padded to the batch
maximum), N tokens in the full grid (Tp * Hp * Wp, time-major: index = t * Hp * Wp + h * Wp + w).

Variable-length token sets are never truncated to the batch minimum: every sample keeps its own context
and target sets; shorter rows are padded (with index 0) and a boolean `*_valid` tensor says which entries
are real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import numpy as np
import torch

from data_pipelines.batch_pool import BatchPool, Slot, SlotRef

__all__ = [
    "MaskBatch",
    "MaskFn",
    "MixedBatch",
    "VideoBatch",
    "collate_clips",
    "for_transport",
    "from_transport",
    "pad_index_lists",
]


@dataclass
class MaskBatch:
    """One mask configuration's context/target split for a whole batch (padded index sets)."""

    context_idx: torch.Tensor  # [B, Kc] int64 token indices into the N-token grid
    context_valid: torch.Tensor  # [B, Kc] bool, False on padding
    target_idx: torch.Tensor  # [B, Kt] int64
    target_valid: torch.Tensor  # [B, Kt] bool

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskBatch:
        return MaskBatch(
            *(
                t.to(device, non_blocking=non_blocking)
                for t in (self.context_idx, self.context_valid, self.target_idx, self.target_valid)
            )
        )

    @property
    def batch_size(self) -> int:
        return self.context_idx.shape[0]

    @staticmethod
    def from_lists(context: list[torch.Tensor], target: list[torch.Tensor]) -> MaskBatch:
        """Pads per-sample index lists (each a 1-D int64 tensor) into a MaskBatch."""
        ctx_idx, ctx_valid = pad_index_lists(context)
        tgt_idx, tgt_valid = pad_index_lists(target)
        return MaskBatch(ctx_idx, ctx_valid, tgt_idx, tgt_valid)

    def sample(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The i-th sample's (context, target) index tensors without padding."""
        return self.context_idx[i][self.context_valid[i]], self.target_idx[i][self.target_valid[i]]


# mask_generator(batch_size, *, worker: int, step: int), and `frames=T` in runs of several clip lengths
MaskFn = Callable[..., list[MaskBatch]]


def pad_index_lists(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks 1-D index tensors of different lengths into ([B, Kmax] int64, [B, Kmax] bool)."""
    if not rows:
        raise ValueError("pad_index_lists needs at least one row")
    k_max = max(int(r.numel()) for r in rows)
    idx = torch.zeros(len(rows), k_max, dtype=torch.int64)
    valid = torch.zeros(len(rows), k_max, dtype=torch.bool)
    for i, r in enumerate(rows):
        idx[i, : r.numel()] = r
        valid[i, : r.numel()] = True
    return idx, valid


@dataclass
class VideoBatch:
    """Clips as uint8 (normalised on the training device), labels, and one MaskBatch per mask config."""

    clips: torch.Tensor  # [B, C, T, H, W] uint8
    labels: torch.Tensor  # [B] int64, -1 where a sample has no label
    masks: list[MaskBatch] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # sample keys ("shard/key"), for logs and bad-data reports

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VideoBatch:
        return VideoBatch(
            clips=self.clips.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            masks=[m.to(device, non_blocking=non_blocking) for m in self.masks],
            keys=list(self.keys),
        )

    @property
    def num_clips(self) -> int:
        return self.clips.shape[0]

    def groups(self) -> list[VideoBatch]:
        """The batch's groups of one clip length each: this batch itself."""
        return [self]


@dataclass
class MixedBatch:
    """A batch of several clip lengths (a run whose sources sample different lengths, images among them):
    one VideoBatch per length present, longest first, each with its own masks drawn for its token grid."""

    parts: list[VideoBatch]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MixedBatch:
        return MixedBatch([p.to(device, non_blocking=non_blocking) for p in self.parts])

    @property
    def num_clips(self) -> int:
        return sum(p.num_clips for p in self.parts)

    @property
    def keys(self) -> list[str]:
        return [k for p in self.parts for k in p.keys]

    @property
    def labels(self) -> torch.Tensor:
        return torch.cat([p.labels for p in self.parts])

    def groups(self) -> list[VideoBatch]:
        return list(self.parts)


def collate_clips(
    clips: list[torch.Tensor],
    labels: list[int],
    keys: list[str],
    *,
    mask_generator: MaskFn | None,
    step: int,
    mixed: bool,
    stack: Callable[[list[torch.Tensor]], torch.Tensor] = torch.stack,
) -> VideoBatch | MixedBatch:
    """Clips [3, T, S, S] uint8 with their labels and keys -> one VideoBatch (masks for B clips at `step`),
    or with `mixed` a MixedBatch of one group per clip length T (longest first; masks drawn per length with
    `frames=T`, so every length has its own draw)."""

    def group(rows: list[int], **frames: int) -> VideoBatch:
        masks = [] if mask_generator is None else mask_generator(len(rows), worker=0, step=step, **frames)
        return VideoBatch(
            clips=stack([clips[i] for i in rows]),  # [B, 3, T, S, S] uint8
            labels=torch.tensor([labels[i] for i in rows], dtype=torch.int64),
            masks=masks,
            keys=[keys[i] for i in rows],
        )

    if not mixed:
        return group(list(range(len(clips))))
    lengths = sorted({int(c.shape[1]) for c in clips}, reverse=True)
    return MixedBatch([group([i for i, c in enumerate(clips) if c.shape[1] == t], frames=t) for t in lengths])


# A batch goes from a DataLoader worker to the main process pickled, and torch sends every tensor through a
# shared-memory segment and file descriptor of its own (one socket round trip to the worker each). The labels
# and masks of a batch are 9 small tensors with the two default masks. Through a DataLoader worker on the
# 2-core development VM, a batch of one [8, 3, 16, 112, 112] uint8 tensor and 9 [8, 200] int64 tensors took
# 12-13 ms; with the 9 as numpy arrays (pickled in the message) 6-7 ms, as the big tensor alone did. The
# clips go through a slot of the loader's `BatchPool` where one is free (a `SlotRef` in the message), else
# as one new shared-memory tensor (`_stack` in dataset.py writes them straight there).
INLINE_BYTES = 1 << 16


def _map_leaves(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """`obj` (a batch dataclass, list or leaf) with `fn` applied to every tensor, array or SlotRef leaf."""
    if isinstance(obj, (torch.Tensor, np.ndarray, SlotRef)):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_leaves(x, fn) for x in obj]
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: _map_leaves(getattr(obj, f.name), fn) for f in fields(obj)})
    return obj


def for_transport(batch: VideoBatch | MixedBatch, slot: Slot | None = None) -> VideoBatch | MixedBatch:
    """Worker side: the tensors that `slot` holds as their SlotRef, the others of at most INLINE_BYTES as
    numpy arrays, sent inside the pickled message."""

    def inline(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return t
        if slot is not None and (ref := slot.ref(t)) is not None:
            return ref
        return t.numpy() if t.numel() * t.element_size() <= INLINE_BYTES else t

    return _map_leaves(batch, inline)


def from_transport(batch: VideoBatch | MixedBatch, pool: BatchPool | None = None) -> VideoBatch | MixedBatch:
    """Main side: the arrays of `for_transport` back as tensors, and its SlotRefs as tensors over `pool`'s
    slots (a batch that never left is unchanged)."""
    leased: dict[int, torch.Tensor] = {}  # one lease per slot: the batch's tensors in it share the storage

    def back(t: Any) -> Any:
        if isinstance(t, np.ndarray):
            return torch.from_numpy(t)
        if isinstance(t, SlotRef):
            if pool is None:
                raise RuntimeError(
                    f"a batch refers to slot {t.slot} of a batch pool, but the loader has none"
                )
            if t.slot not in leased:
                leased[t.slot] = pool.lease(t.slot)
            return leased[t.slot].as_strided(t.shape, t.stride, t.offset)
        return t

    return _map_leaves(batch, back)
