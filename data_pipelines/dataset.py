"""The worker side of the loader: an IterableDataset that builds whole batches (read, decode, crop, masks).

Shape legend: B clips per batch (V videos x C clips each), T frames, S crop pixels, K decoded frames.

What a batch holds: the next samples of the rank's epoch order (`plan.EpochPlan`) from its start position
until V of them load; a sample that fails is skipped, logged and counted there, once. So batch i + 1
starts where batch i ended, which is known only once batch i is built. With one rank an epoch ends at the
end of the rank's order: a shorter last batch with data.drop_last=False, none with drop_last=True (its
samples are still tried and counted). With several ranks every epoch has `num_batches` batches, so that
all ranks yield the same number: a rank whose bad samples leave it short fills its last batches with
samples from the start of its order again (repeats, neither logged nor counted twice).

Which batches a worker builds: batches i = w, w + W, w + 2W, ... of the iteration for worker w of W,
which is the order in which DataLoader collects from its workers. Worker w learns where batch i starts
from the `chain.Chain` that the worker of batch i - 1 publishes its end to. While it waits, it works ahead
on a guess of that start (the last published end plus V per batch in between): it reads, decodes and
crops up to V samples there and keeps the crops (small), which serve its batch when the guess holds, as
it does unless bad samples moved the start. Samples are decoded one ahead on the decoder's helper thread,
so decoding the next video overlaps cropping this one.

Randomness: each sample's generator is seeded from (seed, rank, epoch, position in the rank's order), so a
sample's clips do not depend on the batch it lands in, the worker or the worker count; masks come from
`mask_generator(B, worker=0, step=step)`, the step being unique per rank. No global RNG is touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_pipelines.bad_samples import BadSampleError, SkipStats, TooManyBadSamplesError
from data_pipelines.batch import MaskFn, MixedBatch, VideoBatch, collate_clips, for_transport
from data_pipelines.batch_pool import BatchPool, Slot
from data_pipelines.chain import Chain
from data_pipelines.config import DataConfig
from data_pipelines.decode import DecodedVideo, IndexPicker, VideoDecoder
from data_pipelines.plan import EpochPlan
from data_pipelines.sampling import clip_indices
from data_pipelines.sources import SampleEntry, SampleReader, Source, Unit
from data_pipelines.transforms import augment_clip

__all__ = ["BatchInfo", "ClipDataset", "MaskFn", "Position"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[int, int]  # (epoch, position in the rank's order)


@dataclass(frozen=True)
class Position:
    """Where a rank's data stream stands: batch `batch` of epoch `epoch` is next and starts at position
    `cursor` of the rank's epoch order; `step` batches done (counting those that yielded nothing)."""

    epoch: int = 0
    batch: int = 0
    cursor: int = 0
    step: int = 0


@dataclass
class BatchInfo:
    """Travels with each batch from the worker: where it started and ended, and what it tried and skipped."""

    position: Position
    end: int  # the position after its last sample
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


@dataclass
class _Loaded:
    """A sample read, decoded and cropped: its clips [3, T, S, S] each, or why it cannot be used."""

    unit: Unit
    entry: SampleEntry
    label: int
    clips: list[torch.Tensor] | None
    error: str = ""


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


def _stack(clips: list[torch.Tensor], slot: Slot | None = None) -> torch.Tensor:
    """Clips [3, T, S, S] -> [B, 3, T, S, S] in the clips' own memory layout; in a worker, straight into
    shared memory, so that sending the batch to the main process copies nothing more: into `slot` (of the
    loader's BatchPool) where given and the batch fits, else into a new segment (what DataLoader's
    default_collate does).

    The crops are channels-last ([T, S, S, 3] in memory, as decoded): a batch in that layout is a plain copy
    of each clip (a contiguous [B, 3, T, S, S] batch is a transposing gather: 9 clips of 16 x 112 x 112 took
    7.1 ms that way against 3.25 ms, fresh memory included, on the development VM). `normalize` returns the
    float clips contiguous whatever the layout, so the model sees the same tensor."""
    first = clips[0]
    shape = (len(clips), *first.shape)
    strides = (first.numel(), *torch.empty_like(first).stride())  # the first clip's layout, made dense
    out = slot.tensor(shape, strides) if slot is not None and first.dtype == torch.uint8 else None
    if out is None and get_worker_info() is not None:
        storage = first.untyped_storage()._new_shared(len(clips) * first.numel() * first.element_size())
        out = first.new_empty(0).set_(storage, 0, shape, strides)
    elif out is None:
        out = torch.empty_strided(shape, strides, dtype=first.dtype)
    for row, clip in zip(out, clips):
        row.copy_(clip)
    return out


