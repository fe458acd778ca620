"""Which samples make batch j of epoch e on rank r: a pure function of (seed, epoch, rank, batch).

Shape legend: U units (shards or video files) in an epoch, N samples in an epoch, R samples per rank,
V videos per batch.

1. Units: every source contributes round(weight x its units) units, a seeded draw per (seed, epoch,
   source); all sources' units are then shuffled together (seed, epoch). Identical on every rank.
2. Their samples, in member order, form the epoch's sequence of N samples. Rank r takes the contiguous
   range [r R, (r + 1) R) with R = N // world_size, so all ranks get the same count and a rank reads few
   shards. Fewer shards than ranks x workers is fine: ranges split shards at sample level.
3. A shuffle buffer (seed, epoch, rank) reorders the rank's range: the same order a webdataset-style buffer
   of `shuffle_buffer` samples would give, but computed on sample references, so reads stay within a
   window of nearby shards and no sample has to be read to know the order.
4. Block j is positions [j V, (j + 1) V) of that order; batch j holds the samples of block j that load.
   A sample that fails is skipped and counted once, in its own block; it is not replaced by a sample of
   another block, because which samples fail is known only once they are decoded, and a block that
   borrowed from the next one would make that block depend on this one's decode results. So a batch's
   content depends only on its position, never on earlier batches or on which worker builds it: resume
   is exact (restart at (epoch, j) and read nothing before it), and within an epoch every sample of the
   rank's range is tried exactly once and every loadable one delivered at most once.

drop_last=True drops the rank's last R mod V positions (not tried that epoch). drop_last=False keeps them
as a shorter last block, so every loadable sample of the rank's range is delivered exactly once; the rank
range itself is padded by wrapping around when N is not divisible by the world size (those few samples
are then read by two ranks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from data_pipelines.sources import SampleEntry, Source, Unit

__all__ = ["EpochPlan", "buffered_shuffle"]

_SALT_SOURCE, _SALT_MIX, _SALT_BUFFER = 11, 12, 13


def buffered_shuffle(items: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of `size` gives: fill it, then emit a random slot and refill it."""
    if size <= 1 or len(items) <= 1:
        return items.copy()
    out = np.empty_like(items)
    buffer = list(items[:size])
    slots = (rng.random(len(items)) * len(buffer)).astype(np.int64)
    n_out = 0
    for i in range(len(buffer), len(items)):
        j = slots[i]
        out[n_out] = buffer[j]
        buffer[j] = items[i]
        n_out += 1
    out[n_out:] = np.asarray(buffer, dtype=items.dtype)[rng.permutation(len(buffer))]
    return out


class EpochPlan:
    """One epoch's sample order for one rank; block contents are looked up by batch index."""

    def __init__(
        self,
        sources: list[Source],
        *,
        epoch: int,
        seed: int,
        rank: int,
        world_size: int,
        videos_per_batch: int,
        shuffle: bool,
        shuffle_buffer: int,
        drop_last: bool,
    ) -> None:
        self.units: list[Unit] = [u for s in sources for u in s.units]
        self.epoch, self.seed, self.rank = epoch, seed, rank
        self.videos_per_batch = videos_per_batch
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.order_u = self._epoch_units(sources)  # [U] unit ids in epoch order
        lengths = np.array([len(self.units[u].samples) for u in self.order_u], dtype=np.int64)
        self.ends = np.cumsum(lengths)  # [U] end position of each unit in the epoch sequence
        self.num_samples = int(self.ends[-1]) if len(self.ends) else 0
        split = math.floor if drop_last else math.ceil
        self.rank_samples = split(self.num_samples / world_size)  # R
        self.num_batches = split(self.rank_samples / videos_per_batch)
        self._rank_order: np.ndarray | None = None  # [R] epoch positions, built on first use

    def _epoch_units(self, sources: list[Source]) -> np.ndarray:
        parts, offset = [], 0
        for s, source in enumerate(sources):
            n = len(source.units)
            count = max(1, round(source.weight * n))
            rng = np.random.default_rng([self.seed, self.epoch, s, _SALT_SOURCE])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            parts.append(offset + np.resize(order, count))
            offset += n
        units = np.concatenate(parts)
        if self.shuffle:
            units = np.random.default_rng([self.seed, self.epoch, _SALT_MIX]).permutation(units)
        return units

    @property
    def rank_order(self) -> np.ndarray:
        """[R] positions in the epoch sequence, in the order this rank reads them."""
        if self._rank_order is None:
            start = self.rank * self.rank_samples
            positions = (start + np.arange(self.rank_samples, dtype=np.int64)) % max(self.num_samples, 1)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch, self.rank, _SALT_BUFFER])
                positions = buffered_shuffle(positions, self.shuffle_buffer, rng)
            self._rank_order = positions
        return self._rank_order

    def lookup(self, position: int) -> tuple[Unit, SampleEntry]:
        """The unit and sample at an epoch-sequence position."""
        u = int(np.searchsorted(self.ends, position, side="right"))
        first = int(self.ends[u - 1]) if u else 0
        unit = self.units[int(self.order_u[u])]
        return unit, unit.samples[position - first]

    def block_size(self, batch: int) -> int:
        """V, or fewer for a drop_last=False epoch's last block."""
        return min(self.videos_per_batch, self.rank_samples - batch * self.videos_per_batch)

    def block(self, batch: int) -> list[tuple[Unit, SampleEntry]]:
        """Batch `batch`'s planned samples, in order."""
        order = self.rank_order
        first = batch * self.videos_per_batch
        return [self.lookup(int(order[first + k])) for k in range(self.block_size(batch))]

    def after(self, batch: int) -> Iterator[tuple[Unit, SampleEntry]]:
        """The rank's samples after block `batch`, wrapping around, R in all (a repeat to deliver when a
        whole block fails and the ranks' batch counts must stay equal)."""
        order = self.rank_order
        first = (batch + 1) * self.videos_per_batch
        for k in range(len(order)):
            yield self.lookup(int(order[(first + k) % len(order)]))
