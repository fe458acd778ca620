"""Streamed tar shards (`http://`, `https://`, `pipe:` URLs) read with webdataset, as a training BatchStream.

Shape legend: B clips per batch (V videos x C clips each), T frames, S crop pixels.

For shards in an object store or behind a command, which can only be read front to back. Local shards go
through `loader.VideoLoader`, which indexes tar headers and splits per sample; here the split, the equal
batch counts and resume all work per shard.

Sources. Every `data.sources` entry is a URL or a brace pattern of URLs, e.g.
`http://host/shard-{000000..000099}.tar` or `pipe:aws s3 cp s3://bucket/shard-{0..9}.tar -`; local paths
cannot be mixed in. webdataset reads http(s) through `curl`, which must be on the PATH. A sample's members
must be adjacent in the tar (webdataset groups consecutive members by key), as `ShardWriter` writes them.

Splitting (explicit, no torch.distributed or environment look-up). An epoch's shard order is
`plan.EpochPlan`'s (seeded, source weights applied), the same on every rank. Shard i of it goes to rank
i % R and the rank's j-th shard to reader j % W (W = max(1, data.num_workers)): R x W readers with
disjoint shards. Fewer shards per epoch than readers is a ValueError naming the sources: a reader without
a shard would leave its rank short of batches.

Equal batch counts. Every reader builds `quota` batches per epoch, quota = min over all readers of (its
shards' samples // V), so every rank yields W x quota batches. Shard sample counts come from the source's
`samples_per_shard` when set (the shard size the shards were written with), else from a counting pass at
build time that streams every shard once and reads only member names; that downloads the whole data set
once per rank, so set `samples_per_shard` for large data. Readers with more samples leave the rest
unread that epoch (the build logs how many). A reader whose shards run out before its quota (bad members,
shards shorter than stated) continues with its first shard again, so the count never changes.

Order. A batch is built whole in one worker from consecutive members of its reader's shards (there is no
shuffle buffer, whose content would be resume state; `data.shuffle_buffer` does not apply). Batch k of an
epoch comes from reader k % W: DataLoader collects from its workers round-robin, and a stream restarted at
batch b gives worker i the reader (b + i) % W, which keeps that order.

Resume. The position is (epoch, batch, step) and, per reader, a cursor (its shard position, samples
consumed in that shard). A restored stream opens each reader's saved shard and passes over the consumed
members without keeping or decoding their data (webdataset's `select_files`), then goes on. A batch
depends only on that position (sample randomness from (seed, rank, epoch, shard, member), masks from the
step), so a resumed stream yields exactly the batches an uninterrupted one would. The bytes before the
saved member still stream past: a stream cannot seek. World size, worker count, batch size and the shards
must be those the state was saved with.

Bad members (no video member, undecodable or too short video) are skipped, logged with their key and
counted in `SkipStats` against `data.max_skip_fraction`, like the file loader. A shard that cannot be
opened or read (network error, damaged tar) stops the run with its URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_pipelines.bad_samples import BadSampleError, SkipStats, TooManyBadSamplesError
from data_pipelines.batch import MaskFn, VideoBatch, for_transport, from_transport
from data_pipelines.batch_pool import BatchPool, Slot
from data_pipelines.config import DataConfig
from data_pipelines.dataset import _stack, augmented_clips, batch_pool_for, clip_picker, one_ahead
from data_pipelines.decode import DecodedVideo, VideoDecoder
from data_pipelines.loader import opened, run_workers
from data_pipelines.plan import EpochPlan
from data_pipelines.sources import Source, _parse_label
from data_pipelines.stream_shards import (
    STREAM_PREFIXES,
    VIDEO_EXTS,
    StreamShard,
    count_samples,
    is_stream_url,
    read_shard,
    stream_shards,
)

__all__ = ["STREAM_PREFIXES", "ShardStream", "StreamShard", "build_stream", "count_samples", "is_stream_url"]

log = logging.getLogger(__name__)

Cursor = tuple[int, int]  # (shard position in a reader's list, samples consumed in that shard)


class _Layout:
    """One epoch: which shards each reader (rank, role) reads and how many batches every rank yields."""

    def __init__(
        self, shards: list[StreamShard], order: np.ndarray, *, world_size: int, workers: int
    ) -> None:
        readers = world_size * workers
        self.world_size, self.workers = world_size, workers
        # reader s = rank + R * role reads the epoch's shards i with i % (R * W) == s
        self.reads: list[list[tuple[int, StreamShard]]] = [
            [(i, shards[int(order[i])]) for i in range(s, len(order), readers)] for s in range(readers)
        ]
        self.samples = [sum(shard.samples for _, shard in reads) for reads in self.reads]

    def reader(self, rank: int, role: int) -> list[tuple[int, StreamShard]]:
        """(epoch shard index, shard) in reading order."""
        return self.reads[rank + self.world_size * role]

    def quota(self, videos_per_batch: int) -> int:
        """Batches every reader builds this epoch."""
        return min(self.samples) // videos_per_batch


@dataclass(frozen=True)
class StreamPosition:
    """Batch `batch` of epoch `epoch` is next, `step` batches done; `cursors[r]`: where reader r goes on."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    cursors: tuple[Cursor, ...] = ()


