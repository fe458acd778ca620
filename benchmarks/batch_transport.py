"""Moving a batch's clips from a DataLoader worker to the main process: a new shared-memory segment per batch
against a reused slot of a `BatchPool`, in the same run.

A real DataLoader worker stacks B channels-last uint8 clips [3, T, S, S] with the loader's own `_stack`,
prepares the batch with `for_transport` and sends it; the main process rebuilds it with `from_transport` and
drops it, as a training loop does. No decoding: what is measured is the transport alone. Reported per batch:
worker CPU ms and minor page faults (the worker's own getrusage), main-process CPU ms and faults, and wall
ms. The two ways alternate in rounds (order flipped every round). One JSON line:

    python benchmarks/batch_transport.py --batch 8 --frames 16 --crop 112 --batches 200 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.batch import VideoBatch, for_transport, from_transport
from data_pipelines.batch_pool import BatchPool
from data_pipelines.dataset import _stack


def _usage() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt


class _Batches(IterableDataset):
    """`batches` batches of `batch` copies of `clip`, built in the worker; then one (None, usage) item."""

    def __init__(self, clip: torch.Tensor, batch: int, batches: int, pool: BatchPool | None) -> None:
        self.clip, self.batch, self.batches, self.pool = clip, batch, batches, pool

    def __iter__(self):
        worker = get_worker_info().id
        cpu, faults = _usage()
        labels = torch.zeros(self.batch, dtype=torch.int64)
        for _ in range(self.batches):
            slot = self.pool.claim(worker) if self.pool is not None else None
            clips = _stack([self.clip] * self.batch, slot)
            yield for_transport(VideoBatch(clips=clips, labels=labels), slot), None
        cpu_end, faults_end = _usage()
        yield None, (cpu_end - cpu, faults_end - faults)


def _run(clip: torch.Tensor, batch: int, batches: int, pool: BatchPool | None) -> dict:
    if pool is not None:
        pool = pool.take()
    loader = DataLoader(
        _Batches(clip, batch, batches, pool),
        batch_size=None,
        num_workers=1,
        prefetch_factor=2,
        collate_fn=lambda item: item,
    )
    cpu, faults = _usage()
    start = time.perf_counter()
    worker = (0.0, 0)
    for item, usage in loader:
        if usage is not None:
            worker = usage
            continue
        received = from_transport(item, pool)
        assert received.clips.shape == (batch, *clip.shape)
        del received, item
    wall = time.perf_counter() - start
    cpu_end, faults_end = _usage()
    if pool is not None:
        pool.put_back()
    return {
        "worker_ms": 1000 * worker[0] / batches,
        "worker_faults": worker[1] / batches,
        "main_ms": 1000 * (cpu_end - cpu) / batches,
        "main_faults": (faults_end - faults) / batches,
        "wall_ms": 1000 * wall / batches,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--batches", type=int, default=200, help="batches per run")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    # a decoded crop's layout: [T, S, S, 3] in memory, seen as [3, T, S, S]
    decoded = torch.randint(0, 256, (args.frames, args.crop, args.crop, 3), dtype=torch.uint8)
    clip = decoded.permute(3, 0, 1, 2)
    pool = BatchPool(1, args.batch * clip.numel())
    runs: dict[str, list[dict]] = {"fresh": [], "pool": []}
    for r in range(args.rounds):
        for which in ("fresh", "pool") if r % 2 == 0 else ("pool", "fresh"):
            runs[which].append(_run(clip, args.batch, args.batches, pool if which == "pool" else None))
    mean = {w: {k: round(sum(x[k] for x in rs) / len(rs), 2) for k in rs[0]} for w, rs in runs.items()}
    result = {
        "fresh": mean["fresh"],
        "pool": mean["pool"],
        "worker_ratio": round(mean["fresh"]["worker_ms"] / mean["pool"]["worker_ms"], 2),
        "main_ratio": round(mean["fresh"]["main_ms"] / mean["pool"]["main_ms"], 2),
        "batch": args.batch,
        "frames": args.frames,
        "crop": args.crop,
        "batch_mib": round(args.batch * clip.numel() / 2**20, 1),
        "batches": args.batches,
        "rounds": args.rounds,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