def batch_pool_for(cfg: DataConfig) -> BatchPool | None:
    """The pool for a loader of `cfg` (None without workers): slots that hold a whole batch of the longest
    clips."""
    if cfg.num_workers == 0:
        return None
    return BatchPool(cfg.num_workers, cfg.batch_size * 3 * max(cfg.clip_lengths()) * cfg.crop_size**2)


class _Samples:
    """One worker's samples by (epoch, position): loads them, with the next one's decode queued ahead,
    and keeps those loaded ahead of need (while waiting for a batch start) until they are asked for."""

    def __init__(self, dataset: ClipDataset, reader: SampleReader, decoder: VideoDecoder) -> None:
        self.dataset, self.reader, self.decoder = dataset, reader, decoder
        self.pending: dict[Key, _Fetch] = {}  # decoding
        self.done: dict[Key, _Loaded] = {}  # loaded ahead of need

    def get(self, key: Key, ahead: Key | None) -> _Loaded:
        """Sample `key`, queueing the decode of `ahead` first."""
        loaded = self.done.pop(key, None)
        fetch = None if loaded is not None else self.pending.pop(key, None) or self._fetch(key)
        if ahead is not None and ahead not in self.pending and ahead not in self.done:
            self.pending[ahead] = self._fetch(ahead)
        return loaded if loaded is not None else self._load(fetch)  # type: ignore[arg-type]

    def prepare(self, key: Key, ahead: Key | None) -> None:
        self.done[key] = self.get(key, ahead)

    def forget_before(self, key: Key) -> None:
        """Drops what was loaded or queued ahead for positions before `key` (another batch's samples)."""
        for store in (self.pending, self.done):
            for k in [k for k in store if k < key]:
                del store[k]

    def _fetch(self, key: Key) -> _Fetch:
        """Reads the sample's bytes and queues its decode."""
        epoch, position = key
        d = self.dataset
        unit, entry = d.plan(epoch).sample(position)
        rng = np.random.default_rng([d.seed, d.rank, epoch, position])
        fetch = _Fetch(unit, entry, rng)
        try:
            raw = self.reader.read(unit, entry)
            fetch.label = raw.label
            fetch.wait = self.decoder.submit(raw.data, d.picker(rng, unit, entry), image=entry.image)
        except BadSampleError as err:
            fetch.error = str(err)
        return fetch

    def _load(self, fetch: _Fetch) -> _Loaded:
        try:
            clips = self.dataset.clips(fetch)
        except BadSampleError as err:
            return _Loaded(fetch.unit, fetch.entry, fetch.label, None, str(err))
        return _Loaded(fetch.unit, fetch.entry, fetch.label, clips)


def clip_picker(
    cfg: DataConfig, rng: np.random.Generator, *, frames: int | None = None, fps: float | None = None
) -> IndexPicker:
    """The decoder's frame-index picker for a sample: `cfg`'s clips (of `frames` frames at `fps` when given:
    a source's own) drawn with `rng` -> [C, T] indices."""

    def pick(num_frames: int, video_fps: float) -> np.ndarray:
        return clip_indices(
            num_frames,
            video_fps,
            frames=cfg.frames_per_clip if frames is None else frames,
            frame_step=cfg.frame_step,
            fps=cfg.fps if fps is None else fps,
            num_clips=cfg.num_clips,
            pad=cfg.pad_short,
            rng=rng,
        )  # [C, T]

    return pick


