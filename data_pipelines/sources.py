"""Where samples come from: tar shards, a CSV list or a folder of videos, enumerated into an index.

This module is the one place that knows what a video file is called (`VIDEO_EXTENSIONS`; an image source
also reads `IMAGE_EXTENSIONS`) and how a CSV list and a folder of videos are read; the shard writer uses
the same listing to pack them.

Tar shards follow the webdataset layout: members grouped by key (the path up to the first dot of the base
name), e.g. `KEY.mp4` + `KEY.json` (+ `KEY.cls`). Shards made by GNU `tar -cf` from a folder (`./KEY.mp4`,
directory entries, members in directory order rather than grouped) read the same.

Shards are indexed once, reading only the 512-byte member headers, into `Unit`s that record each member's
byte offset and size. That gives the exact sample count up front (equal batch counts on every rank), and
lets a reader fetch any sample with one seek: splitting at sample level and resuming mid-shard never read
the members before it. The cost is that shards must be seekable files (local disk or a mounted file
system), not pipes or URLs. A shard too short to hold one tar header (a 0-byte leftover of a killed
writer) is skipped with a warning; so are the members after the point where a truncated shard is damaged,
and a member cut off by the truncation is a bad sample reported as cut off.

A single video file given as a source is a one-video source (kind 'auto'; kind 'csv' refuses it).

Reads are bounded: with `timeout_s`, `SampleReader` reads on a helper thread (`timeout.TimeoutRunner`) and
a read that takes longer (a stalled network mount) is a bad sample (`ReadTimeoutError`); a path that is
not a regular file (a named pipe, a device) is refused before it is read, since reading one can block
forever.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import stat
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from data_pipelines.bad_samples import BadSampleError
from data_pipelines.config import SourceConfig
from data_pipelines.timeout import CallTimedOut, TimeoutRunner

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "HungReadsError",
    "Member",
    "RawSample",
    "ReadTimeoutError",
    "SampleEntry",
    "SampleReader",
    "Source",
    "Unit",
    "list_videos",
    "load_sources",
    "read_csv_list",
]

log = logging.getLogger(__name__)

# what a video file or a tar member holding a video may end with (lower case)
VIDEO_EXTENSIONS = (".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ogv", ".webm")
_VIDEO_EXTS = {ext.lstrip(".") for ext in VIDEO_EXTENSIONS}
# what an image source also reads (decoded with Pillow, data_pipelines/images.py)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp")
_IMAGE_EXTS = {ext.lstrip(".") for ext in IMAGE_EXTENSIONS}
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]+)$")  # webdataset's key.ext split
_BRACE = re.compile(r"\{([^{}]*)\}")
_GLOB_CHARS = set("*?[")
_TAR_BLOCK = 512  # a shard shorter than one header block holds no member
MAX_ABANDONED_READS = 4


class ReadTimeoutError(BadSampleError):
    """Reading one sample's bytes took longer than the bound (a stalled mount)."""


class HungReadsError(RuntimeError):
    """Several reads hung past the bound; their threads are stuck, so the process starts no more."""


@dataclass(frozen=True, slots=True)
class Member:
    """A tar member's data: `size` bytes starting at byte `offset` of the shard."""

    offset: int
    size: int


@dataclass(slots=True)
class SampleEntry:
    """One sample of a unit; `video` is a tar member, a file path, or None (no video member found); `image`:
    it holds an image (a 1-frame clip), not a video."""

    key: str  # "shard/key" for tar samples, the file path for CSV and folder samples
    video: Member | str | None
    label_member: Member | None = None  # KEY.cls or KEY.json in a tar
    label_format: str = ""  # "cls" | "json" (the format of label_member)
    label: int = -1  # known up front (CSV, class folders); -1 unknown
    members: str = ""  # the member extensions seen, for the error when `video` is None
    image: bool = False


