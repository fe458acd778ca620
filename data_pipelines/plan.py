"""The order in which rank r reads the samples of epoch e: a pure function of (seed, epoch, rank).

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
4. Batches take the next samples of that order until they hold V that load (a sample that fails is
   skipped and counted once), so a batch is a range of positions and the next batch starts where it
   ended; `dataset.ClipDataset` finds the ends. The plan fixes only the order: which samples fail is known
   once they are decoded.

The epoch has `num_batches` batches if no sample fails: floor(R / V) with drop_last=True, ceil(R / V)
with drop_last=False (whose last batch is the shorter remainder). Positions past R wrap around (repeats,
for several ranks, whose batch counts must stay equal). The rank range itself is padded by wrapping around
when N is not divisible by the world size with drop_last=False (those few samples are read by two ranks).
"""

from __future__ import annotations

import math

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
    """One epoch's sample order for one rank, looked up by position."""

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

    def sample(self, position: int) -> tuple[Unit, SampleEntry]:
        """The unit and sample at a position of this rank's order (positions past R wrap around)."""
        order = self.rank_order
        return self.lookup(int(order[position % len(order)]))
