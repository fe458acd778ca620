"""Baselines that every probe number is reported beside, and the probe suite that runs them all.

- random weights: the same encoder architecture with freshly drawn weights;
- single frame: the trained encoder on clips made of one (the middle) frame repeated, so it sees no motion;
- raw pixels: the clip itself, downsampled and cut into the encoder's token grid, each token holding its
  pixels plus a fixed 3D sin-cos code of its position (an attentive pooler is otherwise blind to where a
  token sits).

Shape legend: B clips, C channels, T frames, H/W pixels, p patch, t tubelet, s downsampling factor,
Tp/Hp/Wp token grid, N = Tp*Hp*Wp tokens, D width.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vjepa.eval.data import EvalClipSpec, EvalVideo, iter_eval_videos
from vjepa.eval.evaluate import ProbeConfig, num_classes_of, train_probe
from vjepa.eval.extract import (
    FeatureSet,
    checkpoint_config,
    encode_videos,
    load_checkpoint_state,
    load_encoder,
    read_num_classes,
    save_features,
)
from vjepa.layers.pos_embed import sincos_3d

__all__ = ["PixelTokens", "run_probe_suite", "single_frame"]

log = logging.getLogger(__name__)


def single_frame(clips: torch.Tensor) -> torch.Tensor:
    """Clips [B, C, T, H, W] -> the middle frame repeated T times (same shape): appearance without motion."""
    t = clips.shape[2]
    return clips[:, :, t // 2 : t // 2 + 1].expand_as(clips).contiguous()


class PixelTokens(nn.Module):
    """Normalised clips [B, C, T, H, W] -> raw-pixel tokens [B, N, t*(p/s)^2*C + pos_dim] on the encoder's
    grid: average-pooled by `downsample` in space, cut into tubelet x patch cells, position code appended."""

    def __init__(self, *, patch: int, tubelet: int, downsample: int = 4, pos_dim: int = 24) -> None:
        super().__init__()
        if patch % downsample:
            raise ValueError(f"patch {patch} is not divisible by the pixel downsampling factor {downsample}")
        self.patch, self.tubelet, self.downsample, self.pos_dim = patch, tubelet, downsample, pos_dim

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        s, t, p = self.downsample, self.tubelet, self.patch // self.downsample
        x = (
            F.avg_pool3d(clips.float(), kernel_size=(1, s, s)) if s > 1 else clips.float()
        )  # [B, C, T, H/s, W/s]
        b, c, frames, h, w = x.shape
        grid = (frames // t, h // p, w // p)
        x = x.view(b, c, grid[0], t, grid[1], p, grid[2], p)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(
            b, grid[0] * grid[1] * grid[2], t * p * p * c
        )  # [B, N, .]
        pos = sincos_3d(self.pos_dim, grid).to(x.device)[None].expand(b, -1, -1)  # [B, N, pos_dim]
        return torch.cat([x, pos], dim=-1)


def _decode_splits(root: Path, spec: EvalClipSpec) -> dict[str, list[EvalVideo]]:
    clips = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ValueError(f"data_root: {root / split} does not exist (expected train/ and val/ folders)")
        clips[split] = list(iter_eval_videos(root / split, spec))
    return clips


def _probe_all(
    features: dict[str, dict[str, FeatureSet]],
    kinds: tuple[str, ...],
    base: ProbeConfig,
    device: torch.device,
) -> tuple[dict, dict]:
    """({source: {kind: val top-1}}, {source: {kind: train top-1}})."""
    top1_val: dict[str, dict[str, float]] = {}
    top1_train: dict[str, dict[str, float]] = {}
    for name, splits in features.items():
        top1_val[name], top1_train[name] = {}, {}
        for kind in kinds:
            probe_cfg = ProbeConfig(**{**asdict(base), "kind": kind})
            result = train_probe(splits["train"], splits["val"], probe_cfg, device=device)
            top1_val[name][kind] = round(result["top1_val"], 4)
            top1_train[name][kind] = round(result["top1_train"], 4)
            log.info("probe %s/%s: val top-1 %.3f", name, kind, result["top1_val"])
    return top1_val, top1_train


def run_probe_suite(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    frames: int,
    crop: int,
    frame_step: int | None = None,
    segments: int = 1,
    views: int = 1,
    kinds: tuple[str, ...] = ("attentive", "linear"),
    epochs: int = 20,
    lr: float = 1e-3,
    wd: float = 0.01,
    batch: int = 16,
    seed: int = 0,
    pixel_downsample: int = 4,
    extract_batch: int = 16,
    device: torch.device | str | None = None,
    out_dir: str | Path | None = None,
) -> dict:
    """Probes the checkpoint's frozen target encoder on `data_root`/train and `data_root`/val beside the
    random-weights, single-frame and raw-pixel baselines.

    Each split's eval clips are decoded once and shared by every feature source. `frame_step=None` takes the
    checkpoint's `data.frame_step`. With `out_dir`, every feature file is kept there as
    `{source}_{split}.pt`. Returns {"top1": {source: {kind: val top-1}}, "train_top1": (same layout),
    "num_classes", "chance", "train_videos", "val_videos", "settings", "seconds"}, where source is one
    of trained, random_init, single_frame, pixels.
    """
    start = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    root = Path(data_root)
    state = load_checkpoint_state(checkpoint)
    cfg = checkpoint_config(state)
    spec = EvalClipSpec(
        frames=frames,
        frame_step=cfg.data.frame_step if frame_step is None else frame_step,
        crop=crop,
        segments=segments,
        views=views,
        decoder=cfg.data.decoder,
    )
    clips = _decode_splits(root, spec)
    t_decode = time.perf_counter()
    m = cfg.model
    trained = load_encoder(state, frames=frames, crop=crop, device=device)
    sources = {
        "trained": (trained, None),
        "random_init": (
            load_encoder(state, frames=frames, crop=crop, random_init=True, seed=seed, device=device),
            None,
        ),
        "single_frame": (trained, single_frame),
        "pixels": (
            PixelTokens(patch=m.patch_size, tubelet=m.tubelet_size, downsample=pixel_downsample),
            None,
        ),
    }
    num_classes = read_num_classes(root)
    features: dict[str, dict[str, FeatureSet]] = {}
    for name, (encoder, transform) in sources.items():
        features[name] = {}
        for split, videos in clips.items():
            meta = {"source": name, "split": split, "num_classes": num_classes}
            fs = encode_videos(
                encoder, videos, batch=extract_batch, device=device, transform=transform, meta=meta
            )
            features[name][split] = fs
            if out_dir is not None:
                save_features(fs, Path(out_dir) / f"{name}_{split}.pt")
    t_extract = time.perf_counter()
    base = ProbeConfig(epochs=epochs, lr=lr, wd=wd, batch=batch, seed=seed)
    top1_val, top1_train = _probe_all(features, kinds, base, device)
    classes = num_classes_of(features["trained"]["train"], features["trained"]["val"])
    t_probe = time.perf_counter()
    return {
        "top1": top1_val,
        "train_top1": top1_train,
        "num_classes": classes,
        "chance": 1.0 / classes,
        "train_videos": len(clips["train"]),
        "val_videos": len(clips["val"]),
        "settings": {
            "checkpoint": str(checkpoint),
            "model": m.name,
            "frames": frames,
            "frame_step": spec.frame_step,
            "crop": crop,
            "segments": segments,
            "views": views,
            "epochs": epochs,
            "lr": lr,
            "wd": wd,
            "batch": batch,
            "seed": seed,
            "pixel_downsample": pixel_downsample,
            "device": str(device),
        },
        "seconds": {
            "decode": round(t_decode - start, 1),
            "extract": round(t_extract - t_decode, 1),
            "probe": round(t_probe - t_extract, 1),
            "total": round(t_probe - start, 1),
        },
    }
