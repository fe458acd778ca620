"""The video loader: batches of augmented uint8 clips with their masks, built in DataLoader workers.

Shape legend: B clips per batch (V videos x C clips each), T frames, S crop pixels.

Splitting. `plan.EpochPlan` fixes, for every (epoch, rank), the order in which the rank reads its samples:
ranks read disjoint contiguous ranges of the seeded epoch order, all of the same length. Workers split a
rank's batches round-robin (`dataset.ClipDataset`): worker w builds the stream's batches w, w + W, ...
which is the order in which DataLoader collects from its workers, so batches arrive in stream order (each
carries its position, and the loader checks it). Each batch is built whole in one worker (samples, decode,
crop, masks) and travels as uint8.

Bad samples. A batch takes the next samples of the rank's order until V of them load; a sample that fails
is skipped, logged and counted once, by the batch it falls in, and the next batch starts after it. So
positions are sample cursors, not batch indices: batch i + 1 starts where batch i ended, which the worker
of batch i publishes to the others (`chain.Chain`; the waiting worker works ahead on a guess, which holds
unless bad samples moved the start). Within an epoch every sample of the rank's range is tried once and
every loadable one delivered at most once: exactly once with `data.drop_last=false` (the last batch is the
shorter remainder), all but the remainder short of a batch with `drop_last=true` (tried and counted, not
delivered). `stats()["skipped"]`, which feeds the trainer's `data_skipped` and `data.max_skip_fraction`,
thus counts each bad sample once, whatever the batch size and the number of workers. Batches have
`data.batch_size` clips except an epoch's last. With one rank an epoch ends where the rank's order ends,
so bad samples make it shorter than `len()`. With several ranks every epoch has `len()` batches, so that
all ranks yield the same number: a rank whose bad samples leave it short fills its last batches with
samples from the start of its order again (logged as repeats).

Resume. The data position is (epoch, batch, cursor: the position in the rank's order where that batch
starts, step) and a batch depends only on it, not on earlier batches or on the worker that builds it. A
restored loader starts its stream at the saved cursor: the workers seek straight to their samples' tar
members and never read or decode the samples before it. The worker count may even change between save
and restore.
"""

from __future__ import annotations

import atexit
import gc
import signal
import weakref
from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset

from data_pipelines.bad_samples import SkipStats, TooManyBadSamplesError
from data_pipelines.batch import VideoBatch, from_transport
from data_pipelines.batch_pool import BatchPool
from data_pipelines.chain import Chain
from data_pipelines.config import DataConfig
from data_pipelines.dataset import BatchInfo, ClipDataset, MaskFn, Position, batch_pool_for
from data_pipelines.decode import preload
from data_pipelines.sources import load_sources

__all__ = ["VideoLoader", "build_loader"]


def _as_is(item: tuple[VideoBatch | None, BatchInfo]) -> tuple[VideoBatch | None, BatchInfo]:
    return item  # batches are assembled in the workers; DataLoader must not convert them


def _freeze_inherited_objects(worker_id: int) -> None:
    """Set-up of a forked worker.

    - Keeps the worker's garbage collector off the objects it inherited: freeing a parent's decoder handle
      (decord joins its decode thread) in the child aborts the worker.
    - Ignores the signals that ask training to stop (SIGUSR1, SIGTERM, SIGINT): SLURM signals every process
      of a job step and a terminal's Ctrl-C reaches the whole process group, and a worker killed by one would
      break the stream while the main process finishes its step and saves. Workers still exit when the main
      process shuts them down or dies."""
    gc.freeze()
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def run_workers(dataset: IterableDataset, cfg: DataConfig) -> Iterator:
    """A DataLoader iteration over `dataset` in `cfg.num_workers` workers (in process with none): items as the
    dataset yields them, workers set up by `_freeze_inherited_objects`. The decoder library is imported here
    first, once, rather than in every worker forked below."""
    workers = cfg.num_workers
    if workers:
        preload(cfg.decoder)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        worker_init_fn=_freeze_inherited_objects,
        prefetch_factor=2 if workers else None,
    )
    return iter(loader)


_OPEN_ITERATIONS: weakref.WeakSet[Iterator] = weakref.WeakSet()


def opened(iteration: Iterator[VideoBatch]) -> Iterator[VideoBatch]:
    """Registers a loader iteration (a generator whose `finally` stops its workers) to be closed at exit."""
    _OPEN_ITERATIONS.add(iteration)
    return iteration


