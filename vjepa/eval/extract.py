"""Frozen-encoder features: load an encoder from any of our checkpoint forms at the evaluation clip size, run
it without gradients over every eval clip, and keep the tokens (or their mean) on disk.

Shape legend: M videos, V clips per video (segments x spatial views), B clips in a forward batch,
C channels, T frames, c crop pixels, N tokens per clip, D width.

A feature file is a torch dict {"tokens": [M, V, N, D] float16 (N = 1 with pool="mean"), "labels": [M]
int64, "keys": [M] str, "meta": dict}.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipelines import EvalClipSpec, EvalVideo, iter_eval_videos, normalize
from vjepa.config import Config
from vjepa.models.builder import build_encoder
from vjepa.models.weights import LOAD_ERRORS, load_weights
from vjepa.pretrained import state_config
from vjepa.utils import atomic_write

__all__ = [
    "FeatureSet",
    "encode_videos",
    "extract_split",
    "load_checkpoint_state",
    "load_encoder",
    "load_features",
    "save_features",
]

log = logging.getLogger(__name__)

ClipTransform = Callable[[torch.Tensor], torch.Tensor]  # uint8 clips [B, C, T, c, c] -> same shape
ENCODER_KEYS = {"target": "target_encoder", "context": "encoder"}
POOLS = ("none", "mean")


@dataclass
class FeatureSet:
    tokens: torch.Tensor  # [M, V, N, D] float16 (or bfloat16 / float32 where extracted so)
    labels: torch.Tensor  # [M] int64, -1 where unknown
    keys: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def save_features(features: FeatureSet, path: str | Path) -> Path:
    path = Path(path)
    state = {
        "tokens": features.tokens,
        "labels": features.labels,
        "keys": features.keys,
        "meta": features.meta,
    }
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


def load_features(path: str | Path) -> FeatureSet:
    """A feature file (save_features) or a feature folder written in parts by `vjepa extract`."""
    path = Path(path)
    if path.is_dir():
        from vjepa.eval.parts import load_feature_folder

        return load_feature_folder(path)
    if not path.is_file():
        raise ValueError(f"feature file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        raise ValueError(f"{path}: not a feature file ({type(err).__name__}: {err})") from err
    missing = {"tokens", "labels", "keys"} - set(data) if isinstance(data, dict) else {"tokens"}
    if missing:
        raise ValueError(f"{path}: not a feature file (missing {sorted(missing)})")
    if data["tokens"].ndim != 4 or len(data["labels"]) != data["tokens"].shape[0]:
        raise ValueError(f"{path}: tokens must be [videos, views, N, D] with one label per video")
    return FeatureSet(data["tokens"], data["labels"].long(), list(data["keys"]), dict(data.get("meta", {})))


# ----------------------------------------------------------------------------- checkpoints and encoders


def load_checkpoint_state(checkpoint: str | Path) -> dict[str, Any]:
    """{"encoder", "predictor", "target_encoder", "config"} from any checkpoint form `vjepa.pretrained`
    reads: an exported model file (torch or safetensors), a checkpoint step folder, a `checkpoints/` folder
    or a run folder (newest complete checkpoint; DeepSpeed ones too), an official V-JEPA / V-JEPA 2 file."""
    from vjepa.pretrained import read_pretrained

    return read_pretrained(checkpoint, what="--checkpoint")


def checkpoint_config(state: dict[str, Any]) -> Config:
    return state_config(state)


def load_encoder(
    state: dict[str, Any],
    *,
    frames: int,
    crop: int,
    which: str = "target",
    random_init: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The frozen encoder of `state` (see load_checkpoint_state) for clips of `frames` x `crop`, in eval mode.

    The architecture (size, patch, tubelet, position embedding) comes from the checkpoint's config. The
    fixed sin-cos table is rebuilt for the new token grid rather than loaded, so any frames x crop works.
    `random_init` keeps the architecture and draws fresh weights from `seed` (the random-weights baseline).
    """
    if which not in ENCODER_KEYS:
        raise ValueError(f"--encoder: must be one of {tuple(ENCODER_KEYS)}, got {which!r}")
    m = checkpoint_config(state).model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(
            m.name,
            frames=frames,
            crop=crop,
            patch=m.patch_size,
            tubelet=m.tubelet_size,
            pos_embed=m.pos_embed,
            rope_layout=m.rope_layout,
            attention="sdpa",
            device="cpu",
        )
    if not random_init:
        load_weights(
            encoder, state[ENCODER_KEYS[which]], f"the checkpoint's {ENCODER_KEYS[which]} ({m.name})"
        )
    return encoder.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- running encoders