@dataclass
class Unit:
    """A group of samples read together: one tar shard, or one video file."""

    shard: str  # what bad-sample reports name: the tar path, or the CSV/folder source
    tar: str | None  # the tar file holding the members; None for plain video files
    samples: list[SampleEntry]
    source: int = 0  # index of its source in data.sources (its clip length and fps)


@dataclass
class Source:
    path: str
    weight: float
    units: list[Unit]

    @property
    def num_samples(self) -> int:
        return sum(len(u.samples) for u in self.units)


@dataclass
class RawSample:
    key: str
    shard: str
    data: bytes
    label: int


# ----------------------------------------------------------------------------- enumerating sources


def read_csv_list(csv_path: Path) -> list[tuple[Path, int]]:
    """`path label` lines, space-separated, no header; label = last token (paths may contain spaces);
    relative paths are relative to the CSV's folder."""
    if csv_path.suffix.lower() in VIDEO_EXTENSIONS:
        raise ValueError(f"{csv_path}: a video file, not a CSV list of 'path label' lines")
    try:
        text = csv_path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{csv_path}: not a text CSV list of 'path label' lines ({err})") from None
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{csv_path}:{lineno}: expected 'path label', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise ValueError(f"{csv_path}:{lineno}: label must be an integer, got {parts[1]!r}") from None
        path = Path(parts[0])
        items.append((path if path.is_absolute() else csv_path.parent / path, label))
    return items


def list_videos(folder: str | Path, *, images: bool = False) -> tuple[list[tuple[Path, int]], list[str]]:
    """Videos (and with `images` also image files) under `folder` (recursive, sorted) with labels and label
    names.

    When every file sits inside a subfolder, the top-level subfolder names (sorted) are the classes and a
    file's label is its class index; otherwise every label is -1 and there are no names.
    """
    root = Path(folder)
    exts = VIDEO_EXTENSIONS + (IMAGE_EXTENSIONS if images else ())
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    rel = [p.relative_to(root) for p in paths]
    if rel and all(len(r.parts) >= 2 for r in rel):
        names = sorted({r.parts[0] for r in rel})
        index = {name: i for i, name in enumerate(names)}
        return [(p, index[r.parts[0]]) for p, r in zip(paths, rel)], names
    return [(p, -1) for p in paths], []


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> three names (zero padding kept); `{x,y}` lists; several braces multiply."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        lo, hi, width = int(span.group(1)), int(span.group(2)), len(span.group(1))
        items = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [name for item in items for name in expand_braces(head + item + tail)]


def shard_paths(path: str, key: str) -> list[str]:
    """The tar files named by a folder, a glob or a brace pattern, in sorted order."""
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
    else:
        found = []
        for name in expand_braces(path):
            if _GLOB_CHARS & set(name):
                found.extend(sorted(glob.glob(name)))
            elif os.path.isfile(name):
                found.append(name)
            else:
                raise ValueError(f"{key}: shard {name!r} does not exist")
    if not found:
        raise ValueError(f"{key}: no .tar shards found at {path!r}")
    return found


def _resolve_kind(cfg: SourceConfig) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    path = cfg.path
    if "{" in path or _GLOB_CHARS & set(path) or path.endswith(".tar"):
        return "shards"
    if os.path.isdir(path):
        return "shards" if glob.glob(os.path.join(glob.escape(path), "*.tar")) else "folder"
    if not os.path.exists(path) and not os.path.splitext(path.rstrip("/"))[1]:
        return "folder"  # a missing path without a file extension was meant as a folder
    return "csv"


def _split_name(name: str) -> tuple[str, str] | None:
    while name.startswith("./"):
        name = name[2:]
    m = _MEMBER_NAME.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


