"""The training streams behind one protocol: the file loader and the in-memory synthetic clips, the
builder that picks between them, and the public names of data_pipelines."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch

import data_pipelines
from data_pipelines import BatchStream, DataConfig, MaskGenerator, build_train_stream, default_mask_specs
from data_pipelines.loader import VideoLoader
from data_pipelines.synthetic_stream import InMemorySynthetic


def _synthetic(**overrides: object) -> DataConfig:
    fields: dict[str, object] = dict(dataset="synthetic", frames_per_clip=4, crop_size=32, batch_size=3)
    fields.update(overrides)
    return DataConfig(**fields)


def _masks(rank: int = 0) -> MaskGenerator:
    return MaskGenerator(default_mask_specs(), grid=(2, 2, 2), seed=3, rank=rank)


def _same(a, b) -> bool:
    return (
        a.keys == b.keys
        and torch.equal(a.clips, b.clips)
        and torch.equal(a.labels, b.labels)
        and all(torch.equal(m.context_idx, n.context_idx) for m, n in zip(a.masks, b.masks, strict=True))
    )


def test_both_streams_implement_the_protocol(shard_dir: Path, data_config) -> None:
    files = build_train_stream(data_config(shard_dir), mask_generator=None, seed=0)
    synthetic = build_train_stream(_synthetic(), mask_generator=None, seed=0)
    assert isinstance(files, VideoLoader) and isinstance(synthetic, InMemorySynthetic)
    for stream in (files, synthetic):
        assert isinstance(stream, BatchStream)
        batch = next(iter(stream))
        assert batch.clips.dtype == torch.uint8 and batch.clips.shape[:3] == (len(batch.keys), 3, 4)
        assert {"clips", "skipped"} <= set(stream.stats()) and stream.stats()["skipped"] == 0
    assert not isinstance(object(), BatchStream)


def test_synthetic_stream_resumes_exactly_and_ranks_differ() -> None:
    cfg = _synthetic()
    reference = list(islice(build_train_stream(cfg, mask_generator=_masks(), seed=1), 5))
    first = build_train_stream(cfg, mask_generator=_masks(), seed=1)
    assert all(_same(a, b) for a, b in zip(islice(first, 2), reference[:2]))
    state = first.state_dict()
    resumed = build_train_stream(cfg, mask_generator=_masks(), seed=1, state=state)
    assert all(_same(a, b) for a, b in zip(islice(resumed, 3), reference[2:], strict=True))
    assert resumed.stats() == {"clips": 5 * 3, "skipped": 0}
    batch = reference[0]
    assert batch.clips.shape == (3, 3, 4, 32, 32) and len(batch.masks) == 2
    assert batch.keys == ["synthetic/0/0/0", "synthetic/0/0/1", "synthetic/0/0/2"]
    other = next(iter(build_train_stream(cfg, mask_generator=_masks(1), seed=1, rank=1, world_size=2)))
    assert not torch.equal(other.clips, batch.clips) and other.keys[0] == "synthetic/1/0/0"


def test_builder_errors_name_the_problem(shard_dir: Path, data_config) -> None:
    with pytest.raises(ValueError, match=r"rank 2 / world_size 2"):
        build_train_stream(_synthetic(), mask_generator=None, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"data\.batch_size"):
        build_train_stream(_synthetic(batch_size=0), mask_generator=None, seed=0)
    with pytest.raises(ValueError, match=r"data\.sources"):
        build_train_stream(DataConfig(dataset="files"), mask_generator=None, seed=0)
    files_state = build_train_stream(data_config(shard_dir), mask_generator=None, seed=0).state_dict()
    with pytest.raises(ValueError, match="'synthetic'"):
        build_train_stream(_synthetic(), mask_generator=None, seed=0, state=files_state)
    synthetic_state = build_train_stream(_synthetic(), mask_generator=None, seed=0).state_dict()
    with pytest.raises(ValueError, match="another data.dataset"):
        build_train_stream(data_config(shard_dir), mask_generator=None, seed=0, state=synthetic_state)


def test_public_names_resolve() -> None:
    assert sorted(data_pipelines.__all__) == sorted(data_pipelines._EXPORTS)
    for name in data_pipelines.__all__:
        assert getattr(data_pipelines, name) is not None and name in dir(data_pipelines)
    with pytest.raises(AttributeError, match="no attribute 'build_train_data'"):
        data_pipelines.build_train_data  # noqa: B018