@dataclass
class _Info:
    """Travels with each batch from the worker: its place, its reader's cursor after it, its skips."""

    epoch: int
    batch: int
    step: int
    role: int
    cursor: Cursor
    skips: SkipStats = field(default_factory=SkipStats)


@dataclass
class _Item:
    """One member on its way: where it sits, its label, and its frames decoding (or why not)."""

    pos: int
    member: int
    url: str
    key: str  # "shard/key"
    rng: np.random.Generator
    label: int = -1
    wait: Callable[[], DecodedVideo] | None = None  # -> frames [C, T, H, W, 3] at clip indices [C, T]
    error: str = ""


def _video_and_label(sample: dict) -> tuple[bytes, int]:
    """A webdataset sample's video bytes and label (KEY.cls, else KEY.json's "label", else -1)."""
    videos = [ext for ext in sample if not ext.startswith("__") and ext.rsplit(".", 1)[-1] in VIDEO_EXTS]
    if not videos:
        members = ",".join(sorted(ext for ext in sample if not ext.startswith("__")))
        raise BadSampleError(f"no video member (members: {members or 'none'})")
    label = -1
    for fmt in ("cls", "json"):
        if fmt in sample:
            label = _parse_label(sample[fmt], fmt)
            break
    return sample[videos[0]], label


# ----------------------------------------------------------------------------- the worker side


