"""The worker side of the loader: an IterableDataset that builds whole batches (read, decode, crop, masks).

Shape legend: B clips per batch (V videos x C clips each), T frames, S crop pixels, K decoded frames.

Which batches a worker builds: the rank's stream of positions (epoch, batch) from `start` on, every W-th
one for worker w of W, which is the order in which DataLoader collects from its workers. What a batch holds
is `plan.EpochPlan`'s business: the samples of its block that load, so it depends only on the position and
any worker (or a resumed loader) builds the same batch. Its samples are decoded one sample ahead on the
decoder's helper thread, so decoding the next video overlaps cropping this one. A failed sample is skipped
and counted in its block's `SkipStats`, never retried or counted by another block. A block whose samples
all fail yields no batch with one rank (`None`, with its counts); with several ranks it yields one repeated
sample, the first loadable one after it, so that every rank still yields the same number of batches.

Randomness: each sample's generator is seeded from (seed, rank, epoch, batch, k), k the sample's place in
its block (V + i for the i-th sample tried as a repeat), not the worker, so batches do not depend on the
worker count; masks come from `mask_generator(B, worker=0, step=step)`, the step being unique per rank.
No global RNG is touched.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_pipelines.bad_samples import BadSampleError, SkipStats, TooManyBadSamplesError
from data_pipelines.batch import MaskFn, VideoBatch
from data_pipelines.config import DataConfig
from data_pipelines.decode import DecodedVideo, IndexPicker, VideoDecoder
from data_pipelines.plan import EpochPlan
from data_pipelines.sampling import clip_indices
from data_pipelines.sources import SampleEntry, SampleReader, Source, Unit
from data_pipelines.transforms import augment_clip

__all__ = ["BatchInfo", "ClipDataset", "MaskFn", "Position"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Position:
    """Where a rank's data stream stands: batch `batch` of epoch `epoch` is next; `step` blocks done (the
    batches delivered, plus any block whose samples all failed)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class BatchInfo:
    """Travels with each batch from the worker: its position and the samples it tried and skipped."""

    position: Position
    skips: SkipStats = field(default_factory=SkipStats)


@dataclass
class _Fetch:
    """One sample on its way: bytes read, frames decoding on the helper thread (or why not)."""

    unit: Unit
    entry: SampleEntry
    rng: np.random.Generator
    label: int = -1
    wait: Callable[[], DecodedVideo] | None = None  # -> frames [C, T, H, W, 3] at clip indices [C, T]
    error: str = ""  # a message, not the exception: a stored exception would hold this object in a cycle


def one_ahead(items: Iterator[T]) -> Iterator[T]:
    """Yields item n only once item n + 1 exists: producing an item starts its work (a decode), which then
    overlaps the consumer's work on item n."""
    items = iter(items)
    previous = next(items, None)
    for item in items:
        yield previous  # type: ignore[misc]
        previous = item
    if previous is not None:
        yield previous


def _stack(clips: list[torch.Tensor]) -> torch.Tensor:
    """Clips [3, T, S, S] -> [B, 3, T, S, S]; in a worker, straight into shared memory so that sending the
    batch to the main process copies nothing more (what DataLoader's default_collate does)."""
    out = None
    if get_worker_info() is not None:
        first = clips[0]
        storage = first._typed_storage()._new_shared(len(clips) * first.numel(), device=first.device)
        out = first.new(storage).resize_(len(clips), *first.shape)
    return torch.stack(clips, out=out)


