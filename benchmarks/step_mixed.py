"""A training step on a batch of several clip lengths (videos of two lengths and images, one packed encoder
and predictor pass for all of them) against a step on the same number of grid tokens in clips of one length,
timed alternately in the same run: the achieved FLOP rate of each and their ratio (goal: >= 0.9).

    vjepa bench step_mixed --model vit_tiny --frames 16 --crop 112 --lengths 16,8,1 --counts 2,2,8 --json

FLOPs are counted as in `vjepa bench step` (vjepa/train/flops.py, on the real tokens). The single-length
batch has (total time steps of the mixed batch) / (time steps of the longest clip) clips of the longest
length, so both batches hold the same grid tokens. Clips are random pixels: the step's cost does not depend
on them.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from benchmarks.step import timed

__all__ = ["main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--frames", type=int, default=16, help="the longest clip (data.frames_per_clip)")
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--lengths", default="16,8,1", help="clip lengths of the mixed batch (1: images)")
    p.add_argument("--counts", default="2,2,8", help="clips of each length in the mixed batch")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pred-width", type=int, default=384)
    p.add_argument("--pred-depth", type=int, default=12)
    p.add_argument("--pred-heads", type=int, default=16)
    p.add_argument("--precision", default=None, help="bf16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.counts = [int(x) for x in args.counts.split(",")]
    if len(args.lengths) != len(args.counts) or max(args.lengths) != args.frames:
        p.error("--lengths and --counts need one entry each, and the longest length must equal --frames")
    return args


def build(args: argparse.Namespace, device: torch.device, precision: str):
    """(config, engine, mask generator) for a run whose sources sample the benchmark's clip lengths."""
    from data_pipelines import MaskGenerator
    from vjepa.config import load_config
    from vjepa.distributed.env import DistEnv
    from vjepa.models.builder import token_grid
    from vjepa.train.trainer import build_models, make_engine

    sources = ", ".join(f"{{path: unused, frames_per_clip: {t}}}" for t in args.lengths)
    overrides = [
        f"model.name={args.model}",
        f"data.frames_per_clip={args.frames}",
        f"data.crop_size={args.crop}",
        "data.dataset=files",  # sources of several lengths (never read: the batches are made here)
        f"data.sources=[{sources}]",
        f"train.precision={precision}",
        f"model.pred_width={args.pred_width}",
        f"model.pred_depth={args.pred_depth}",
        f"model.pred_heads={args.pred_heads}",
        f"train.device={device.type}",
        f"train.steps={2 * (args.warmup + args.steps)}",
        "optim.warmup_steps=0",
    ]
    cfg = load_config(None, overrides)
    engine = make_engine(cfg, build_models(cfg, device), device, DistEnv())
    m = cfg.model
    grid = token_grid(frames=args.frames, crop=args.crop, patch=m.patch_size, tubelet=m.tubelet_size)
    masks = MaskGenerator(cfg.mask, grid=grid, seed=cfg.train.seed, tubelet=m.tubelet_size)
    return cfg, engine, masks


def make_batch(lengths: list[int], counts: list[int], crop: int, masks, mixed: bool):
    from data_pipelines import MixedBatch, VideoBatch

    g = torch.Generator().manual_seed(0)
    parts = []
    for t, b in zip(lengths, counts):
        clips = torch.randint(0, 256, (b, 3, t, crop, crop), dtype=torch.uint8, generator=g)
        kwargs = {"frames": t} if mixed else {}
        m = masks(b, worker=0, step=0, **kwargs)
        parts.append(VideoBatch(clips, torch.full((b,), -1), m, [f"clip{i}" for i in range(b)]))
    return MixedBatch(parts) if mixed else parts[0]


def flops_of(engine, batch) -> tuple[float, int]:
    """(FLOPs of one step on `batch`, its grid tokens)."""
    from vjepa.objective import pack_masks
    from vjepa.train.flops import step_flops

    encoder, predictor = engine.module.encoder, engine.module.predictor
    groups = batch.groups()
    lengths = engine.module.clip_lengths
    index = [lengths.index(g.clips.shape[2]) for g in groups]
    packed = pack_masks([g.masks for g in groups], index)
    sizes = []
    for g in groups:
        tp, hp, wp = encoder.patch_embed.grid(*g.clips.shape[2:])
        sizes.append((g.clips.shape[0], tp * hp * wp))
    flops = step_flops(
        encoder,
        predictor,
        context_lengths=torch.tensor(packed.context.layout.lengths),
        target_lengths=torch.tensor(packed.target.layout.lengths),
        groups=sizes,
    )
    return flops.total, sum(b * n for b, n in sizes)


def main(argv: list[str] | None = None) -> None:
    from vjepa.train.trainer import train_step
    from vjepa.utils import resolve_device

    args = parse_args(argv)
    device = resolve_device("auto")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg, engine, masks = build(args, device, precision)
    tubelet = cfg.model.tubelet_size
    steps = [max(1, t // tubelet) * b for t, b in zip(args.lengths, args.counts)]  # time steps per length
    single_clips = max(1, round(sum(steps) / (args.frames // tubelet)))
    mixed = make_batch(args.lengths, args.counts, args.crop, masks, mixed=True)
    single = make_batch([args.frames], [single_clips], args.crop, masks, mixed=False)
    mixed_flops, mixed_tokens = flops_of(engine, mixed)
    single_flops, single_tokens = flops_of(engine, single)
    times: dict[str, list[float]] = {"mixed": [], "single": []}
    cpu: dict[str, list[float]] = {"mixed": [], "single": []}
    step = 0
    for i in range(args.warmup + args.steps):  # the two alternate, so both see the same machine load
        for name, batch in (("mixed", mixed), ("single", single)):
            wall, proc = timed(
                lambda batch=batch, step=step: train_step(engine, batch, step, cfg, device), device
            )
            step += 1
            if i >= args.warmup:
                times[name].append(wall)
                cpu[name].append(proc)
    rate = {
        k: (mixed_flops if k == "mixed" else single_flops) / statistics.median(v) / 1e12
        for k, v in times.items()
    }
    rate_cpu = {
        k: (mixed_flops if k == "mixed" else single_flops) / statistics.median(v) / 1e12
        for k, v in cpu.items()
    }
    result = {
        "bench": "step_mixed",
        "model": args.model,
        "crop": args.crop,
        "lengths": args.lengths,
        "counts": args.counts,
        "single_length_clips": single_clips,
        "precision": precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "mixed_grid_tokens": mixed_tokens,
        "single_grid_tokens": single_tokens,
        "mixed_ms": round(statistics.median(times["mixed"]) * 1000, 2),
        "single_ms": round(statistics.median(times["single"]) * 1000, 2),
        "mixed_tflops": round(rate["mixed"], 4),
        "single_tflops": round(rate["single"], 4),
        "mixed_vs_single": round(rate["mixed"] / rate["single"], 3),
        "mixed_vs_single_cpu": round(rate_cpu["mixed"] / rate_cpu["single"], 3),  # process CPU time
        "goal": 0.9,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
