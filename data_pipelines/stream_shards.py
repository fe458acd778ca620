"""Streamed tar shards, one shard at a time: which paths are URLs (`http(s)://`, `pipe:`), how many samples a
shard holds (a pass over member names only), and reading its samples through webdataset from a member on,
skipping the ones before it without keeping their data. `streaming.py` builds the training stream on these.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander, tar_file_iterator

from data_pipelines.config import DataConfig
from data_pipelines.sources import VIDEO_EXTENSIONS, Source, Unit, expand_braces

__all__ = [
    "STREAM_PREFIXES",
    "VIDEO_EXTS",
    "StreamShard",
    "count_samples",
    "is_stream_url",
    "read_shard",
    "stream_shards",
]

STREAM_PREFIXES = ("http://", "https://", "pipe:")
VIDEO_EXTS = {ext.lstrip(".") for ext in VIDEO_EXTENSIONS}


def is_stream_url(path: str) -> bool:
    """Whether a source path names streamed shards (this module) rather than local files."""
    return path.startswith(STREAM_PREFIXES)


@dataclass(frozen=True)
class StreamShard:
    url: str
    samples: int  # stated (`samples_per_shard`) or counted

    @property
    def name(self) -> str:
        """What sample keys start with: the shard's file name without `.tar` (for `pipe:`, that of the
        command's last word naming a `.tar`, else of its last word)."""
        if self.url.startswith("pipe:"):
            words = self.url.removeprefix("pipe:").split() or [""]
            path = ([w for w in words if ".tar" in w] or words)[-1]
        else:
            path = urlparse(self.url).path
        return path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar")


class _SampleCounter:
    """Numbers samples as tar member names stream past, grouped as webdataset groups them (runs of members
    sharing a key), and selects the members of samples `skip` and later (the others' data is not kept)."""

    def __init__(self, skip: int = 0) -> None:
        self.skip, self.count = skip, 0
        self._key: str | None = None

    def __call__(self, name: str) -> bool:
        key, _ = base_plus_ext(name)
        if key is None:
            return False
        if key != self._key:
            self._key, self.count = key, self.count + 1
        return self.count > self.skip


def _close(stream: Any, *, early: bool) -> None:
    """Closes a gopen stream; after an early stop the writer (cat, curl) dies of the closed pipe, which is
    no error."""
    try:
        stream.close()
    except OSError:
        if not early:
            raise


def count_samples(url: str) -> int:
    """Samples in a streamed shard, counted from its member names; the data streams past unread."""
    counter = _SampleCounter(skip=sys.maxsize)
    stream = gopen(url, "rb")
    try:
        for _ in tar_file_iterator(stream, select_files=counter):
            pass
    finally:
        _close(stream, early=False)
    return counter.count


def read_shard(url: str, skip: int = 0) -> Iterator[tuple[int, dict]]:
    """(m, webdataset sample dict) for samples m = skip, skip + 1, ... of a streamed shard; the first `skip`
    samples' members stream past without being kept or decoded."""
    stream = gopen(url, "rb")
    done = False
    try:
        files = tar_file_expander([{"url": url, "stream": stream}], select_files=_SampleCounter(skip))
        yield from enumerate(group_by_keys(files), start=skip)
        done = True
    finally:
        _close(stream, early=not done)


# ----------------------------------------------------------------------------- the epoch layout


def stream_shards(cfg: DataConfig, prefix: str = "data.sources") -> tuple[list[StreamShard], list[Source]]:
    """Every source's shard URLs with their sample counts, and the sources as `EpochPlan` reads them."""
    shards: list[StreamShard] = []
    sources: list[Source] = []
    for i, source in enumerate(cfg.sources):
        key = f"{prefix}.{i}"
        if not is_stream_url(source.path):
            raise ValueError(
                f"{key}.path: {source.path!r} is a local path among streamed URL sources; "
                f"stream every source ({', '.join(STREAM_PREFIXES)}) or none"
            )
        if source.kind not in ("auto", "shards"):
            raise ValueError(f"{key}.kind: URL sources are tar shards, got kind {source.kind!r}")
        if source.path.startswith(("http://", "https://")) and shutil.which("curl") is None:
            raise ValueError(f"{key}.path: webdataset reads http(s) URLs with curl, which is not on the PATH")
        urls = expand_braces(source.path)
        counts = [source.samples_per_shard or _counted(url, key) for url in urls]
        shards.extend(StreamShard(url, n) for url, n in zip(urls, counts, strict=True))
        sources.append(Source(source.path, source.weight, [Unit(url, None, []) for url in urls]))
    return shards, sources


def _counted(url: str, key: str) -> int:
    try:
        return count_samples(url)
    except (OSError, tarfile.TarError, ValueError) as err:  # curl/pipe exits, network, damaged tar
        raise ValueError(f"{key}.path: cannot read streamed shard {url!r}: {err}") from err
