"""Tar shards in the webdataset layout (`KEY.mp4` video bytes + `KEY.json` metadata), and `pack_videos`,
which packs a user's CSV list or folder of videos into such shards.

webdataset groups consecutive tar members by key, the part of the basename before its first dot, so keys
here never contain a dot or a slash. Shards are written to `NAME.tar.tmp` and renamed when complete: a
crash leaves no half-written `.tar` for a reader to pick up.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import re
import tarfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from data_pipelines.encode import probe_video, reencode_video
from data_pipelines.sources import list_videos, read_csv_list

__all__ = ["ShardWriter", "pack_videos", "safe_key"]

log = logging.getLogger(__name__)

_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MTIME = 946684800  # fixed member timestamp (2000-01-01) so identical inputs give identical shards


def safe_key(index: int, stem: str, *, max_stem: int = 60) -> str:
    """A unique, webdataset-safe key from a running index and a file stem (other characters become `_`)."""
    clean = _UNSAFE.sub("_", stem).strip("_")[:max_stem]
    return f"{index:06d}_{clean}" if clean else f"{index:06d}"


class ShardWriter:
    """Writes samples into `DIR/PREFIX-000000.tar`, `DIR/PREFIX-000001.tar`, ... with `shard_size` each.

    Shards already in DIR with the same prefix are an error (a reader would mix old and new samples)
    unless `overwrite`, which deletes them first.
    """

    def __init__(
        self, out_dir: str | Path, *, shard_size: int = 256, prefix: str = "shard", overwrite: bool = False
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not _KEY_OK.match(prefix):
            raise ValueError(f"prefix must match [A-Za-z0-9_-]+, got {prefix!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(self.out_dir.glob(f"{prefix}-*.tar")) + sorted(self.out_dir.glob(f"{prefix}-*.tar.tmp"))
        if old and not overwrite:
            raise ValueError(
                f"{self.out_dir} already holds {len(old)} '{prefix}-*.tar' shards; use another folder"
            )
        for path in old:
            log.info("removing old shard %s", path)
            path.unlink()
        self.shard_size = shard_size
        self.prefix = prefix
        self.shards: list[Path] = []
        self.samples = 0
        self._keys: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._in_shard = 0

    def write(
        self,
        key: str,
        payload: bytes,
        *,
        ext: str = "mp4",
        meta: Mapping[str, object] | None = None,
        extra: Mapping[str, bytes] | None = None,
    ) -> None:
        """Add one sample: `KEY.EXT` (payload), `KEY.json` (meta) and any `extra` {ext: bytes} members.

        A `label` >= 0 in `meta` is also written as `KEY.cls` (its decimal text), the webdataset convention.
        """
        if not _KEY_OK.match(key):
            raise ValueError(f"sample key {key!r} must be non-empty and match [A-Za-z0-9_-]+ (no dots)")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        members: dict[str, bytes] = {ext: payload}
        if meta is not None:
            members["json"] = json.dumps(dict(meta), sort_keys=True).encode()
            label = meta.get("label")
            if isinstance(label, int) and label >= 0:
                members["cls"] = str(label).encode()
        for name, data in (extra or {}).items():
            if name in members:
                raise ValueError(f"extra member {name!r} for key {key!r} clashes with a standard member")
            members[name] = data
        if self._tar is None:
            self._open_next()
        assert self._tar is not None
        for name, data in members.items():
            self._add(f"{key}.{name}", data)
        self._keys.add(key)
        self.samples += 1
        self._in_shard += 1
        if self._in_shard >= self.shard_size:
            self._finish_current()

    def close(self) -> list[Path]:
        """Finish the open shard; return every shard written."""
        self._finish_current()
        return list(self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # leave no partial shard behind on failure
            self._abort_current()

    def _open_next(self) -> None:
        final = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = final.with_name(final.name + ".tmp")
        self._tar = tarfile.open(self._tmp, mode="w", format=tarfile.USTAR_FORMAT)
        self._in_shard = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
        info.uname = info.gname = "vjepa"
        self._tar.addfile(info, io.BytesIO(data))

    def _finish_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        assert self._tmp is not None
        final = self._tmp.with_name(self._tmp.name[: -len(".tmp")])
        os.replace(self._tmp, final)
        self.shards.append(final)
        self._tar, self._tmp = None, None

    def _abort_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)
            self._tar, self._tmp = None, None


def _prepare(job: tuple[int, str, bool, int, int | None, int]) -> tuple[int, bytes | None, dict | str]:
    """Worker: read, validate (one full decode) and optionally re-encode one video.

    Returns (index, bytes, probe) or (index, None, reason).
    """
    index, path, reencode, gop, short_side, threads = job
    try:
        data = Path(path).read_bytes()
        if reencode:
            # the re-encode decodes every frame, so it is the validation; the probe reads the small output
            data = reencode_video(data, gop=gop, short_side=short_side, threads=threads)
        return index, data, probe_video(data)
    except (OSError, ValueError) as err:
        return index, None, f"{type(err).__name__}: {err}"


def _results(jobs: list[tuple], workers: int) -> Iterator[tuple[int, bytes | None, dict | str]]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_prepare, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_prepare, jobs, chunksize=1)


def pack_videos(
    input: str | Path,
    out: str | Path,
    *,
    shard_size: int = 256,
    reencode: bool = False,
    gop: int = 16,
    short_side: int | None = None,
    workers: int = 2,
    prefix: str = "shard",
) -> dict:
    """Pack a CSV list (`path label` lines) or a folder of videos into tar shards under `out`.

    Every video is decoded once; unreadable ones are skipped, logged with their path and reported in the
    summary. Shards from an earlier run with the same prefix in `out` are replaced. Writes
    `out/summary.json` (and `out/classes.json` when a folder has class subfolders).
    """
    start = time.perf_counter()
    src, out = Path(input), Path(out)
    if src.is_dir():
        items, names = list_videos(src)
    elif src.is_file():
        items, names = read_csv_list(src), []
    else:
        raise ValueError(f"input {str(src)!r} is neither a CSV file nor a folder")
    ext_of = {i: (p.suffix.lower().lstrip(".") or "mp4") for i, (p, _) in enumerate(items)}
    threads = 1 if workers > 1 else 0  # parallel processes, not encoder threads, when there are several
    jobs = [(i, str(p), reencode, gop, short_side, threads) for i, (p, _) in enumerate(items)]
    skipped: list[dict[str, str]] = []
    with ShardWriter(out, shard_size=shard_size, prefix=prefix, overwrite=True) as writer:
        for index, data, info in _results(jobs, workers):
            path, label = items[index]
            if data is None:
                log.warning("skipping %s: %s", path, info)
                skipped.append({"path": str(path), "reason": str(info)})
                continue
            meta = {
                "label": label,
                "source": str(path),
                **{k: info[k] for k in ("fps", "frames", "height", "width")},
            }
            if names:
                meta["class"] = names[label]
            writer.write(
                safe_key(index, path.stem), data, ext="mp4" if reencode else ext_of[index], meta=meta
            )
    summary = {
        "written": writer.samples,
        "skipped": len(skipped),
        "shards": len(writer.shards),
        "skipped_files": skipped,
        "seconds": round(time.perf_counter() - start, 3),
        "out": str(out),
        "classes": names,
    }
    if names:
        (out / "classes.json").write_text(json.dumps(names, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