def augmented_clips(
    cfg: DataConfig, wait: Callable[[], DecodedVideo] | None, error: str, rng: np.random.Generator
) -> list[torch.Tensor]:
    """A decoded sample's C augmented clips [3, T, S, S] uint8; BadSampleError(`error`) when it did not
    decode (`wait` is None) or `wait()` raises it."""
    if wait is None:
        raise BadSampleError(error)
    clips = wait().frames  # [C, T, H, W, 3] uint8
    # drawn after the decode: the picker draws the clip starts from the same generator first
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return [
        augment_clip(
            frames,
            size=cfg.crop_size,
            scale=cfg.crop_scale,
            aspect=cfg.crop_aspect,
            hflip=cfg.hflip,
            generator=generator,
        )
        for frames in clips
    ]


class ClipDataset(IterableDataset):
    """Yields (VideoBatch, BatchInfo) for the stream starting at `self.start`, this worker's share (the batch
    is None where one rank's epoch ends without a batch to deliver). `chain` is set by the loader before
    the workers start; without one, batch ends stay in the process."""

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
        self.mixed = len(cfg.clip_lengths()) > 1  # batches are MixedBatches of one group per clip length
        self.chain: Chain | None = None
        self.pool: BatchPool | None = None  # set by the loader before the workers start
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

    def after(self, position: Position, end: int) -> Position | None:
        """Where the batch after the one at `position` (which ended at `end`) starts; None when the stream
        ends there (the end of an epoch without `resampled`)."""
        plan = self.plan(position.epoch)
        if self.world_size > 1:
            over = position.batch + 1 >= plan.num_batches
        else:
            over = end >= plan.rank_samples
        if not over:
            return Position(position.epoch, position.batch + 1, end, position.step + 1)
        if not self.cfg.resampled:
            return None
        return Position(position.epoch + 1, 0, 0, position.step + 1)

    def __iter__(self) -> Iterator[tuple[VideoBatch | MixedBatch | None, BatchInfo]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        chain = self.chain if self.chain is not None else Chain()
        reader = SampleReader(timeout_s=self.cfg.decode_timeout_s)
        samples = _Samples(self, reader, VideoDecoder(self.cfg.decoder, timeout_s=self.cfg.decode_timeout_s))
        local = SkipStats()  # this worker's tries, for an early stop before the main process sees them
        try:
            for i in range(worker, 2**62, workers):
                position = self.start if i == 0 else self._start_of(i, chain, samples, workers)
                if position is None:
                    chain.publish(i, None)
                    return
                slot = self.pool.claim(worker) if self.pool is not None and info is not None else None
                batch, end, skips = self._make_batch(position, samples, workers, slot)
                chain.publish(i, (position.epoch, position.batch, end))
                local.merge(skips)
                local.check(self.cfg.max_skip_fraction, self.cfg.skip_check_min_samples)
                if info is not None:  # in a worker: clips in a pool slot, small tensors in the message
                    batch = for_transport(batch, slot)
                if slot is not None:
                    slot.release_if_unused()
                yield batch, BatchInfo(position, end, skips)
        finally:
            reader.close()

    def _start_of(self, i: int, chain: Chain, samples: _Samples, workers: int) -> Position | None:
        """Where batch i of the iteration starts, once batch i - 1 is published; meanwhile loads up to V
        samples from a guess of it."""
        guess = self._guess(i, chain)
        budget = 0
        if guess is not None:  # V samples, within the rank's order
            plan = self.plan(guess[0])
            budget = min(plan.videos_per_batch, plan.rank_samples - guess[1])
        while (link := chain.get(i - 1)) is False:
            if guess is None or budget == 0:
                link = chain.wait(i - 1)
                break
            samples.prepare(guess, (guess[0], guess[1] + 1))
            guess, budget = (guess[0], guess[1] + 1), budget - 1
        if link is None:
            return None
        epoch, batch, end = link
        return self.after(Position(epoch, batch, 0, self.start.step + i - 1), end)

    def _guess(self, i: int, chain: Chain) -> Key | None:
        """Where batch i probably starts: the newest published end plus V for each batch in between; None
        when that crosses the end of an epoch."""
        latest = chain.latest(before=i)
        if latest is None:
            position: Position | None = self.start
            first = 0
        else:
            k, (epoch, batch, end) = latest
            position = self.after(Position(epoch, batch, 0, self.start.step + k), end)
            first = k + 1
        if position is None:
            return None
        plan = self.plan(position.epoch)
        cursor = position.cursor + (i - first) * plan.videos_per_batch
        if cursor >= plan.rank_samples or position.batch + i - first >= plan.num_batches:
            return None
        return position.epoch, cursor

    def _make_batch(
        self, position: Position, samples: _Samples, workers: int, slot: Slot | None = None
    ) -> tuple[VideoBatch | MixedBatch | None, int, SkipStats]:
        """(batch, end, counts) for the batch starting at `position`; the batch is None where a rank's
        epoch ends without one to deliver."""
        plan = self.plan(position.epoch)
        v, size = plan.videos_per_batch, plan.rank_samples
        repeats = self.world_size > 1 and (self.cfg.drop_last or position.cursor >= size)
        samples.forget_before((position.epoch, position.cursor))
        chosen: list[_Loaded] = []
        skips = SkipStats()
        p, misses = position.cursor, 0
        while len(chosen) < v and (p < size or repeats or (self.world_size > 1 and not chosen)):
            last = len(chosen) == v - 1  # if it loads: then queue where this worker's next batch starts
            ahead = p + 1 + (workers - 1) * v if last else p + 1
            sample = samples.get((position.epoch, p), (position.epoch, ahead) if ahead < size else None)
            if p < size:  # (positions past the end of the order are repeats, counted where they came first)
                skips.record(sample.unit.shard, None if sample.clips is not None else sample.entry.key)
                if sample.clips is None:
                    log.warning(
                        "skipping sample %s (shard %s): %s", sample.entry.key, sample.unit.shard, sample.error
                    )
            p += 1
            if sample.clips is not None:
                chosen.append(sample)
                misses = 0
            elif (misses := misses + 1) >= size:
                raise TooManyBadSamplesError(
                    f"epoch {position.epoch}: none of rank {self.rank}'s {size} samples loads; worst shards: "
                    f"{skips.worst_shards()}"
                )
        if not chosen or (len(chosen) < v and self.cfg.drop_last and self.world_size == 1):
            return None, p, skips
        if p > size:  # it took samples past the end of the rank's order
            log.warning(
                "epoch %d batch %d of rank %d: the rank's order ran out (bad samples); repeating samples so "
                "that every rank yields the same number of batches",
                position.epoch,
                position.batch,
                self.rank,
            )
        clips = [c for s in chosen for c in s.clips]  # type: ignore[union-attr]
        per_clip = [(s.label, s.entry.key) for s in chosen for _ in s.clips]  # type: ignore[union-attr]
        batch = collate_clips(
            clips,
            [label for label, _ in per_clip],
            [key for _, key in per_clip],
            mask_generator=self.mask_generator,
            step=position.step,
            mixed=self.mixed,
            stack=lambda rows: _stack(rows, slot),
        )
        return batch, p, skips

    def picker(self, rng: np.random.Generator, unit: Unit, entry: SampleEntry) -> IndexPicker:
        """The frame picker for a sample of `unit`: its source's clip length and fps (one frame of an
        image); BadSampleError for an image in a source of longer clips."""
        source = self.cfg.sources[unit.source] if self.cfg.sources else None
        frames = self.cfg.frames_per_clip if source is None else self.cfg.source_frames(source)
        if entry.image:
            if frames != 1:
                raise BadSampleError(
                    f"an image in data.sources.{unit.source}, whose clips are {frames} frames long (give "
                    "image sources frames_per_clip: 1)"
                )
            clips = self.cfg.num_clips
            return lambda num_frames, video_fps: np.zeros((clips, 1), dtype=np.int64)  # [C, 1]: the one frame
        return clip_picker(self.cfg, rng, frames=frames, fps=None if source is None else source.fps)

    def clips(self, fetch: _Fetch) -> list[torch.Tensor]:
        """The sample's C augmented clips [3, T, S, S] uint8; BadSampleError if it cannot be used."""
        return augmented_clips(self.cfg, fetch.wait, fetch.error, fetch.rng)
