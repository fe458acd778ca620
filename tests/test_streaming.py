"""Streamed shards (webdataset over a local HTTP server and `pipe:cat`): split across ranks and workers,
equal batch counts, exact resume, bad members, layout errors."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import frame_numbers

from data_pipelines import BatchStream, decode
from data_pipelines.bad_samples import TooManyBadSamplesError
from data_pipelines.config import SourceConfig
from data_pipelines.loader import build_loader
from data_pipelines.masking.generator import MaskGenerator
from data_pipelines.masking.spec import default_mask_specs
from data_pipelines.shard_writer import ShardWriter
from data_pipelines.streaming import ShardStream, StreamShard, build_stream, count_samples

ALL_KEYS = {f"shard-{i // 8:06d}/v{i:03d}" for i in range(32)}  # conftest's shard_dir: 4 shards x 8


def _masks() -> MaskGenerator:
    return MaskGenerator(default_mask_specs(), grid=(2, 2, 2), seed=3)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # no line per request on stderr
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Path], str]]:
    """serve(folder) -> the base URL of an HTTP server on 127.0.0.1 (a free port) serving the folder."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _pipe(shard_dir: Path, pattern: str = "shard-{000000..000003}.tar") -> str:
    return f"pipe:cat {shard_dir}/{pattern}"


def test_http_stream_yields_batches_like_the_file_loader(shard_dir: Path, data_config, serve) -> None:
    base = serve(shard_dir)
    url = f"{base}/shard-{{000000..000003}}.tar"
    cfg = data_config(url, crop_scale=(1.0, 1.0), crop_aspect=(1.0, 1.0), hflip=0.0, frame_step=3)
    stream = build_loader(cfg, mask_generator=_masks(), seed=0)  # URL sources dispatch to the stream
    assert isinstance(stream, ShardStream) and isinstance(stream, BatchStream) and len(stream) == 8
    batches = list(stream)
    assert len(batches) == 8 and stream.epoch == 1
    batch = batches[0]
    assert batch.clips.shape == (4, 3, 4, 16, 16) and batch.clips.dtype == torch.uint8
    assert batch.labels.tolist() == [int(k[-3:]) % 4 for k in batch.keys]
    assert len(batch.masks) == 2 and all(m.batch_size == 4 for m in batch.masks)
    numbers = frame_numbers(batch.clips.permute(0, 2, 3, 4, 1).numpy())  # [B, T] source frame indices
    assert np.all(np.diff(numbers, axis=1) == 3) and numbers.min() >= 0 and numbers.max() < 24
    keys = Counter(k for b in batches for k in b.keys)
    assert set(keys) == ALL_KEYS and set(keys.values()) == {1}
    stats = stream.stats()
    assert (stats["clips"], stats["samples_seen"], stats["skipped"]) == (32, 32, 0)
    assert (
        count_samples(f"{base}/shard-000000.tar") == count_samples(_pipe(shard_dir, "shard-000000.tar")) == 8
    )


def test_ranks_and_workers_split_by_shard_without_duplicates(shard_dir: Path, data_config, serve) -> None:
    base = serve(shard_dir)
    per_rank = []
    for rank in range(2):
        cfg = data_config(f"{base}/shard-{{000000..000003}}.tar", num_workers=2)  # 4 shards, 2 x 2 readers
        per_rank.append(
            [b.keys for b in build_loader(cfg, mask_generator=None, seed=5, rank=rank, world_size=2)]
        )
    assert len(per_rank[0]) == len(per_rank[1]) == 4  # each reader: one shard of 8 -> 2 batches of 4
    keys = Counter(k for rank in per_rank for batch in rank for k in batch)
    assert set(keys) == ALL_KEYS and set(keys.values()) == {1}
    shards = [{k.split("/")[0] for batch in rank for k in batch} for rank in per_rank]
    assert len(shards[0]) == len(shards[1]) == 2 and not shards[0] & shards[1]
    for batches in per_rank:  # a batch is built by one worker from its own shard
        assert all(len({k.split("/")[0] for k in batch}) == 1 for batch in batches)


def test_uneven_shards_give_equal_batch_counts(shard_dir: Path, data_config) -> None:
    three = _pipe(shard_dir, "shard-00000{0..2}.tar")  # 24 samples: rank 0 reads 2 shards, rank 1 one
    for stated, expected in ((0, 2), (8, 2), (12, 3)):  # counted, stated, overstated (rank 1 wraps around)
        source = SourceConfig(path=three, samples_per_shard=stated)
        per_rank = [
            [
                b.keys
                for b in build_stream(
                    data_config(sources=[source]), mask_generator=None, seed=0, rank=r, world_size=2
                )
            ]
            for r in range(2)
        ]
        assert [len(batches) for batches in per_rank] == [expected, expected]
        rank1 = Counter(k for batch in per_rank[1] for k in batch)
        assert max(rank1.values()) == (2 if stated == 12 else 1)