class ClipDataset(IterableDataset):
    """Yields (VideoBatch, BatchInfo) for the stream starting at `self.start`, this worker's share (the batch
    is None for a block whose samples all failed, with one rank)."""

    def __init__(
        self,
        sources: list[Source],
        cfg: DataConfig,
        *,
        mask_generator: MaskFn | None,
        seed: int,
        rank: int,
        world_size: int,
    ) -> None:
        self.sources, self.cfg = sources, cfg
        self.mask_generator = mask_generator
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start = Position()
        self._plans: dict[int, EpochPlan] = {}

    def plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            if len(self._plans) >= 2:
                self._plans.pop(min(self._plans))
            c = self.cfg
            self._plans[epoch] = EpochPlan(
                self.sources,
                epoch=epoch,
                seed=self.seed,
                rank=self.rank,
                world_size=self.world_size,
                videos_per_batch=c.batch_size // c.num_clips,
                shuffle=c.shuffle,
                shuffle_buffer=c.shuffle_buffer,
                drop_last=c.drop_last,
            )
        return self._plans[epoch]

    def stream(self) -> Iterator[Position]:
        """Positions from `start` on: to the end of its epoch, or forever when `resampled`."""
        epoch, batch, step = self.start.epoch, self.start.batch, self.start.step
        while True:
            while batch < self.plan(epoch).num_batches:
                yield Position(epoch, batch, step)
                batch, step = batch + 1, step + 1
            if not self.cfg.resampled:
                return
            epoch, batch = epoch + 1, 0

    def __iter__(self) -> Iterator[tuple[VideoBatch | None, BatchInfo]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = SampleReader(timeout_s=self.cfg.decode_timeout_s)
        decoder = VideoDecoder(self.cfg.decoder, timeout_s=self.cfg.decode_timeout_s)
        local = SkipStats()  # this worker's tries, for an early stop before the main process sees them
        mine, ahead = itertools.tee(p for i, p in enumerate(self.stream()) if i % workers == worker)
        fetches = one_ahead(self._fetch(p, k, u, e, reader, decoder) for p, k, u, e in self._planned(ahead))
        try:
            for position in mine:
                batch, skips = self._make_batch(position, fetches, reader, decoder)
                local.merge(skips)
                local.check(self.cfg.max_skip_fraction, self.cfg.skip_check_min_samples)
                yield batch, BatchInfo(position, skips)
        finally:
            reader.close()

    def _planned(self, positions: Iterator[Position]) -> Iterator[tuple[Position, int, Unit, SampleEntry]]:
        """The planned samples of each position's block in turn."""
        for position in positions:
            for k, (unit, entry) in enumerate(self.plan(position.epoch).block(position.batch)):
                yield position, k, unit, entry

    def _fetch(
        self,
        position: Position,
        k: int,
        unit: Unit,
        entry: SampleEntry,
        reader: SampleReader,
        decoder: VideoDecoder,
    ) -> _Fetch:
        """Reads the sample's bytes and queues its decode."""
        rng = np.random.default_rng([self.seed, self.rank, position.epoch, position.batch, k])
        fetch = _Fetch(unit, entry, rng)
        try:
            raw = reader.read(unit, entry)
            fetch.label = raw.label
            fetch.wait = decoder.submit(raw.data, self._picker(rng))
        except BadSampleError as err:
            fetch.error = str(err)
        return fetch

    def _picker(self, rng: np.random.Generator) -> IndexPicker:
        c = self.cfg

        def pick(num_frames: int, video_fps: float) -> np.ndarray:
            return clip_indices(
                num_frames,
                video_fps,
                frames=c.frames_per_clip,
                frame_step=c.frame_step,
                fps=c.fps,
                num_clips=c.num_clips,
                pad=c.pad_short,
                rng=rng,
            )  # [C, T]

        return pick

    def _clips(self, fetch: _Fetch) -> list[torch.Tensor]:
        """The sample's C augmented clips [3, T, S, S] uint8; BadSampleError if it cannot be used."""
        if fetch.wait is None:
            raise BadSampleError(fetch.error)
        clips = fetch.wait().frames  # [C, T, H, W, 3] uint8
        c = self.cfg
        # drawn after the decode: `pick` draws the clip starts from the same generator first
        generator = torch.Generator().manual_seed(int(fetch.rng.integers(2**62)))
        return [
            augment_clip(
                frames,
                size=c.crop_size,
                scale=c.crop_scale,
                aspect=c.crop_aspect,
                hflip=c.hflip,
                generator=generator,
            )
            for frames in clips
        ]

    def _make_batch(
        self, position: Position, fetches: Iterator[_Fetch], reader: SampleReader, decoder: VideoDecoder
    ) -> tuple[VideoBatch | None, SkipStats]:
        """Batch `position` from the loadable samples among its block's next fetches (None: all failed)."""
        plan = self.plan(position.epoch)
        clips: list[torch.Tensor] = []  # [3, T, S, S] each
        labels: list[int] = []
        keys: list[str] = []
        skips = SkipStats()
        for fetch in itertools.islice(fetches, plan.block_size(position.batch)):
            try:
                sample_clips = self._clips(fetch)
            except BadSampleError as err:
                log.warning("skipping sample %s (shard %s): %s", fetch.entry.key, fetch.unit.shard, err)
                skips.record(fetch.unit.shard, fetch.entry.key)
                continue
            skips.record(fetch.unit.shard)
            clips.extend(sample_clips)
            labels.extend([fetch.label] * len(sample_clips))
            keys.extend([fetch.entry.key] * len(sample_clips))
        if not keys:
            if self.world_size == 1:
                return None, skips
            fetch, clips = self._repeat(position, reader, decoder)  # ranks' batch counts must stay equal
            labels, keys = [fetch.label] * len(clips), [fetch.entry.key] * len(clips)
        masks = (
            []
            if self.mask_generator is None
            else self.mask_generator(len(keys), worker=0, step=position.step)
        )
        batch = VideoBatch(
            clips=_stack(clips),  # [B, 3, T, S, S] uint8
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=masks,
            keys=keys,
        )
        return batch, skips

    def _repeat(
        self, position: Position, reader: SampleReader, decoder: VideoDecoder
    ) -> tuple[_Fetch, list[torch.Tensor]]:
        """The first loadable sample after a block whose samples all failed, and its clips. The samples
        tried here belong to other blocks, which count them: nothing is recorded."""
        plan = self.plan(position.epoch)
        v = plan.videos_per_batch
        for k, (unit, entry) in enumerate(plan.after(position.batch), start=v):
            fetch = self._fetch(position, k, unit, entry, reader, decoder)
            try:
                clips = self._clips(fetch)
            except BadSampleError:
                continue
            log.warning(
                "epoch %d batch %d: all %d samples failed; repeating sample %s so that every rank yields "
                "the same number of batches",
                position.epoch,
                position.batch,
                plan.block_size(position.batch),
                entry.key,
            )
            return fetch, clips
        raise TooManyBadSamplesError(
            f"epoch {position.epoch} batch {position.batch}: none of rank {self.rank}'s "
            f"{plan.rank_samples} samples loads"
        )
