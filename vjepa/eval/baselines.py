"""Baselines that every probe number is reported beside, and the probe suite that runs them all.

- random weights: the same encoder architecture with the run's own initial weights (`init_model.pt` of the
  run folder) or, without them, freshly drawn ones;
- single frame: the trained encoder on clips made of one (the middle) frame repeated, so it sees no motion;
- raw pixels: the clip itself, downsampled and cut into the encoder's token grid, each token holding its
  pixels plus a fixed 3D sin-cos code of its position (an attentive pooler is otherwise blind to where a
  token sits);
- context: the trained context encoder (not a baseline: the other trained encoder, for comparison).

Every source is probed with the same probes (same settings and seeds); accuracies come with their binomial
standard error on the val clips, and margins of the trained encoder over the best baseline in SE.

Shape legend: B clips, C channels, T frames, H/W pixels, p patch, t tubelet, s downsampling factor,
Tp/Hp/Wp token grid, N = Tp*Hp*Wp tokens, D width.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines import EvalClipSpec, EvalVideo, iter_eval_videos
from vjepa.eval.evaluate import ProbeConfig, binomial_se, num_classes_of, train_probe
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
from vjepa.models.weights import read_torch_file
from vjepa.utils import resolve_device

__all__ = [
    "ALL_SOURCES",
    "BASELINES",
    "SOURCES",
    "PixelTokens",
    "evaluate_sources",
    "feature_sources",
    "margins",
    "probe_features",
    "run_probe_suite",
    "single_frame",
]

SOURCES = ("trained", "random_init", "single_frame", "pixels")  # run_probe_suite's default
ALL_SOURCES = (*SOURCES, "context")
BASELINES = ("random_init", "pixels", "single_frame")  # what the trained encoder has to beat
ClipTransform = Callable[[torch.Tensor], torch.Tensor]

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


def feature_sources(
    state: dict[str, Any],
    *,
    frames: int,
    crop: int,
    names: tuple[str, ...] = SOURCES,
    init_state: dict[str, Any] | None = None,
    seed: int = 0,
    pixel_downsample: int = 4,
    device: torch.device | str = "cpu",
) -> dict[str, tuple[nn.Module, ClipTransform | None]]:
    """{name: (frozen module, clip transform or None)} for the named sources of checkpoint `state` (see
    extract.load_checkpoint_state). `init_state` (a run's init_model.pt: encoder, predictor, target_encoder)
    gives random_init the run's own initial weights; without it they are drawn from `seed`."""
    unknown = [n for n in names if n not in ALL_SOURCES]
    if unknown:
        raise ValueError(f"feature sources: unknown {unknown} (known: {ALL_SOURCES})")
    m = checkpoint_config(state).model
    out: dict[str, tuple[nn.Module, ClipTransform | None]] = {}
    trained = None
    if {"trained", "single_frame"} & set(names):
        trained = load_encoder(state, frames=frames, crop=crop, device=device)
    for name in names:
        if name == "trained":
            out[name] = (trained, None)
        elif name == "single_frame":
            out[name] = (trained, single_frame)
        elif name == "context":
            out[name] = (load_encoder(state, frames=frames, crop=crop, which="context", device=device), None)
        elif name == "random_init" and init_state is not None:
            initial = {**init_state, "config": state["config"]}
            out[name] = (load_encoder(initial, frames=frames, crop=crop, device=device), None)
        elif name == "random_init":
            encoder = load_encoder(
                state, frames=frames, crop=crop, random_init=True, seed=seed, device=device
            )
            out[name] = (encoder, None)
        else:
            pixels = PixelTokens(patch=m.patch_size, tubelet=m.tubelet_size, downsample=pixel_downsample)
            out[name] = (pixels, None)
    return out


def probe_features(
    train: FeatureSet,
    val: FeatureSet,
    probes: dict[str, ProbeConfig],
    *,
    seeds: tuple[int, ...] = (0,),
    seeds_for: Mapping[str, tuple[int, ...]] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Trains every probe of `probes` once per seed (the seed replaces the config's; a deterministic probe,
    L-BFGS on all labels, runs the first seed only; `seeds_for` gives probes seeds of their own) and
    summarises each:
    {probe: {"top1" (mean over seeds), "se" (binomial, n val videos), "train_top1", "per_seed", "n_val",
    "confusion" [K][K] (rows: true class, summed over seeds), "correct" [n_val] float tensor (share of seeds
    right on each val video; for paired margins, not JSON)}}."""
    if not seeds:
        raise ValueError("probe seeds: need at least one")
    classes = num_classes_of(train, val)
    out: dict[str, dict[str, Any]] = {}
    for name, base in probes.items():
        deterministic = base.solver == "lbfgs" and base.labels_per_class is None
        used = (seeds_for or {}).get(name, seeds)
        used = used[:1] if deterministic else used
        runs = [train_probe(train, val, replace(base, seed=s), device=device, predictions=True) for s in used]
        predicted = torch.tensor([r["val_predicted"] for r in runs])  # [seeds, n_val]
        correct = (predicted == val.labels[None]).float().mean(0)  # [n_val]
        confusion = torch.zeros(classes, classes, dtype=torch.long)
        for row in predicted:
            confusion.index_put_((val.labels, row), torch.ones_like(row), accumulate=True)
        top1 = sum(r["top1_val"] for r in runs) / len(runs)
        out[name] = {
            "top1": round(top1, 4),
            "se": round(binomial_se(top1, len(val)), 4),
            "train_top1": round(sum(r["top1_train"] for r in runs) / len(runs), 4),
            "per_seed": [round(r["top1_val"], 4) for r in runs],
            "n_val": len(val),
            "n_train": runs[0]["train_videos"],
            "seconds": round(sum(r["seconds"] for r in runs), 1),
            "settings": {k: v for k, v in asdict(base).items() if k != "seed"} | {"seeds": list(used)},
            "confusion": confusion.tolist(),
            "correct": correct,
        }
        log.info("probe %s: val top-1 %.3f (train %.3f)", name, top1, out[name]["train_top1"])
    return out


def evaluate_sources(
    sources: dict[str, tuple[nn.Module, ClipTransform | None]],
    clips: dict[str, list[EvalVideo]],
    probes: dict[str, ProbeConfig],
    *,
    seeds: tuple[int, ...] = (0,),
    seeds_for: Mapping[str, tuple[int, ...]] | None = None,
    num_classes: int | None = None,
    grid: tuple[int, int, int] | None = None,
    extract_batch: int = 16,
    device: torch.device | str = "cpu",
    out_dir: str | Path | None = None,
    probe_threads: int | None = None,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, float]]:
    """Features of `clips["train"]` and `clips["val"]` from every source, each probed with every probe
    (see probe_features); one source's features are in memory at a time. `grid` (the token grid, for
    pooled linear probes) goes into the features' meta. With `out_dir`, each feature file is kept as
    `{source}_{split}.pt`. `probe_threads` bounds torch's CPU threads while probes train: their ops are
    small, and on a busy CPU extra threads mostly wait for each other (1 thread ran 7x faster on 2 shared
    cores). -> ({source: {probe: summary}}, {"extract": s, "probe": s})."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    seconds = {"extract": 0.0, "probe": 0.0}
    for name, (module, transform) in sources.items():
        t0 = time.perf_counter()
        features = {}
        for split in ("train", "val"):
            meta = {"source": name, "split": split, "num_classes": num_classes, "grid": grid}
            fs = encode_videos(
                module, clips[split], batch=extract_batch, device=device, transform=transform, meta=meta
            )
            features[split] = fs
            if out_dir is not None:
                save_features(fs, Path(out_dir) / f"{name}_{split}.pt")
        t1 = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(probe_threads or threads)
        try:
            results[name] = probe_features(
                features["train"], features["val"], probes, seeds=seeds, seeds_for=seeds_for, device=device
            )
        finally:
            torch.set_num_threads(threads)
        seconds["extract"] += t1 - t0
        seconds["probe"] += time.perf_counter() - t1
    return results, {k: round(v, 1) for k, v in seconds.items()}


def margins(
    results: dict[str, dict[str, dict[str, Any]]],
    *,
    trained: str = "trained",
    baselines: tuple[str, ...] = BASELINES,
) -> dict[str, dict[str, Any]]:
    """For every probe: the best baseline, the trained encoder's lead over it, and that lead in standard
    errors, unpaired (sqrt(se_a^2 + se_b^2)) and paired (the SE of the per-video differences, which the
    same val clips make smaller)."""
    out: dict[str, dict[str, Any]] = {}
    present = [b for b in baselines if b in results]
    if trained not in results or not present:
        return out
    for probe, mine in results[trained].items():
        best = max(present, key=lambda b: results[b][probe]["top1"])
        theirs = results[best][probe]
        lead = mine["top1"] - theirs["top1"]
        se = math.sqrt(mine["se"] ** 2 + theirs["se"] ** 2)
        diff = mine["correct"] - theirs["correct"]  # [n_val]
        paired = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        out[probe] = {
            "best_baseline": best,
            "margin": round(lead, 4),
            "se": round(se, 4),
            "margin_in_se": round(lead / se, 2) if se > 0 else None,
            "paired_se": round(paired, 4),
            "margin_in_paired_se": round(lead / paired, 2) if paired > 0 else None,
        }
    return out


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
    sources: tuple[str, ...] = SOURCES,
    init_weights: str | Path | None = None,
) -> dict:
    """Probes the checkpoint's frozen target encoder on `data_root`/train and `data_root`/val beside the
    random-weights, single-frame and raw-pixel baselines (`sources`; add "context" for the context encoder).

    Each split's eval clips are decoded once and shared by every feature source. `frame_step=None` takes the
    checkpoint's `data.frame_step`. `init_weights` (a run's init_model.pt) makes random_init the run's own
    initialisation. With `out_dir`, every feature file is kept there as `{source}_{split}.pt`. Returns
    {"top1": {source: {kind: val top-1}}, "train_top1": (same layout), "num_classes", "chance",
    "train_videos", "val_videos", "settings", "seconds"}.
    """
    start = time.perf_counter()
    device = torch.device(device) if device else resolve_device("auto")
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
    init_state = None
    if init_weights is not None:
        init_state = read_torch_file(init_weights, what="init_weights")
    modules = feature_sources(
        state,
        frames=frames,
        crop=crop,
        names=sources,
        init_state=init_state,
        seed=seed,
        pixel_downsample=pixel_downsample,
        device=device,
    )
    probes = {  # the 1-block V-JEPA 1 attentive probe, heads from the width: small and quick
        k: ProbeConfig(kind=k, epochs=epochs, lr=lr, wd=wd, batch=batch, seed=seed, depth=0, heads=None)
        for k in kinds
    }
    results, seconds = evaluate_sources(
        modules,
        clips,
        probes,
        seeds=(seed,),
        num_classes=read_num_classes(root),
        extract_batch=extract_batch,
        device=device,
        out_dir=out_dir,
    )
    classes = len(next(iter(next(iter(results.values())).values()))["confusion"])
    return {
        "top1": {name: {k: r["top1"] for k, r in rows.items()} for name, rows in results.items()},
        "train_top1": {name: {k: r["train_top1"] for k, r in rows.items()} for name, rows in results.items()},
        "num_classes": classes,
        "chance": 1.0 / classes,
        "train_videos": len(clips["train"]),
        "val_videos": len(clips["val"]),
        "settings": {
            "checkpoint": str(checkpoint),
            "model": cfg.model.name,
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
            "init_weights": None if init_weights is None else str(init_weights),
        },
        "seconds": {
            "decode": round(t_decode - start, 1),
            "extract": seconds["extract"],
            "probe": seconds["probe"],
            "total": round(time.perf_counter() - start, 1),
        },
    }