@torch.no_grad()
def encode_clips(
    encoder: nn.Module,
    clips_u8: torch.Tensor,
    *,
    batch: int,
    device: torch.device | str,
    pool: str = "none",
    transform: ClipTransform | None = None,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """uint8 clips [M, C, T, c, c] -> `dtype` tokens [M, N, D] on the CPU (N = 1 with pool="mean").
    bf16 autocast on CUDA, fp32 elsewhere."""
    device = torch.device(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    out = []
    for chunk in clips_u8.split(batch):
        chunk = chunk.to(device, non_blocking=True)
        if transform is not None:
            chunk = transform(chunk)
        with autocast:
            tokens = encoder(normalize(chunk))  # [B, N, D]
        if pool == "mean":
            tokens = tokens.float().mean(1, keepdim=True)  # [B, 1, D]
        out.append(tokens.to("cpu", dtype))
    return torch.cat(out)


def encode_videos(
    encoder: nn.Module,
    videos: Iterable[EvalVideo],
    *,
    batch: int = 32,
    device: torch.device | str = "cpu",
    pool: str = "none",
    transform: ClipTransform | None = None,
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> FeatureSet:
    """Features of every clip of every video, batched across videos; the order of `videos` is kept."""
    if pool not in POOLS:
        raise ValueError(f"--pool: must be one of {POOLS}, got {pool!r}")
    if batch < 1:
        raise ValueError(f"--batch: must be >= 1, got {batch}")
    tokens, labels, keys, pending = [], [], [], []

    def flush() -> None:
        views = pending[0].clips.shape[0]
        clips = torch.cat([v.clips for v in pending])  # [len(pending) * V, C, T, c, c]
        out = encode_clips(
            encoder, clips, batch=batch, device=device, pool=pool, transform=transform, dtype=dtype
        )
        tokens.append(out.view(len(pending), views, *out.shape[1:]))  # [m, V, N, D]
        labels.extend(v.label for v in pending)
        keys.extend(v.key for v in pending)
        pending.clear()

    for video in videos:
        pending.append(video)
        if len(pending) * video.clips.shape[0] >= batch:
            flush()
    if pending:
        flush()
    if not keys:
        raise ValueError("no usable videos to extract features from")
    return FeatureSet(torch.cat(tokens), torch.tensor(labels, dtype=torch.long), keys, dict(meta or {}))


def read_num_classes(data: str | Path) -> int | None:
    """The class count from a dataset's classes.json (next to the split folder or in it), if there is one."""
    path = Path(data)
    for folder in (path, path.parent):
        names = folder / "classes.json"
        if names.is_file():
            return len(json.loads(names.read_text()))
    return None


def extract_split(
    encoder: nn.Module,
    data: str | Path,
    spec: EvalClipSpec,
    *,
    batch: int = 32,
    device: torch.device | str = "cpu",
    pool: str = "none",
    workers: int = 0,
    transform: ClipTransform | None = None,
    meta: dict[str, Any] | None = None,
) -> FeatureSet:
    """Decodes the eval clips of `data` (streamed, `workers` decode processes) and encodes them."""
    skipped: list[str] = []
    videos = iter_eval_videos(data, spec, workers=workers, skipped=skipped)
    features = encode_videos(encoder, videos, batch=batch, device=device, pool=pool, transform=transform)
    features.meta = {
        **(meta or {}),
        "data": str(data),
        "frames": spec.frames,
        "frame_step": spec.frame_step,
        "crop": spec.crop,
        "segments": spec.segments,
        "spatial_views": spec.views,
        "pool": pool,
        "num_classes": read_num_classes(data),
        "skipped": skipped,
    }
    return features
