"""The evaluation clip reader: every video gives S temporal segments x V spatial views, no augmentation.

Shape legend: S segments, V spatial views, T frames per clip, H/W pixels, c crop pixels.

Which frames: `sampling.clip_indices` without a generator, the middle clip of each of S equal parts of the
clip-start range (one centred clip when S = 1), short videos padded with their last frame. Which pixels:
`transforms.spatial_views`, the short side resized to c, then c x c crops at the centre (V = 1) or at the
start, middle and end of the long side (V = 3). A video's clips are ordered segment-major: clip s * V + v
is segment s, view v.

Samples come from `sources` (tar shards, a CSV list or a folder of videos) and are decoded by `decode`; a
sample that cannot be read or decoded is skipped and logged with its key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from data_pipelines.bad_samples import BadSampleError
from data_pipelines.config import SourceConfig
from data_pipelines.decode import VideoDecoder
from data_pipelines.sampling import clip_indices
from data_pipelines.sources import SampleEntry, SampleReader, Unit, load_sources
from data_pipelines.transforms import spatial_views

__all__ = ["EvalClipSpec", "EvalVideo", "EvalVideos", "find_splits", "iter_eval_videos", "list_eval_samples"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EvalClipSpec:
    """How clips are cut from every video for evaluation."""

    frames: int = 16
    frame_step: int = 4  # source frames between sampled frames
    crop: int = 224
    segments: int = 1
    views: int = 1  # 1: centre crop | 3: three crops along the long side
    decoder: str = "auto"
    decode_timeout_s: float = 30.0

    def validate(self) -> None:
        for name in ("frames", "frame_step", "crop", "segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.views not in (1, 3):
            raise ValueError(
                f"--views: must be 1 (centre crop) or 3 (crops along the long side), got {self.views}"
            )

    @property
    def clips_per_video(self) -> int:
        return self.segments * self.views


@dataclass
class EvalVideo:
    key: str
    label: int  # -1 when the sample carries no label
    clips: torch.Tensor  # [S*V, 3, T, c, c] uint8, segment-major


@dataclass
class Skipped:
    key: str
    reason: str


def find_splits(data: str | Path) -> dict[str, str]:
    """{split: path} for a dataset folder holding train/ (and val/, test/) sample folders or shards;
    otherwise {"features": data}, one split named after the default output file."""
    root = Path(data)
    found = {s: str(root / s) for s in SPLITS if (root / s).is_dir() and any((root / s).iterdir())}
    return found or {"features": str(data)}


def list_eval_samples(data: str | Path) -> list[tuple[Unit, SampleEntry]]:
    """Every sample of a shard folder / glob / brace pattern, CSV list or video folder, in source order."""
    pattern = any(c in str(data) for c in "*?[{")
    if not pattern and not Path(data).exists():
        raise ValueError(f"--data: {data} does not exist")
    (source,) = load_sources([SourceConfig(path=str(data))], prefix="--data")
    return [(unit, entry) for unit in source.units for entry in unit.samples]


class EvalVideos(Dataset):
    """Map-style: index -> EvalVideo, or Skipped when the sample cannot be read or decoded. Readers and
    decoders are made lazily, so each DataLoader worker process gets its own."""

    def __init__(self, samples: list[tuple[Unit, SampleEntry]], spec: EvalClipSpec) -> None:
        spec.validate()
        self.samples, self.spec = samples, spec
        self._reader: SampleReader | None = None
        self._decoder: VideoDecoder | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def _pick(self, num_frames: int, video_fps: float) -> np.ndarray:
        s = self.spec
        return clip_indices(
            num_frames,
            video_fps,
            frames=s.frames,
            frame_step=s.frame_step,
            fps=None,
            num_clips=s.segments,
            pad=True,
            rng=None,
        )  # [S, T]

    def __getitem__(self, index: int) -> EvalVideo | Skipped:
        unit, entry = self.samples[index]
        if self._reader is None or self._decoder is None:
            self._reader = SampleReader(timeout_s=self.spec.decode_timeout_s)
            self._decoder = VideoDecoder(self.spec.decoder, timeout_s=self.spec.decode_timeout_s)
        try:
            raw = self._reader.read(unit, entry)
            video = self._decoder(raw.data, self._pick)  # frames [S, T, H, W, 3]
        except BadSampleError as err:
            return Skipped(entry.key, str(err))
        s = self.spec
        views = [spatial_views(clip, crop=s.crop, views=s.views) for clip in video.frames]  # S x [V, ...]
        return EvalVideo(entry.key, raw.label, torch.cat(views))  # [S*V, 3, T, c, c]


def _as_is(item: EvalVideo | Skipped) -> EvalVideo | Skipped:
    return item


def iter_eval_videos(
    data: str | Path | list[tuple[Unit, SampleEntry]],
    spec: EvalClipSpec,
    *,
    workers: int = 0,
    skipped: list[str] | None = None,
    indices: Sequence[int] | None = None,
) -> Iterator[EvalVideo]:
    """The eval clips of every usable sample of `data` (a dataset path, or its `list_eval_samples` listing), in
    source order (identical on every run); with `indices`, of those samples only, in that order.
    Skipped samples are logged and their keys appended to `skipped`."""
    dataset = EvalVideos(data if isinstance(data, list) else list_eval_samples(data), spec)
    subset = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(subset, batch_size=None, num_workers=workers, collate_fn=_as_is)
    for item in loader:
        if isinstance(item, Skipped):
            log.warning("skipping sample %s: %s", item.key, item.reason)
            if skipped is not None:
                skipped.append(item.key)
            continue
        yield item