class _StreamDataset(IterableDataset):
    """Yields (VideoBatch, _Info) for the stream from `self.start`: this worker's reader's batches."""

    def __init__(
        self,
        shards: list[StreamShard],
        sources: list[Source],
        cfg: DataConfig,
        *,
        mask_generator: MaskFn | None,
        seed: int,
        rank: int,
        world_size: int,
    ) -> None:
        self.shards, self.sources, self.cfg = shards, sources, cfg
        self.mask_generator = mask_generator
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers = max(1, cfg.num_workers)
        self.videos_per_batch = cfg.batch_size // cfg.num_clips
        self.start = StreamPosition(cursors=self.fresh_cursors())
        self.pool: BatchPool | None = None  # set by the ShardStream before the workers start
        self._layouts: dict[int, _Layout] = {}

    def fresh_cursors(self) -> tuple[Cursor, ...]:
        return ((0, 0),) * self.workers

    def layout(self, epoch: int) -> _Layout:
        if epoch not in self._layouts:
            if len(self._layouts) >= 2:
                self._layouts.pop(min(self._layouts))
            plan = EpochPlan(  # for its seeded, weighted shard order only (the units list no samples)
                self.sources,
                epoch=epoch,
                seed=self.seed,
                rank=0,
                world_size=1,
                videos_per_batch=1,
                shuffle=self.cfg.shuffle,
                shuffle_buffer=0,
                drop_last=True,
            )
            self._layouts[epoch] = _Layout(
                self.shards, plan.order_u, world_size=self.world_size, workers=self.workers
            )
        return self._layouts[epoch]

    def num_batches(self, epoch: int) -> int:
        """Batches every rank yields in `epoch`."""
        return self.layout(epoch).quota(self.videos_per_batch) * self.workers

    def __iter__(self) -> Iterator[tuple[VideoBatch, _Info]]:
        info = get_worker_info()
        role = ((info.id if info is not None else 0) + self.start.batch) % self.workers
        decoder = VideoDecoder(self.cfg.decoder, timeout_s=self.cfg.decode_timeout_s)
        local = SkipStats()  # this worker's tries, for an early stop before the main process sees them
        epoch, first, step = self.start.epoch, self.start.batch, self.start.step
        cursor = self.start.cursors[role]
        while True:
            reads = self.layout(epoch).reader(self.rank, role)
            items = self._items(reads, epoch, cursor, decoder)
            ahead = one_ahead(items)
            try:
                for k in range(first + (role - first) % self.workers, self.num_batches(epoch), self.workers):
                    slot = self.pool.claim(info.id) if self.pool is not None and info is not None else None
                    batch, skips, cursor = self._make_batch(ahead, reads, step + k - first, slot)
                    local.merge(skips)
                    local.check(self.cfg.max_skip_fraction, self.cfg.skip_check_min_samples)
                    if info is not None:  # in a worker: clips in a pool slot, small tensors in the message
                        batch = for_transport(batch, slot)
                    if slot is not None:
                        slot.release_if_unused()
                    yield batch, _Info(epoch, k, step + k - first, role, cursor, skips)
            finally:
                ahead.close()
                items.close()  # closes the shard stream it has open
            if not self.cfg.resampled:
                return
            epoch, first, step, cursor = epoch + 1, 0, step + self.num_batches(epoch) - first, (0, 0)

    def _items(
        self, reads: list[tuple[int, StreamShard]], epoch: int, cursor: Cursor, decoder: VideoDecoder
    ) -> Iterator[_Item]:
        """The reader's members from `cursor` on, each with its decode queued; after its last shard it
        starts again from its first (the batch count is fixed, see the module docstring)."""
        pos, skip = cursor
        empty = 0  # shards in a row that held no sample at all
        while empty < len(reads):
            index, shard = reads[pos % len(reads)]
            found = False
            for member, sample in read_shard(shard.url, skip):
                found = True
                rng = np.random.default_rng([self.seed, self.rank, epoch, index, pos // len(reads), member])
                item = _Item(
                    pos, member, shard.url, f"{shard.name}/{sample['__key__'].removeprefix('./')}", rng
                )
                try:
                    data, item.label = _video_and_label(sample)
                    item.wait = decoder.submit(data, clip_picker(self.cfg, rng))
                except BadSampleError as err:
                    item.error = str(err)
                yield item
            empty = 0 if found or skip else empty + 1
            pos, skip = pos + 1, 0
        raise TooManyBadSamplesError(f"rank {self.rank}: shards {[s.url for _, s in reads]} hold no samples")

    def _make_batch(
        self,
        items: Iterator[_Item],
        reads: list[tuple[int, StreamShard]],
        step: int,
        slot: Slot | None = None,
    ) -> tuple[VideoBatch, SkipStats, Cursor]:
        """The next V good members make the batch (its clips in `slot` where given and they fit); bad ones
        are skipped, counted and logged."""
        clips: list[torch.Tensor] = []  # [3, T, S, S] each
        labels: list[int] = []
        keys: list[str] = []
        skips = SkipStats()
        limit = sum(shard.samples for _, shard in reads) + 1  # a whole pass without V good members
        for tries, item in enumerate(items, start=1):
            try:
                sample_clips = augmented_clips(self.cfg, item.wait, item.error, item.rng)
            except BadSampleError as err:
                log.warning("skipping sample %s (shard %s): %s", item.key, item.url, err)
                skips.record(item.url, item.key)
                if tries > limit:
                    raise TooManyBadSamplesError(
                        f"rank {self.rank}: no {self.videos_per_batch} loadable samples in {tries} tries; "
                        f"worst shards: {skips.worst_shards()}"
                    ) from None
                continue
            skips.record(item.url)
            clips.extend(sample_clips)
            labels.extend([item.label] * len(sample_clips))
            keys.extend([item.key] * len(sample_clips))
            if len(keys) == self.cfg.batch_size:
                break
        masks = [] if self.mask_generator is None else self.mask_generator(len(keys), worker=0, step=step)
        batch = VideoBatch(
            clips=_stack(clips, slot),  # [B, 3, T, S, S] uint8
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=masks,
            keys=keys,
        )
        return batch, skips, (item.pos, item.member + 1)


# ----------------------------------------------------------------------------- the main-process side


class ShardStream:
    """Iterates VideoBatch for one rank from streamed shards; position and bad-sample counts are
    checkpointable. Like `VideoLoader`: without `resampled` each `iter()` runs the rest of the current
    epoch and the next `iter()` the next one; with it one `iter()` never ends."""

    def __init__(self, dataset: _StreamDataset) -> None:
        self.dataset = dataset
        self.cfg = dataset.cfg
        self.num_samples = sum(shard.samples for shard in dataset.shards)
        self._position = dataset.start
        self._skips = SkipStats()
        self._clips = 0
        self._pool: BatchPool | None = None

    def _normalized(self) -> StreamPosition:
        p = self._position
        while p.batch >= self.dataset.num_batches(p.epoch):
            p = StreamPosition(p.epoch + 1, 0, p.step, self.dataset.fresh_cursors())
        return p

    @property
    def epoch(self) -> int:
        return self._normalized().epoch

    def __len__(self) -> int:
        """Batches in the current epoch (the same on every rank)."""
        return self.dataset.num_batches(self.epoch)

    def __iter__(self) -> Iterator[VideoBatch]:
        return opened(self._iterate())

    def _iterate(self) -> Iterator[VideoBatch]:
        self._position = self._normalized()
        self.dataset.start = self._position  # workers are created (and copy the dataset) below
        self._pool = self._pool or batch_pool_for(self.cfg)  # made on first use, kept across epochs
        self.dataset.pool = pool = self._pool.take() if self._pool is not None else None
        batches = run_workers(self.dataset, self.cfg)
        try:
            for batch, info in batches:
                batch = from_transport(batch, pool)
                p = self._position
                assert info.step == p.step, f"batch for step {info.step} came at {p.step}"
                cursors = list(p.cursors if info.epoch == p.epoch else self.dataset.fresh_cursors())
                cursors[info.role] = info.cursor
                self._position = StreamPosition(info.epoch, info.batch + 1, info.step + 1, tuple(cursors))
                self._skips.merge(info.skips)
                self._skips.check(self.cfg.max_skip_fraction, self.cfg.skip_check_min_samples)
                self._clips += batch.num_clips
                yield batch
        finally:
            # stop the workers now, also on an early break (see VideoLoader.__iter__)
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            if pool is not None:
                pool.put_back()

    def state_dict(self) -> dict:
        p = self._normalized()
        return {
            "kind": "stream",
            "epoch": p.epoch,
            "batch": p.batch,
            "step": p.step,
            "cursors": [list(c) for c in p.cursors],
            "seed": self.dataset.seed,
            "world_size": self.dataset.world_size,
            "num_workers": self.dataset.workers,
            "batch_size": self.cfg.batch_size,
            "shards": len(self.dataset.shards),
            "num_samples": self.num_samples,
            "clips": self._clips,
            "skips": self._skips.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores the position; data, seed, world size, worker count and batch size must be those it was
        saved with (readers' shards depend on all of them)."""
        if state.get("kind") != "stream":
            raise ValueError(
                f"data loader state: saved by a {state.get('kind', 'file loader')!r} stream, "
                "this run streams shards from URLs"
            )
        for key, have in (
            ("seed", self.dataset.seed),
            ("world_size", self.dataset.world_size),
            ("num_workers", self.dataset.workers),
            ("batch_size", self.cfg.batch_size),
            ("shards", len(self.dataset.shards)),
            ("num_samples", self.num_samples),
        ):
            if state[key] != have:
                raise ValueError(
                    f"data loader state: {key} was {state[key]} when saved, is {have} now; "
                    "the saved position does not apply to this data/layout"
                )
        cursors = tuple((int(pos), int(member)) for pos, member in state["cursors"])
        self._position = StreamPosition(int(state["epoch"]), int(state["batch"]), int(state["step"]), cursors)
        self._clips = int(state["clips"])
        self._skips = SkipStats.from_dict(state["skips"])

    def stats(self) -> dict:
        """Clips delivered and samples skipped (with keys, per shard URL) on this rank so far."""
        s = self._skips
        p = self._normalized()
        return {
            "epoch": p.epoch,
            "batch": p.batch,
            "step": p.step,
            "clips": self._clips,
            **s.report(),
        }


def build_stream(
    cfg: DataConfig,
    *,
    mask_generator: MaskFn | None,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    state: dict | None = None,
) -> ShardStream:
    """The stream for rank `rank` of `world_size` over streamed shard URLs in `cfg.sources`, restored from
    `state` (a `ShardStream.state_dict()`) when given. Counts shards' samples unless the sources state
    `samples_per_shard`."""
    cfg.validate("data")
    if cfg.dataset != "files":
        raise ValueError(f"data.dataset: streamed shards are read with dataset 'files', got {cfg.dataset!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    shards, sources = stream_shards(cfg)
    dataset = _StreamDataset(
        shards, sources, cfg, mask_generator=mask_generator, seed=seed, rank=rank, world_size=world_size
    )
    layout = dataset.layout(0)
    readers = world_size * dataset.workers
    per_epoch = sum(len(reads) for reads in layout.reads)
    if per_epoch < readers:
        raise ValueError(
            f"data.sources: {per_epoch} streamed shards per epoch ({', '.join(s.path for s in cfg.sources)}) "
            f"for {world_size} ranks x {dataset.workers} workers; every reader needs a shard of its own: "
            "use more shards or fewer data.num_workers"
        )
    if dataset.num_batches(0) == 0:
        raise ValueError(
            f"data.batch_size: the smallest reader's shards hold {min(layout.samples)} samples, fewer than "
            f"one batch of {dataset.videos_per_batch} videos ({readers} readers over {per_epoch} shards)"
        )
    used = dataset.num_batches(0) * dataset.videos_per_batch * world_size
    log.info(
        "streaming %d shards (%d samples) to %d ranks x %d workers: %d samples per epoch used, %d left unread "
        "to keep batch counts equal",
        per_epoch,
        sum(layout.samples),
        world_size,
        dataset.workers,
        used,
        sum(layout.samples) - used,
    )
    stream = ShardStream(dataset)
    if state is not None:
        stream.load_state_dict(state)
    return stream