@atexit.register  # registered after multiprocessing's own exit handler (imported with torch), so it runs first
def _close_open_iterations() -> None:
    """Closes the loader iterations still open when the interpreter exits (one held in a global, say), which
    stops their workers. Otherwise multiprocessing's exit handler would send the workers SIGTERM, which they
    ignore (see `_freeze_inherited_objects`), and then wait for them forever."""
    for iteration in list(_OPEN_ITERATIONS):
        try:
            iteration.close()  # type: ignore[attr-defined]
        except Exception:  # exiting anyway: the other iterations still get closed
            pass


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
        self._pool: BatchPool | None = None

    @property
    def epoch(self) -> int:
        return self._position.epoch

    def __len__(self) -> int:
        """Batches in the current epoch without bad samples: the same on every rank, and what every rank
        yields; with one rank, bad samples can make an epoch shorter."""
        return self.dataset.plan(self.epoch).num_batches

    def _advance(self, info: BatchInfo) -> None:
        p = info.position
        assert p.step == self._position.step, f"batch for step {p.step} came at {self._position.step}"
        following = self.dataset.after(p, info.end)
        self._position = following if following is not None else Position(p.epoch + 1, 0, 0, p.step + 1)
        self._skips.merge(info.skips)
        self._skips.check(self.cfg.max_skip_fraction, self.cfg.skip_check_min_samples)

    def __iter__(self) -> Iterator[VideoBatch]:
        return opened(self._iterate())

    def _iterate(self) -> Iterator[VideoBatch]:
        self.dataset.start = self._position
        self.dataset.chain = chain = Chain()  # before the workers are created (and copy the dataset) below
        self._pool = self._pool or batch_pool_for(self.cfg)  # made on first use, kept across epochs
        self.dataset.pool = pool = self._pool.take() if self._pool is not None else None
        batches = run_workers(self.dataset, self.cfg)
        # batches in the current epoch (None: it began before this iteration): an epoch without any means
        # that none of the rank's samples loads
        delivered: int | None = 0 if self._position.cursor == 0 else None
        try:
            for batch, info in batches:
                batch = from_transport(batch, pool)  # None (no batch for this rank) stays None
                epoch = info.position.epoch
                self._advance(info)
                if batch is not None:
                    delivered = None if delivered is None else delivered + 1
                    self._clips += batch.num_clips
                    yield batch
                if self._position.epoch != epoch:
                    if delivered == 0:
                        raise TooManyBadSamplesError(
                            f"epoch {epoch}: no sample of rank {self.dataset.rank}'s "
                            f"{self.dataset.plan(epoch).rank_samples} loads; worst shards: "
                            f"{self._skips.worst_shards()}"
                        )
                    delivered = 0
        finally:
            # stop the workers now, also on an error or an early break: an exception's traceback keeps the
            # iterator alive, and its workers would otherwise run on (and be forked into later workers);
            # a worker waiting for a batch another worker will no longer build stops waiting
            chain.stop()
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            if pool is not None:
                pool.put_back()

    def state_dict(self) -> dict:
        p = self._position
        return {
            "epoch": p.epoch,
            "batch": p.batch,
            "cursor": p.cursor,
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
        missing = sorted({"epoch", "batch", "step", "clips", "skips"} - set(state))
        if missing or state.get("kind", "files") != "files":
            raise ValueError(
                f"data loader state: not a file loader's position (kind {state.get('kind')!r}, "
                f"missing {missing}); the checkpoint was saved with another data.dataset"
            )
        if "cursor" not in state:
            raise ValueError(
                "data loader state: saved by an older loader (a batch index, no sample cursor), whose "
                "position does not apply to this one's batches; resume from a newer checkpoint or start fresh"
            )
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
        self._position = Position(
            int(state["epoch"]), int(state["batch"]), int(state["cursor"]), int(state["step"])
        )
        self._clips = int(state["clips"])
        self._skips = SkipStats.from_dict(state["skips"])

    def stats(self) -> dict:
        """Clips delivered and samples skipped (with keys, per shard) on this rank so far."""
        s = self._skips
        p = self._position
        return {
            "epoch": p.epoch,
            "batch": p.batch,
            "step": p.step,
            "clips": self._clips,
            **s.report(),
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
    if any(s.path.startswith(("http://", "https://", "pipe:")) for s in cfg.sources):
        from data_pipelines.streaming import build_stream  # imports webdataset: only for streamed shards

        return build_stream(  # type: ignore[return-value]  # a ShardStream: the same BatchStream protocol
            cfg, mask_generator=mask_generator, seed=seed, rank=rank, world_size=world_size, state=state
        )
    dataset = ClipDataset(
        load_sources(cfg.sources, default_frames=cfg.frames_per_clip),
        cfg,
        mask_generator=mask_generator,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    plan = dataset.plan(0)
    if plan.num_batches == 0:
        fix = (
            f"set data.drop_last=false (ranks then share samples) or use at most {plan.num_samples} ranks"
            if plan.rank_samples == 0
            else "set data.drop_last=false (the epoch is then one shorter batch) or a smaller "
            f"data.batch_size (at most {plan.rank_samples * cfg.num_clips} with data.num_clips={cfg.num_clips})"
        )
        raise ValueError(
            f"data.batch_size: {plan.num_samples} samples give rank {rank} of {world_size} "
            f"{plan.rank_samples}, fewer than one batch of {plan.videos_per_batch} videos; {fix}"
        )
    loader = VideoLoader(dataset)
    if state is not None:
        loader.load_state_dict(state)
    return loader
