"""Time of one whole V-JEPA training step (target forward, context encoder + predictor per mask
configuration, backward, optimizer, EMA) and clips/s; on a GPU also model FLOP utilisation (MFU).

    vjepa bench step --model vit_large --frames 16 --crop 224 --batch 24 --json

FLOPs are counted analytically from the token counts actually processed (matmuls only, multiply-add = 2):
per block and token 2*(4*D^2 + 2*D*hidden) for qkv/proj/MLP plus 4*L*D for attention over L tokens;
backward = 2x forward. The target forward runs on all N tokens; each mask configuration runs the encoder
on its context tokens and the predictor on context + target tokens, forward and backward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def block_flops(tokens: torch.Tensor, width: int, hidden: int, depth: int) -> float:
    """Forward FLOPs of `depth` blocks for a batch whose samples have `tokens` [B] tokens each."""
    t = tokens.double()
    return float(depth * (t * 2 * (4 * width * width + 2 * width * hidden) + 4 * t * t * width).sum())


def step_flops(cfg, batch) -> float:
    from vjepa.models.registry import get_size

    enc = get_size(cfg.model.name)
    n = batch.clips.shape[2] // cfg.model.tubelet_size * (batch.clips.shape[3] // cfg.model.patch_size) ** 2
    b = batch.clips.shape[0]
    total = block_flops(torch.full((b,), n), enc.width, enc.mlp_hidden, enc.depth)  # target forward
    pw = cfg.model.pred_width
    for m in batch.masks:
        kc, kt = m.context_valid.sum(1), m.target_valid.sum(1)
        total += 3 * block_flops(kc, enc.width, enc.mlp_hidden, enc.depth)
        total += 3 * block_flops(kc + kt, pw, 4 * pw, cfg.model.pred_depth)
    return total


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def main(argv: list[str] | None = None) -> None:
    from data_pipelines import MaskGenerator, build_train_stream
    from vjepa.config import load_config
    from vjepa.distributed.env import DistEnv
    from vjepa.models.builder import token_grid
    from vjepa.train.trainer import build_models, make_engine, train_step
    from vjepa.utils import resolve_device

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default=None, help="bf16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--attention", default="sdpa")
    p.add_argument("--pred-width", type=int, default=384)
    p.add_argument("--pred-depth", type=int, default=12)
    p.add_argument("--pred-heads", type=int, default=16)
    p.add_argument("--ckpt", action="store_true", help="activation checkpointing")
    p.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak for MFU")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = resolve_device("auto")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg = load_config(
        None,
        [
            f"model.name={args.model}",
            f"data.frames_per_clip={args.frames}",
            f"data.crop_size={args.crop}",
            f"data.batch_size={args.batch}",
            "data.dataset=synthetic",
            f"train.precision={precision}",
            f"model.attention={args.attention}",
            f"model.pred_width={args.pred_width}",
            f"model.pred_depth={args.pred_depth}",
            f"model.pred_heads={args.pred_heads}",
            f"model.activation_checkpointing={str(args.ckpt).lower()}",
            f"train.device={device.type}",
            f"train.steps={args.warmup + args.steps}",
            "optim.warmup_steps=0",
        ],
    )
    engine = make_engine(cfg, build_models(cfg, device), device, DistEnv())
    grid = token_grid(
        frames=args.frames, crop=args.crop, patch=cfg.model.patch_size, tubelet=cfg.model.tubelet_size
    )
    masks = MaskGenerator(cfg.mask, grid=grid, seed=cfg.train.seed, rank=0)
    batch = next(
        iter(build_train_stream(cfg.data, mask_generator=masks, seed=cfg.train.seed))
    )  # one batch, reused
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(engine, batch, step, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    flops = step_flops(cfg, batch)
    peak = peak_tflops(device, args.peak_tflops)
    result = {
        "bench": "step",
        "model": args.model,
        "frames": args.frames,
        "crop": args.crop,
        "batch": args.batch,
        "precision": precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "ms_per_step": round(median * 1000, 2),
        "clips_per_s": round(args.batch / median, 2),
        "tokens_per_clip": grid[0] * grid[1] * grid[2],
        "context_tokens_per_batch": [int(m.context_valid.sum()) for m in batch.masks],
        "target_tokens_per_batch": [int(m.target_valid.sum()) for m in batch.masks],
        "flop_per_step": float(f"{flops:.4g}"),
        "achieved_tflops": round(flops / median / 1e12, 3),
        "mfu": round(flops / median / (peak * 1e12), 4) if peak else None,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
