"""The data section of the config: sources, clip sampling, augmentation, loader and bad-data policy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SourceConfig:
    """One data source: a shard folder/glob, a CSV list (`path label` lines) or a folder of videos."""

    path: str = ""
    kind: str = "auto"  # auto | shards | csv | folder
    weight: float = 1.0


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic (clips generated in memory, no files) | files (the sources below)
    sources: list[SourceConfig] = field(default_factory=list)
    frames_per_clip: int = 16
    frame_step: int = 4
    crop_size: int = 224
    batch_size: int = 24  # per rank
    num_workers: int = 2