def _entry_from_members(
    shard_name: str, key: str, members: dict[str, Member], images: bool = False
) -> SampleEntry:
    """A tar sample: its video member, else (in an image source) its image member."""
    videos = [ext for ext in members if ext.rsplit(".", 1)[-1] in _VIDEO_EXTS]
    pictures = [ext for ext in members if ext.rsplit(".", 1)[-1] in _IMAGE_EXTS] if images else []
    chosen = (videos or pictures or [None])[0]
    entry = SampleEntry(
        key=f"{shard_name}/{key}",
        video=members[chosen] if chosen is not None else None,
        members=",".join(sorted(members)),
        image=not videos and bool(pictures),
    )
    for fmt in ("cls", "json"):
        if fmt in members:
            entry.label_member, entry.label_format = members[fmt], fmt
            break
    return entry


def index_tar(path: str, key: str, *, images: bool = False) -> Unit:
    """Reads a shard's member headers (not their data) and groups members by sample key.

    Members of one key need not be adjacent (GNU tar stores a folder in directory order, not sorted);
    samples keep the order of their first member.
    """
    shard_name = Path(path).name.removesuffix(".tar")
    size = os.path.getsize(path)
    groups: dict[str, dict[str, Member]] = {}
    if size < _TAR_BLOCK:
        log.warning(
            "shard %s holds %d bytes, not one tar header (a killed writer's leftover?); skipping it",
            path,
            size,
        )
        return Unit(shard=path, tar=path, samples=[])
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"{key}: cannot read shard {path!r} as an uncompressed tar: {err}") from err
    with tar:
        try:
            for info in tar:
                split = _split_name(info.name) if info.isfile() else None
                if split is None:
                    continue
                # a member cut off by truncation stays in: reading it reports it as cut off
                groups.setdefault(split[0], {})[split[1]] = Member(info.offset_data, info.size)
        except tarfile.TarError as err:
            log.warning("shard %s is damaged after %d samples (%s); reading those", path, len(groups), err)
    entries = [_entry_from_members(shard_name, k, members, images) for k, members in groups.items()]
    return Unit(shard=path, tar=path, samples=entries)


def _file_units(items: list[tuple[Path, int]], shard: str, root: Path | None) -> list[Unit]:
    units = []
    for path, label in items:
        key = str(path.relative_to(root)) if root is not None else str(path)
        image = path.suffix.lower() in IMAGE_EXTENSIONS
        entry = SampleEntry(key=key, video=str(path), label=label, image=image)
        units.append(Unit(shard=shard, tar=None, samples=[entry]))
    return units


def load_source(cfg: SourceConfig, key: str, *, images: bool = False, index: int = 0) -> Source:
    """Enumerates one source's units (also its image files with `images`: an image source); errors name
    `key` (e.g. `data.sources.0`). `index`: the source's place in data.sources."""
    kind = _resolve_kind(cfg)
    if kind == "shards":
        units = [index_tar(p, f"{key}.path", images=images) for p in shard_paths(cfg.path, f"{key}.path")]
        units = [u for u in units if u.samples]
    elif kind == "csv":
        if not os.path.isfile(cfg.path):
            raise ValueError(f"{key}.path: CSV list {cfg.path!r} does not exist")
        if cfg.kind == "auto" and Path(cfg.path).suffix.lower() in VIDEO_EXTENSIONS:
            units = _file_units([(Path(cfg.path), -1)], cfg.path, None)  # one video, no label
        else:
            try:
                units = _file_units(read_csv_list(Path(cfg.path)), cfg.path, None)
            except ValueError as err:
                raise ValueError(f"{key}.path: {err}") from None
    else:
        if not os.path.isdir(cfg.path):
            raise ValueError(f"{key}.path: folder {cfg.path!r} does not exist")
        items, _ = list_videos(cfg.path, images=images)
        units = _file_units(items, cfg.path, Path(cfg.path))
    for unit in units:
        unit.source = index
    source = Source(path=cfg.path, weight=cfg.weight, units=units)
    if source.num_samples == 0:
        raise ValueError(f"{key}.path: no samples found in {cfg.path!r} (kind {kind})")
    return source