def test_resume_yields_the_same_batches(
    shard_dir: Path, data_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = data_config(_pipe(shard_dir), num_workers=2, resampled=True)  # 2 readers x 4 batches per epoch
    reference = list(islice(build_stream(cfg, mask_generator=_masks(), seed=1), 12))
    first = build_stream(cfg, mask_generator=_masks(), seed=1)
    assert [b.keys for b in islice(first, 5)] == [b.keys for b in reference[:5]]
    state = first.state_dict()
    assert (state["epoch"], state["batch"], state["step"]) == (0, 5, 5)
    resumed = list(islice(build_stream(cfg, mask_generator=_masks(), seed=1, state=state), 7))  # into epoch 1
    for got, want in zip(resumed, reference[5:], strict=True):
        assert (
            got.keys == want.keys
            and torch.equal(got.clips, want.clips)
            and torch.equal(got.labels, want.labels)
        )
        assert all(
            torch.equal(a.context_idx, b.context_idx) for a, b in zip(got.masks, want.masks, strict=True)
        )
    with pytest.raises(ValueError, match="num_workers was 2 when saved, is 1 now"):
        build_stream(data_config(_pipe(shard_dir), resampled=True), mask_generator=None, seed=1, state=state)
    # in-process: a resumed stream decodes the batch it delivers plus the one member it decodes ahead, none
    # of the members it skips in the saved shard
    cfg0 = data_config(_pipe(shard_dir), num_workers=0)
    reference0 = list(islice(build_stream(cfg0, mask_generator=_masks(), seed=1), 4))
    first0 = build_stream(cfg0, mask_generator=_masks(), seed=1)
    list(islice(first0, 3))
    state0 = first0.state_dict()
    assert state0["cursors"][0][1] % 8 == 4  # the saved reader stands in the middle of a shard
    calls = []
    for name, real in list(decode._BACKENDS.items()):
        monkeypatch.setitem(
            decode._BACKENDS, name, functools.partial(lambda f, d, p: calls.append(1) or f(d, p), real)
        )
    batch = next(iter(build_stream(cfg0, mask_generator=_masks(), seed=1, state=state0)))
    assert batch.keys == reference0[3].keys and torch.equal(batch.clips, reference0[3].clips)
    # the member decoded ahead is queued before the batch is returned, but its decode starts on the helper
    # thread: wait for it (on a loaded machine it may not have started yet), then check nothing else ran
    deadline = time.monotonic() + 30
    while len(calls) < 4 + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) == 4 + 1


def test_bad_members_are_skipped_and_counted_once(
    tmp_path: Path, numbered_mp4: bytes, data_config, serve, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {
        "zero": (b"", "mp4"),
        "random": (np.random.default_rng(0).bytes(3000), "mp4"),
        "text": (numbered_mp4, "txt"),
    }
    with ShardWriter(tmp_path, shard_size=100, prefix="mixed") as writer:
        for i in range(10):
            writer.write(f"good{i}", numbered_mp4, meta={"label": 1})
            if i in (2, 5, 8):
                key = list(bad)[i // 3]
                writer.write(key, bad[key][0], ext=bad[key][1], meta={"label": 0})
    url = f"{serve(tmp_path)}/mixed-000000.tar"
    cfg = data_config(url, batch_size=5, max_skip_fraction=1.0)  # 13 members -> 2 batches of 5 good ones
    stream = build_stream(cfg, mask_generator=None, seed=0)
    with caplog.at_level(logging.WARNING, logger="data_pipelines.streaming"):
        keys = [k for b in stream for k in b.keys]
    assert sorted(keys) == sorted(f"mixed-000000/good{i}" for i in range(10))
    stats = stream.stats()
    assert (stats["skipped"], stats["samples_seen"], stats["clips"]) == (3, 13, 10)
    assert sorted(stats["skipped_by_shard"][url]["keys"]) == sorted(f"mixed-000000/{k}" for k in bad)
    assert all(f"mixed-000000/{k}" in caplog.text for k in bad)
    strict = data_config(url, batch_size=5, max_skip_fraction=0.1, skip_check_min_samples=4)
    with pytest.raises(
        TooManyBadSamplesError, match=r"mixed-000000\.tar: 1/6 skipped \(e\.g\. mixed-000000/zero\)"
    ):
        list(build_stream(strict, mask_generator=None, seed=0))
    with pytest.raises(
        ValueError, match=r"data\.sources\.0\.path: cannot read streamed shard 'http://.*/gone\.tar'"
    ):
        build_stream(data_config(url.replace("mixed-000000", "gone")), mask_generator=None, seed=0)


def test_layout_errors_name_the_source(shard_dir: Path, data_config) -> None:
    two = _pipe(shard_dir, "shard-00000{0..1}.tar")
    with pytest.raises(
        ValueError, match=r"2 streamed shards per epoch \(pipe:cat .*\) for 2 ranks x 2 workers"
    ):
        build_stream(data_config(two, num_workers=2), mask_generator=None, seed=0, rank=1, world_size=2)
    mixed = [SourceConfig(path=two), SourceConfig(path=str(shard_dir))]
    with pytest.raises(ValueError, match=r"data\.sources\.1\.path: .* local path among streamed URL sources"):
        build_loader(data_config(sources=mixed), mask_generator=None, seed=0)
    with pytest.raises(
        ValueError, match=r"data\.sources\.0\.path: cannot read streamed shard 'pipe:cat /nonexistent"
    ):
        build_stream(data_config("pipe:cat /nonexistent/shard.tar"), mask_generator=None, seed=0)
    with pytest.raises(ValueError, match=r"data\.batch_size: the smallest reader's shards hold 16 samples"):
        build_stream(data_config(two, batch_size=20), mask_generator=None, seed=0)
    file_state = build_loader(data_config(shard_dir), mask_generator=None, seed=0).state_dict()
    with pytest.raises(ValueError, match="saved by a 'file loader' stream"):
        build_stream(data_config(two), mask_generator=None, seed=0, state=file_state)
    urls = (
        "pipe:cat /a/b/shard-000007.tar",
        "pipe:aws s3 cp s3://b/shard-000007.tar -",
        "https://h/shard-000007.tar",
    )
    assert {StreamShard(url, 1).name for url in urls} == {"shard-000007"}  # what sample keys start with
