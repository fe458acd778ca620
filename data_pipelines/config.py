"""The data section of the config: sources, clip sampling, augmentation, loader and bad-data policy."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from data_pipelines.checks import check, check_fields, check_range

SourceKind = Literal["auto", "shards", "csv", "folder"]
Dataset = Literal["synthetic", "files"]  # synthetic: clips generated in memory, no files; files: the sources
Decoder = Literal["auto", "decord", "pyav"]  # auto: decord, else PyAV
# sources streamed with webdataset (data_pipelines.streaming), not paths on this machine
STREAM_PREFIXES = ("http://", "https://", "pipe:")


@dataclass
class SourceConfig:
    """One data source: tar shards (a folder, a glob or `shard-{000000..000009}.tar`), a CSV list
    (`path label` lines, space-separated, no header; relative paths are relative to the CSV's folder) or
    a folder of videos (labels from class subfolders when every video sits in one, else -1).

    `weight` scales how many of the source's shards (or videos) one epoch draws: 1.0 = each once, 2.0 =
    each twice, 0.5 = a different seeded half every epoch.

    Several clip lengths in one run: a source may sample its own `frames_per_clip` (at most
    data.frames_per_clip, which the model is built for) and `fps`. A source with `frames_per_clip: 1` is an
    image source: its JPEG/PNG files (in a folder, a CSV list or tar shards) are 1-frame clips, and a video
    in it gives one random frame. A batch then holds one group per clip length (see batch.MixedBatch).
    """

    path: str = ""
    kind: SourceKind = "auto"
    weight: float = 1.0
    samples_per_shard: int = 0  # streamed URL shards: samples in each, spares the counting pass (0: count)
    frames_per_clip: int | None = None  # None: data.frames_per_clip; 1: an image source
    fps: float | None = None  # None: data.fps (and data.frame_step)

    def validate(self, prefix: str = "source") -> None:
        check_fields(self, prefix)
        check(bool(self.path), f"{prefix}.path", "must name a shard folder/pattern, a CSV file or a folder")
        check(self.weight > 0, f"{prefix}.weight", f"must be > 0, got {self.weight}")
        check(self.samples_per_shard >= 0, f"{prefix}.samples_per_shard", "must be >= 0 (0: count)")
        frames = self.frames_per_clip
        check(
            frames is None or frames >= 1, f"{prefix}.frames_per_clip", f"must be >= 1 or null, got {frames}"
        )
        check(self.fps is None or self.fps > 0, f"{prefix}.fps", f"must be > 0 or null, got {self.fps}")
        own = frames is not None or self.fps is not None
        check(
            not (own and self.path.startswith(STREAM_PREFIXES)),
            f"{prefix}.frames_per_clip",
            "a clip length or fps of its own is read from local sources only (streamed sources use "
            "data.frames_per_clip and data.fps)",
        )

    def check_path(self, prefix: str = "source") -> None:
        """The path exists in the form its kind needs: a folder, a CSV file, or tar files the shard pattern
        matches. Asks the file system only (opens no file); a streamed URL is checked when it is opened."""
        if self.path.startswith(STREAM_PREFIXES):
            return
        from data_pipelines.sources import VIDEO_EXTENSIONS, _resolve_kind, shard_paths

        key, kind = f"{prefix}.path", _resolve_kind(self)
        if kind == "shards":
            shard_paths(self.path, key)
        elif kind == "csv":
            video = self.kind == "auto" and os.path.splitext(self.path)[1].lower() in VIDEO_EXTENSIONS
            check(not os.path.isdir(self.path), key, f"{self.path!r} is a folder, not a CSV list")
            what = "video file" if video else "CSV list"
            check(os.path.isfile(self.path), key, f"{what} {self.path!r} does not exist")
        else:
            check(os.path.isdir(self.path), key, f"folder {self.path!r} does not exist")


@dataclass
class DataConfig:
    dataset: Dataset = "synthetic"
    sources: list[SourceConfig] = field(default_factory=list)
    # clip sampling
    frames_per_clip: int = 16
    frame_step: int = 4  # source frames between sampled frames (ignored when `fps` is set)
    fps: float | None = None  # sample at this rate instead, from each video's own frame rate
    num_clips: int = 1  # clips cut from one decoded video; they are consecutive rows of a batch
    pad_short: bool = True  # repeat the last frame of too-short videos; False skips them as bad samples
    # augmentation (one random resized crop and flip per clip)
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.3, 1.0)  # crop area as a fraction of the frame
    crop_aspect: tuple[float, float] = (0.75, 1.35)  # crop width / height
    hflip: float = 0.5  # probability of a horizontal flip
    # loader
    batch_size: int = 24  # clips per rank (num_clips clips per video)
    num_workers: int = 2
    decoder: Decoder = "auto"
    decode_timeout_s: float = 30.0  # bound on one video's decode; 0 disables the bound
    shuffle: bool = True  # seeded shard order and shuffle buffer; False reads in source order
    shuffle_buffer: int = 256  # samples mixed by the shuffle buffer (per rank); 0 or 1 disables it
    resampled: bool = False  # infinite stream for pretraining: epochs follow each other, each reshuffled
    drop_last: bool = True  # drop the epoch's remainder; False pads the last batch by wrapping around
    # bad data
    max_skip_fraction: float = 0.05  # error when more than this fraction of samples fails to load ...
    skip_check_min_samples: int = 100  # ... once at least this many samples were tried

    def validate(self, prefix: str = "data") -> None:
        """Checks every field; a ValueError names the offending key (`prefix.field`)."""
        check_fields(self, prefix)
        if self.dataset == "files":
            check(len(self.sources) >= 1, f"{prefix}.sources", "dataset 'files' needs at least one source")
        else:  # the synthetic stream would silently ignore them
            check(
                not self.sources,
                f"{prefix}.sources",
                f"given while {prefix}.dataset={self.dataset!r}; set {prefix}.dataset=files to read them",
            )
        for i, source in enumerate(self.sources):
            source.validate(f"{prefix}.sources.{i}")
            check(
                self.source_frames(source) <= self.frames_per_clip,
                f"{prefix}.sources.{i}.frames_per_clip",
                f"{source.frames_per_clip} is more than {prefix}.frames_per_clip={self.frames_per_clip}, the "
                "longest clip (the model is built for it)",
            )
        streamed = [i for i, src in enumerate(self.sources) if src.path.startswith(STREAM_PREFIXES)]
        check(
            not streamed or len(self.clip_lengths()) == 1,
            f"{prefix}.sources.{streamed[0] if streamed else 0}.path",
            "streamed sources cannot be mixed with sources of another clip length (several lengths are read "
            "from local sources only)",
        )
        for key in ("frames_per_clip", "frame_step", "num_clips", "crop_size", "batch_size"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", f"must be >= 1, got {getattr(self, key)}")
        check(self.fps is None or self.fps > 0, f"{prefix}.fps", f"must be > 0 or null, got {self.fps}")
        check(
            self.batch_size % self.num_clips == 0,
            f"{prefix}.batch_size",
            f"{self.batch_size} is not divisible by {prefix}.num_clips={self.num_clips}",
        )
        check_range(self.crop_scale, f"{prefix}.crop_scale", lo=0.0, hi=1.0)
        check_range(self.crop_aspect, f"{prefix}.crop_aspect", lo=0.0, hi=float("inf"))
        check(0.0 <= self.hflip <= 1.0, f"{prefix}.hflip", f"must be in [0, 1], got {self.hflip}")
        check(self.num_workers >= 0, f"{prefix}.num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.decode_timeout_s >= 0, f"{prefix}.decode_timeout_s", "must be >= 0 (0 disables it)")
        check(self.shuffle_buffer >= 0, f"{prefix}.shuffle_buffer", "must be >= 0")
        check(
            0.0 <= self.max_skip_fraction <= 1.0,
            f"{prefix}.max_skip_fraction",
            f"must be in [0, 1], got {self.max_skip_fraction}",
        )
        check(self.skip_check_min_samples >= 0, f"{prefix}.skip_check_min_samples", "must be >= 0")

    def source_frames(self, source: SourceConfig) -> int:
        """The frames per clip that `source` samples."""
        return self.frames_per_clip if source.frames_per_clip is None else source.frames_per_clip

    def clip_lengths(self) -> list[int]:
        """Every clip length a batch can hold, longest first: data.frames_per_clip, then the sources' own.
        Length index l (this order) and mask configuration k select the predictor's mask token l * M + k."""
        own = {self.source_frames(s) for s in self.sources} if self.dataset == "files" else set()
        return [self.frames_per_clip, *sorted(own - {self.frames_per_clip}, reverse=True)]

    def check_paths(self, prefix: str = "data") -> None:
        """Every source path exists (see `SourceConfig.check_path`): run before a training run writes
        anything, apart from `validate` so that a config can be read where its data is not mounted."""
        if self.dataset == "files":
            for i, source in enumerate(self.sources):
                source.check_path(f"{prefix}.sources.{i}")
