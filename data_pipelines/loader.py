"""The video loader: batches of augmented uint8 clips with their masks, built in DataLoader workers.

Shape legend: B clips per batch (V videos x C clips each), T frames, S crop pixels.

Splitting. `plan.EpochPlan` fixes, for every (epoch, rank, batch j), which samples make the batch: ranks
read disjoint contiguous ranges of the seeded epoch order, all of the same length, so every rank yields the
same number of batches. Workers split a rank's batches round-robin: worker w builds the stream's batches
w, w + W, w + 2W, ... exactly the order in which DataLoader collects from its workers, so batches arrive in
stream order. Each batch is built whole in one worker (samples, decode, crop, masks) and travels as uint8.

Resume. The data position is (epoch, batch j, step) and batch contents depend only on it, not on earlier
batches or on the worker that builds them. A restored loader starts its stream at the saved position: the
workers seek straight to their samples' tar members and never read or decode the batches before it. Masks
are drawn with `mask_generator(B, worker=0, step=step)`; `step` (batches this rank has delivered) is
unique per rank, so masks, like clips, do not depend on the worker count.

Randomness. Sample-level generators are seeded from (seed, rank, epoch, batch, k), k the sample's place in
the batch's candidate list; no global RNG is touched in the workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.bad_samples import BadSampleError, SkipStats, TooManyBadSamplesError
from data_pipelines.batch import MaskBatch, VideoBatch
from data_pipelines.config import DataConfig
from data_pipelines.decode import VideoDecoder
from data_pipelines.plan import EpochPlan
from data_pipelines.sampling import clip_indices, union_indices
from data_pipelines.sources import RawSample, SampleReader, Source, load_sources
from data_pipelines.transforms import augment_clip

__all__ = ["ClipDataset", "MaskFn", "Position", "VideoLoader", "build_loader"]

log = logging.getLogger(__name__)

MaskFn = Callable[..., list[MaskBatch]]  # mask_generator(batch_size, *, worker: int, step: int)


@dataclass(frozen=True)
class Position:
    """Where a rank's data stream stands: batch `batch` of epoch `epoch` is next; `step` batches done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class BatchInfo:
    """Travels with each batch from the worker: its position and the samples it tried and skipped."""

    position: Position
    skips: SkipStats = field(default_factory=SkipStats)


def _as_is(item: tuple[VideoBatch, BatchInfo]) -> tuple[VideoBatch, BatchInfo]:
    return item  # batches are assembled in the workers; DataLoader must not convert them


