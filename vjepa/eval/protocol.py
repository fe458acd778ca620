"""The demo's evaluation protocol: the labelled clips (rendered motion clips or a user's dataset), every
feature source of a run under the same probes, and the curve of accuracy against pretraining step.
`vjepa demo` (vjepa/commands/demo.py) assembles these into its report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SYNTHETIC_CLASSES",
    "ProbeContext",
    "decode_probe_sets",
    "find_data_splits",
    "pixel_downsample",
    "probe_curve",
    "probe_final",
    "render_probe_sets",
]

log = logging.getLogger(__name__)

SYNTHETIC_CLASSES = 8  # the in-memory training stream draws its labels from the first 8 motion classes


# ----------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class ProbeContext:
    """What every probe run shares: the labelled clips, the probes, seeds, class count, token grid, device."""

    clips: dict[str, list]
    probes: dict[str, Any]
    seeds: tuple[int, ...]
    seeds_for: dict[str, tuple[int, ...]]  # probes with seeds of their own
    classes: int
    grid: tuple[int, int, int]
    device: Any


def probe_final(run_dir: Path, cfg: Any, ctx: ProbeContext) -> tuple[dict, dict[str, float]]:
    """Every source of the final checkpoint (and the run's initial weights) under every probe."""
    from vjepa.checkpoint import RunFolder
    from vjepa.eval.baselines import ALL_SOURCES, evaluate_sources, feature_sources
    from vjepa.eval.extract import load_checkpoint_state
    from vjepa.models.weights import read_torch_file

    init_file = RunFolder(run_dir).init_weights
    init_state = None
    if init_file.is_file():
        init_state = read_torch_file(init_file, what="the run's initial weights")
    else:
        log.warning("%s is missing: random_init draws fresh weights instead of the run's own", init_file)
    d = cfg.data
    sources = feature_sources(
        load_checkpoint_state(run_dir),
        frames=d.frames_per_clip,
        crop=d.crop_size,
        names=ALL_SOURCES,
        init_state=init_state,
        pixel_downsample=pixel_downsample(cfg.model.patch_size),
        device=ctx.device,
    )
    return evaluate_sources(
        sources,
        ctx.clips,
        ctx.probes,
        seeds=ctx.seeds,
        seeds_for=ctx.seeds_for,
        num_classes=ctx.classes,
        grid=ctx.grid,
        device=ctx.device,
        probe_threads=1,
    )


def probe_curve(
    run_dir: Path, cfg: Any, ctx: ProbeContext, probe: str, results: dict
) -> list[dict[str, Any]]:
    """Val top-1 of the `probe` probe (first seed) on the target encoder at step 0 (the run's initial
    weights), at every intermediate checkpoint and at the end."""
    from vjepa.checkpoint import CheckpointManager, RunFolder
    from vjepa.eval.baselines import evaluate_sources, feature_sources
    from vjepa.eval.extract import load_checkpoint_state

    every, steps = cfg.checkpoint.every_steps, cfg.train.steps
    mids = list(range(every, steps, every))
    print(f"[demo] 4/5 the {probe} probe on the checkpoints of steps {mids} ...", flush=True)
    points = [curve_point(0, results["random_init"][probe])]
    ckpts = CheckpointManager(RunFolder(run_dir).checkpoints)
    for step in mids:
        if not ckpts.step_dir(step).is_dir():
            log.warning("no checkpoint at step %d (pruned?); the curve skips it", step)
            continue
        state = load_checkpoint_state(ckpts.step_dir(step))
        encoder = feature_sources(
            state,
            frames=cfg.data.frames_per_clip,
            crop=cfg.data.crop_size,
            names=("trained",),
            device=ctx.device,
        )
        row, _ = evaluate_sources(
            encoder,
            ctx.clips,
            {probe: ctx.probes[probe]},
            seeds=ctx.seeds[:1],
            num_classes=ctx.classes,
            grid=ctx.grid,
            device=ctx.device,
            probe_threads=1,
        )
        points.append(curve_point(step, row["trained"][probe]))
    points.append(curve_point(steps, results["trained"][probe]))
    return points


def curve_point(step: int, summary: dict[str, Any]) -> dict[str, Any]:
    """A curve point from a probe summary: its first seed's top-1 (the curve runs one seed)."""
    from vjepa.eval.evaluate import binomial_se

    top1 = summary["per_seed"][0]
    return {"step": step, "top1": top1, "se": round(binomial_se(top1, summary["n_val"]), 4)}


def pixel_downsample(patch: int) -> int:
    """Raw-pixel tokens keep (patch / s)^2 pixels per frame: s = 4 for patch 16, 2 for patch 8."""
    return max(1, min(4, patch // 4))


# ----------------------------------------------------------------------------- data


def render_probe_sets(
    train_videos: int, val_videos: int, *, frames: int, size: int, seed: int
) -> tuple[dict[str, list], list[str]]:
    """{"train": [EvalVideo], "val": [EvalVideo]} of rendered clips with balanced labels, and the class
    names. The clips depend only on (seed, split, index) and are not the pretraining stream's. Two
    processes render them when there are many (starting one costs seconds)."""
    import contextlib
    import multiprocessing

    from data_pipelines import CLASS_NAMES, EvalVideo

    out: dict[str, list] = {}
    many = train_videos + val_videos > 400
    pool = multiprocessing.get_context("spawn").Pool(2) if many else contextlib.nullcontext()
    with pool:
        for split_id, (split, n) in enumerate((("train", train_videos), ("val", val_videos))):
            chunks = [(seed, split_id, lo, min(n, lo + 50), frames, size) for lo in range(0, n, 50)]
            rendered = pool.imap(_render_chunk, chunks) if many else map(_render_chunk, chunks)
            out[split] = [
                EvalVideo(f"{split}_{i:06d}", label, clip[None])  # clips [1, 3, T, S, S]: one view
                for chunk in rendered
                for i, label, clip in chunk
            ]
    return out, list(CLASS_NAMES[:SYNTHETIC_CLASSES])


def _render_chunk(job: tuple[int, int, int, int, int, int]) -> list[tuple[int, int, Any]]:
    """Clips lo..hi-1 of one split: [(index, label, uint8 clip [3, T, S, S])]."""
    import numpy as np
    import torch

    from data_pipelines.synthetic import render_video

    seed, split_id, lo, hi, frames, size = job
    out = []
    for i in range(lo, hi):
        label = i % SYNTHETIC_CLASSES  # balanced
        rng = np.random.default_rng([seed, 9_000 + split_id, i])  # 9000+: a stream of its own
        video = render_video(label, frames=frames, size=size, rng=rng)  # [T, S, S, 3]
        out.append((i, label, torch.from_numpy(video).permute(3, 0, 1, 2).contiguous()))
    return out


def find_data_splits(root: Path) -> dict[str, Path]:
    """DIR/train and DIR/val: folders (shards or class folders) or `path label` CSV lists."""
    if not root.is_dir():
        raise ValueError(f"--data: {root} is not a folder")
    found = {}
    for split in ("train", "val"):
        candidates = [root / split, root / f"{split}.csv"]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            raise ValueError(f"--data: {root} has neither {split}/ nor {split}.csv")
        found[split] = hit
    return found


def decode_probe_sets(splits: dict[str, Path], cfg: Any) -> tuple[dict[str, list], list[str]]:
    """The centred eval clip of every video of both splits at the training clip size, and the class
    names (classes.json beside the splits, the class folder names, or the label numbers)."""
    from data_pipelines import EvalClipSpec, iter_eval_videos, list_videos

    d = cfg.data
    spec = EvalClipSpec(
        frames=d.frames_per_clip, frame_step=d.frame_step, crop=d.crop_size, decoder=d.decoder
    )
    clips = {}
    for split, path in splits.items():
        clips[split] = list(iter_eval_videos(path, spec, workers=min(2, d.num_workers)))
        unlabelled = sum(v.label < 0 for v in clips[split])
        if not clips[split] or unlabelled:
            raise ValueError(
                f"--data: {path} needs labelled videos ({len(clips[split])} read, {unlabelled} without a label)"
            )
    classes = max(v.label for videos in clips.values() for v in videos) + 1
    names_file = splits["train"].parent / "classes.json"
    if names_file.is_file():
        names = [str(n) for n in json.loads(names_file.read_text())]
    elif splits["train"].is_dir() and not any(splits["train"].glob("*.tar")):
        names = list_videos(splits["train"])[1]
    else:
        names = []
    return clips, names if len(names) >= classes else [str(i) for i in range(classes)]
