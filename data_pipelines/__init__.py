"""data_pipelines: video data for V-JEPA training and evaluation. These names are its public face; `vjepa`
imports only them, everything else is internal.

- Training data: `build_train_stream` (the `BatchStream` for a `DataConfig`), `build_loader` (the file
  loader itself), the `VideoBatch` / `MaskBatch` it yields, `MaskGenerator` / `MaskSpec` /
  `default_mask_specs` for the masks, `normalize` for the training device.
- Evaluation clips: `EvalClipSpec`, `iter_eval_videos` -> `EvalVideo`, `find_splits`, `list_eval_samples`
  (a split's samples in source order, for extraction in parts).
- Making data: `list_videos` (a folder's videos and class labels), `pack_videos` (videos -> tar shards),
  `write_synthetic_dataset` and `render_video` (the synthetic motion clips) with their `CLASS_NAMES`.
- Config checks, shared with the vjepa config tree: `check`, `check_choice`, `check_choices`,
  `check_finite`, `check_fields` (both) and `literal_values` (allowed values are `Literal[...]` types).
- Errors that stop a run on bad data (the `vjepa` command prints them as one line): `TooManyBadSamplesError`,
  `HungDecodesError`, `HungReadsError`.

Names are imported on first use, so that `import data_pipelines.sources` (or reading a config) does not
load PyTorch, torchvision or PyAV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from data_pipelines.bad_samples import HungDecodesError, TooManyBadSamplesError
    from data_pipelines.batch import MaskBatch, MixedBatch, VideoBatch
    from data_pipelines.checks import (
        check,
        check_choice,
        check_choices,
        check_fields,
        check_finite,
        literal_values,
    )
    from data_pipelines.config import DataConfig, SourceConfig
    from data_pipelines.eval_clips import (
        EvalClipSpec,
        EvalVideo,
        find_splits,
        iter_eval_videos,
        list_eval_samples,
    )
    from data_pipelines.loader import build_loader
    from data_pipelines.masking import MaskGenerator, MaskSpec, default_mask_specs
    from data_pipelines.shard_writer import pack_videos
    from data_pipelines.sources import HungReadsError, list_videos
    from data_pipelines.stream import BatchStream, build_train_stream
    from data_pipelines.synthetic import CLASS_NAMES, render_video, write_synthetic_dataset
    from data_pipelines.transforms import normalize

_EXPORTS = {  # public name -> the module that defines it
    "BatchStream": "stream",
    "build_train_stream": "stream",
    "build_loader": "loader",
    "VideoBatch": "batch",
    "MaskBatch": "batch",
    "MixedBatch": "batch",
    "DataConfig": "config",
    "SourceConfig": "config",
    "MaskGenerator": "masking",
    "MaskSpec": "masking",
    "default_mask_specs": "masking",
    "normalize": "transforms",
    "EvalClipSpec": "eval_clips",
    "EvalVideo": "eval_clips",
    "iter_eval_videos": "eval_clips",
    "find_splits": "eval_clips",
    "list_eval_samples": "eval_clips",
    "list_videos": "sources",
    "pack_videos": "shard_writer",
    "render_video": "synthetic",
    "write_synthetic_dataset": "synthetic",
    "CLASS_NAMES": "synthetic",
    "TooManyBadSamplesError": "bad_samples",
    "HungDecodesError": "bad_samples",
    "HungReadsError": "sources",
    "check": "checks",
    "check_choice": "checks",
    "check_choices": "checks",
    "check_fields": "checks",
    "check_finite": "checks",
    "literal_values": "checks",
}

__all__ = [
    "BatchStream",
    "CLASS_NAMES",
    "DataConfig",
    "EvalClipSpec",
    "EvalVideo",
    "HungDecodesError",
    "HungReadsError",
    "MaskBatch",
    "MaskGenerator",
    "MaskSpec",
    "MixedBatch",
    "SourceConfig",
    "TooManyBadSamplesError",
    "VideoBatch",
    "build_loader",
    "build_train_stream",
    "check",
    "check_choice",
    "check_choices",
    "check_fields",
    "check_finite",
    "default_mask_specs",
    "find_splits",
    "iter_eval_videos",
    "list_eval_samples",
    "list_videos",
    "literal_values",
    "normalize",
    "pack_videos",
    "render_video",
    "write_synthetic_dataset",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'data_pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"data_pipelines.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
