"""Batches through reused shared-memory slots: a batch the caller keeps is never overwritten, dropped batches
give their slots back, an early break loses no slot, and the streamed loader uses the pool too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from data_pipelines.batch import VideoBatch, for_transport, from_transport
from data_pipelines.batch_pool import BatchPool
from data_pipelines.loader import build_loader


def _reference(cfg) -> list[torch.Tensor]:
    """The epoch's clips from the loader in the main process (no workers, no pool)."""
    return [b.clips.clone() for b in build_loader(replace(cfg, num_workers=0), mask_generator=None, seed=0)]


def test_kept_batches_are_never_overwritten(shard_dir: Path, data_config) -> None:
    cfg = data_config(shard_dir, num_workers=1)  # 8 batches, more than the worker's 5 slots
    loader = build_loader(cfg, mask_generator=None, seed=0)
    kept = list(loader)  # every batch held: no slot is ever free again
    for got, want in zip(kept, _reference(cfg), strict=True):
        torch.testing.assert_close(got.clips, want, rtol=0, atol=0)
    pool = loader._pool
    assert pool.received == pool.slots_per_worker == 5  # the first 5 through slots, the rest in new segments
    assert pool.held() == 5
    del kept, got
    assert pool.held() == 0 and int(pool.flags.sum()) == 0


def test_dropped_batches_give_their_slots_back(shard_dir: Path, data_config) -> None:
    cfg = data_config(shard_dir, num_workers=2, resampled=True)
    loader = build_loader(cfg, mask_generator=None, seed=0)
    want = _reference(replace(cfg, resampled=False))
    batches = iter(loader)
    for i in range(3 * len(want)):  # three epochs of one stream, each batch dropped before the next comes
        batch = next(batches)
        if i < len(want):
            torch.testing.assert_close(batch.clips, want[i], rtol=0, atol=0)
    pool = loader._pool
    assert pool.received == 3 * len(want)  # every batch came through a slot
    assert pool.held() == 1  # the one still referenced by `batch`
    del batch
    batches.close()
    assert pool.held() == 0 and not pool.in_use


def test_an_early_break_loses_no_slot(shard_dir: Path, data_config) -> None:
    cfg = data_config(shard_dir, num_workers=1)
    loader = build_loader(cfg, mask_generator=None, seed=0)
    batches = iter(loader)
    next(batches)  # the batch is dropped at once
    batches.close()  # the worker had built and sent more, which are never received
    pool = loader._pool
    assert pool.received == 1 and pool.held() == 0
    assert int(pool.flags.sum()) > 0  # their slots are still marked taken...
    received = pool.received
    count = sum(1 for _ in loader)  # ...and free again once the next iteration starts
    assert count == 7 and pool.received - received == 7


def test_a_second_live_iterator_goes_without_the_pool(shard_dir: Path, data_config) -> None:
    loader = build_loader(data_config(shard_dir, num_workers=1, resampled=True), mask_generator=None, seed=0)
    first = iter(loader)
    next(first)
    pool = loader._pool
    assert pool.in_use
    other = build_loader(data_config(shard_dir, num_workers=1), mask_generator=None, seed=0)
    other._pool = pool  # the same pool, as a second iter() of one loader would find it
    received = pool.received
    assert len(list(other)) == 8 and pool.received == received  # all through new segments
    first.close()
    assert not pool.in_use


def test_streamed_batches_use_the_pool(shard_dir: Path, data_config) -> None:
    cfg = data_config(f"pipe:cat {shard_dir}/shard-{{000000..000003}}.tar", num_workers=2)
    loader = build_loader(cfg, mask_generator=None, seed=0)
    count = sum(b.num_clips for b in loader)
    assert count == 32 and loader._pool.received == 8 and loader._pool.held() == 0


def test_slot_refs_need_the_pool_and_a_batch_too_big_for_a_slot_goes_without() -> None:
    pool = BatchPool(1, slot_bytes=2 * 3 * 2 * 4 * 4)
    slot = pool.claim(0)
    assert slot.tensor((3, 3, 2, 4, 4), (96, 32, 16, 4, 1)) is None  # 3 clips do not fit in 2 clips' bytes
    clips = slot.tensor((2, 3, 2, 4, 4), (96, 32, 16, 4, 1))
    clips.copy_(torch.arange(clips.numel(), dtype=torch.uint8).view(clips.shape))
    sent = for_transport(VideoBatch(clips=clips, labels=torch.zeros(2, dtype=torch.int64)), slot)
    with pytest.raises(RuntimeError, match="refers to slot 0 of a batch pool, but the loader has none"):
        from_transport(sent)
    got = from_transport(sent, pool)
    assert torch.equal(got.clips, clips) and int(pool.flags[0]) == 1
    del got
    assert int(pool.flags[0]) == 0