def load_sources(
    configs: list[SourceConfig], prefix: str = "data.sources", *, default_frames: int | None = None
) -> list[Source]:
    """Every source's units; a source whose clips are 1 frame long (its own frames_per_clip, else
    `default_frames`) is an image source."""
    if not configs:
        raise ValueError(f"{prefix}: at least one source is needed")
    return [
        load_source(
            cfg,
            f"{prefix}.{i}",
            images=(cfg.frames_per_clip if cfg.frames_per_clip is not None else default_frames) == 1,
            index=i,
        )
        for i, cfg in enumerate(configs)
    ]


# ----------------------------------------------------------------------------- reading samples


def _parse_label(data: bytes, fmt: str) -> int:
    """The integer label of a KEY.cls / KEY.json member; -1 when it has none."""
    try:
        if fmt == "cls":
            return int(data.decode().strip())
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadSampleError(f"unreadable {fmt} label member: {err}") from err
    label = meta.get("label") if isinstance(meta, dict) else None
    return label if isinstance(label, int) and not isinstance(label, bool) else -1


def _read_file(path: str) -> bytes:
    """A plain video file's bytes; a path that is not a regular file is refused unread (opened without
    blocking: opening a named pipe for reading otherwise waits for a writer)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
            raise BadSampleError(f"{path} is {kind}, not a video file")
        return f.read()


class SampleReader:
    """Reads samples' bytes, keeping a few shards open (one reader per worker process). With `timeout_s`
    > 0 each sample's read runs on a helper thread and is given up after `timeout_s` seconds."""

    def __init__(self, max_open: int = 16, *, timeout_s: float = 0.0) -> None:
        self.max_open = max_open
        self.timeout_s = timeout_s
        self._files: OrderedDict[str, BinaryIO] = OrderedDict()
        self._runner = TimeoutRunner("sample-read")

    def _read(self, tar: str, member: Member) -> bytes:
        f = self._files.pop(tar, None)
        if f is None:
            f = open(tar, "rb")  # kept open across samples; closed on eviction
            while len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
        self._files[tar] = f
        f.seek(member.offset)
        data = f.read(member.size)
        if len(data) != member.size:
            raise BadSampleError(
                f"member cut off by the shard's truncation: {len(data)} of {member.size} bytes in the file"
            )
        return data

    def _read_sample(self, unit: Unit, entry: SampleEntry) -> RawSample:
        if entry.video is None:
            raise BadSampleError(f"no video member (members: {entry.members or 'none'})")
        try:
            if isinstance(entry.video, str):
                data = _read_file(entry.video)
            else:
                assert unit.tar is not None
                data = self._read(unit.tar, entry.video)
            label = entry.label
            if entry.label_member is not None:
                assert unit.tar is not None
                label = _parse_label(self._read(unit.tar, entry.label_member), entry.label_format)
        except OSError as err:
            raise BadSampleError(f"cannot read: {err}") from err
        return RawSample(key=entry.key, shard=unit.shard, data=data, label=label)

    def read(self, unit: Unit, entry: SampleEntry) -> RawSample:
        """The sample's video bytes and label; BadSampleError if they cannot be read (ReadTimeoutError
        past the bound)."""
        if self.timeout_s <= 0:
            return self._read_sample(unit, entry)
        if self._runner.abandoned >= MAX_ABANDONED_READS:
            raise HungReadsError(
                f"{self._runner.abandoned} sample reads hung past data.decode_timeout_s={self.timeout_s}; "
                "their threads are stuck in the file system, refusing to start more (check the mounts)"
            )
        try:
            return self._runner(lambda: self._read_sample(unit, entry), self.timeout_s)
        except CallTimedOut:
            if unit.tar is not None:  # its stuck thread holds the file's lock: open it afresh next time
                self._files.pop(unit.tar, None)
            raise ReadTimeoutError(f"reading took longer than {self.timeout_s} s") from None

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()