class ClipDataset(IterableDataset):
    """Yields (VideoBatch, BatchInfo) for the stream starting at `self.start`, this worker's share."""

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

    def __iter__(self) -> Iterator[tuple[VideoBatch, BatchInfo]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = SampleReader()
        decoder = VideoDecoder(self.cfg.decoder, timeout_s=self.cfg.decode_timeout_s)
        local = SkipStats()  # this worker's tries, for an early stop before the main process sees them
        try:
            for i, position in enumerate(self.stream()):
                if i % workers == worker:
                    batch, skips = self.make_batch(position, reader, decoder)
                    local.merge(skips)
                    local.check(self.cfg.max_skip_fraction, self.cfg.skip_check_min_samples)
                    yield batch, BatchInfo(position, skips)
        finally:
            reader.close()

    def make_batch(
        self, position: Position, reader: SampleReader, decoder: VideoDecoder
    ) -> tuple[VideoBatch, SkipStats]:
        plan = self.plan(position.epoch)
        clips: list[torch.Tensor] = []  # [3, T, S, S] each
        labels: list[int] = []
        keys: list[str] = []
        skips = SkipStats()
        for k, (unit, entry) in enumerate(plan.candidates(position.batch)):
            if len(keys) == self.cfg.batch_size:
                break
            rng = np.random.default_rng([self.seed, self.rank, position.epoch, position.batch, k])
            try:
                raw = reader.read(unit, entry)
                sample_clips = self.load_sample(raw, decoder, rng)
            except BadSampleError as err:
                log.warning("skipping sample %s (shard %s): %s", entry.key, unit.shard, err)
                skips.record(unit.shard, entry.key)
                continue
            skips.record(unit.shard)
            clips.extend(sample_clips)
            labels.extend([raw.label] * len(sample_clips))
            keys.extend([raw.key] * len(sample_clips))
        if len(keys) < self.cfg.batch_size:
            raise TooManyBadSamplesError(
                f"epoch {position.epoch} batch {position.batch}: no {plan.videos_per_batch} loadable samples "
                f"among rank {self.rank}'s {plan.rank_samples}; worst shards: {skips.worst_shards()}"
            )
        masks = (
            []
            if self.mask_generator is None
            else self.mask_generator(len(keys), worker=0, step=position.step)
        )
        batch = VideoBatch(
            clips=torch.stack(clips),  # [B, 3, T, S, S] uint8
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=masks,
            keys=keys,
        )
        return batch, skips

    def load_sample(
        self, raw: RawSample, decoder: VideoDecoder, rng: np.random.Generator
    ) -> list[torch.Tensor]:
        """The sample's C augmented clips [3, T, S, S] uint8; BadSampleError if it cannot be used."""
        c = self.cfg
        gather: list[np.ndarray] = []  # [C, T] positions into the decoded frames

        def pick(num_frames: int, video_fps: float) -> np.ndarray:
            indices = clip_indices(
                num_frames,
                video_fps,
                frames=c.frames_per_clip,
                frame_step=c.frame_step,
                fps=c.fps,
                num_clips=c.num_clips,
                pad=c.pad_short,
                rng=rng,
            )
            unique, positions = union_indices(indices)
            gather.append(positions)
            return unique

        frames = decoder(raw.data, pick)  # [K, H, W, 3] uint8
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return [
            augment_clip(
                frames[row],
                size=c.crop_size,
                scale=c.crop_scale,
                aspect=c.crop_aspect,
                hflip=c.hflip,
                generator=generator,
            )
            for row in gather[0]
        ]


class VideoLoader:
    """Iterates VideoBatch for one rank; the data position and bad-sample counts are checkpointable.

    Without `resampled`, each `iter()` runs the rest of the current epoch, then the next `iter()` starts the
    next epoch. With `resampled`, one `iter()` never ends: epochs follow each other, each with a new seeded
    order. `state_dict()` taken between batches restores to exactly the batches an uninterrupted loader
    would yield next.
    """

    def __init__(self, dataset: ClipDataset) -> None:
        self.dataset = dataset
        self.cfg = dataset.cfg
        self.num_samples = sum(s.num_samples for s in dataset.sources)
        self._position = Position()
        self._skips = SkipStats()
        self._clips = 0

    def _normalized(self) -> Position:
        p = self._position
        while p.batch >= self.dataset.plan(p.epoch).num_batches:
            p = Position(p.epoch + 1, 0, p.step)
        return p

    @property
    def epoch(self) -> int:
        return self._normalized().epoch

    def __len__(self) -> int:
        """Batches in the current epoch (the same on every rank)."""
        return self.dataset.plan(self.epoch).num_batches

    def __iter__(self) -> Iterator[VideoBatch]:
        self._position = self._normalized()
        self.dataset.start = self._position  # workers are created (and copy the dataset) below
        workers = self.cfg.num_workers
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=workers,
            collate_fn=_as_is,
            prefetch_factor=2 if workers else None,
        )
        for batch, info in loader:
            p = info.position
            assert p.step == self._position.step, f"batch for step {p.step} arrived at {self._position.step}"
            self._position = Position(p.epoch, p.batch + 1, p.step + 1)
            self._skips.merge(info.skips)
            self._skips.check(self.cfg.max_skip_fraction, self.cfg.skip_check_min_samples)
            self._clips += batch.clips.shape[0]
            yield batch

    def state_dict(self) -> dict:
        p = self._normalized()
        return {
            "epoch": p.epoch,
            "batch": p.batch,
            "step": p.step,
            "seed": self.dataset.seed,
            "world_size": self.dataset.world_size,
            "batch_size": self.cfg.batch_size,
            "num_samples": self.num_samples,
            "clips": self._clips,
            "skips": self._skips.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores the position; the data, seed, world size and batch size must be those it was saved with
        (the worker count may differ: batches do not depend on it)."""
        for key, have in (
            ("seed", self.dataset.seed),
            ("world_size", self.dataset.world_size),
            ("batch_size", self.cfg.batch_size),
            ("num_samples", self.num_samples),
        ):
            if state[key] != have:
                raise ValueError(
                    f"data loader state: {key} was {state[key]} when saved, is {have} now; "
                    "the saved position does not apply to this data/layout"
                )
        self._position = Position(int(state["epoch"]), int(state["batch"]), int(state["step"]))
        self._clips = int(state["clips"])
        self._skips = SkipStats.from_dict(state["skips"])

    def stats(self) -> dict:
        """Clips delivered and samples skipped (with keys, per shard) on this rank so far."""
        s = self._skips
        p = self._normalized()
        return {
            "epoch": p.epoch,
            "batch": p.batch,
            "step": p.step,
            "clips": self._clips,
            "samples_seen": s.seen,
            "skipped": s.skipped,
            "skip_fraction": s.fraction,
            "skipped_by_shard": {
                shard: {"skipped": n, "seen": s.seen_by_shard.get(shard, 0), "keys": s.keys_by_shard[shard]}
                for shard, n in s.skipped_by_shard.items()
            },
        }


def build_loader(
    cfg: DataConfig,
    *,
    mask_generator: MaskFn | None,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    state: dict | None = None,
) -> VideoLoader:
    """The loader for rank `rank` of `world_size` over `cfg.sources` (dataset 'files'), restored from
    `state` (a `VideoLoader.state_dict()`) when given."""
    cfg.validate("data")
    if cfg.dataset != "files":
        raise ValueError(f"data.dataset: build_loader reads files (dataset 'files'), got {cfg.dataset!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    dataset = ClipDataset(
        load_sources(cfg.sources),
        cfg,
        mask_generator=mask_generator,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    plan = dataset.plan(0)
    if plan.num_batches == 0:
        raise ValueError(
            f"data.batch_size: {plan.num_samples} samples give rank {rank} {plan.rank_samples} samples, "
            f"fewer than one batch of {plan.videos_per_batch} videos"
        )
    loader = VideoLoader(dataset)
    if state is not None:
        loader.load_state_dict(state)
    return loader
