"""Time of one whole V-JEPA training step (target forward, the packed context encoder and predictor over
every mask configuration, backward, optimizer, EMA) and clips/s, against a dense reference measured in the
same run; on a GPU also model FLOP utilisation (MFU).

    vjepa bench step --model vit_large --frames 16 --crop 224 --batch 24 --json
    vjepa bench step --frames 16 --crop 112 --lengths 16,8,1 --counts 2,2,8   # several clip lengths: step_mixed

FLOPs are counted analytically on the real, unpadded tokens (vjepa/train/flops.py: matmuls only, 2 per
multiply-add; per token 2 x the matmul parameters it passes through, per sequence of L tokens 4 L^2 D per
block for attention; a trained part costs 3 x its forward).

The dense reference (`dense_tflops`): the same target, encoder and predictor on dense batches with the same
total token counts and no masks or gathers: the target forward on the clips, then forward + backward of the
encoder's blocks on [S, Tc/S, D] and of the predictor (embed, blocks, norm, proj) on [S, (Tc+Tt)/S, D], for
the S (sample, mask configuration) sequences; no optimizer. `efficiency` = our achieved FLOP rate / dense.
The two are timed alternately, so both see the same machine load; `efficiency_cpu` is the same ratio in
process CPU time (on a CPU run with one torch thread, less sensitive to other processes on the machine).
`padded_layout_padding_fraction`: the share of padding among the rows the context encoder and predictor
blocks would see with every sample padded to the batch maximum per configuration (the layout before
packing); ours has none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from vjepa.train.flops import StepFlops, TowerShape, block_flops, step_flops, tower_flops

__all__ = ["block_flops", "dense_flops", "dense_step", "main", "padded_layout_rows"]

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def padded_layout_rows(masks) -> tuple[int, int]:
    """(padded, real) rows through the context encoder and predictor blocks, summed over configurations,
    for the layout that pads every sample to the batch maximum."""
    padded = real = 0
    for m in masks:
        b, kc = m.context_idx.shape
        kt = m.target_idx.shape[1]
        padded += b * kc + b * (kc + kt)
        real += 2 * int(m.context_valid.sum()) + int(m.target_valid.sum())
    return padded, real


def dense_shapes(context_lengths: torch.Tensor, target_lengths: torch.Tensor) -> tuple[int, int, int]:
    """(S, encoder length, predictor length): S sequences of the mean context / context + target length."""
    s = len(context_lengths)
    return (
        s,
        round(float(context_lengths.sum()) / s),
        round(float((context_lengths + target_lengths).sum()) / s),
    )


def dense_flops(ours: StepFlops, encoder, predictor, shapes: tuple[int, int, int]) -> float:
    """FLOPs of `dense_step`: the same target forward, then 3 x the dense encoder and predictor forwards."""
    s, lc, lp = shapes
    enc, pred = TowerShape.of(encoder.blocks), TowerShape.of(predictor.predictor_blocks)
    linear = 2 * 2.0 * enc.width * pred.width * s * lp  # predictor_embed and predictor_proj on every row
    forward = tower_flops(enc, torch.full((s,), lc)) + tower_flops(pred, torch.full((s,), lp)) + linear
    return ours.target_forward + 3 * forward


def _dense_coords(blocks, length: int, grid: tuple[int, int, int], s: int, device) -> torch.Tensor | None:
    from vjepa.models.tokens import token_coords

    if blocks[0].attn.rope is None:
        return None
    idx = torch.arange(length, device=device) % (grid[0] * grid[1] * grid[2])  # [L]
    return token_coords(idx, grid)[None].expand(s, -1, -1)  # [S, L, 3]


def dense_step(target, encoder, predictor, clips: torch.Tensor, shapes: tuple[int, int, int]) -> None:
    """One dense reference pass (see the module docstring); gradients are computed and dropped, so the
    model's .grad fields are left as they are."""
    from vjepa.models.encoder import run_blocks

    s, lc, lp = shapes
    with torch.no_grad():
        target(clips)  # [B, N, D]
    grid = encoder.patch_embed.grid(*clips.shape[2:])
    x = torch.randn(s, lc, encoder.width, device=clips.device)  # [S, Lc, D]
    z = encoder.norm(
        run_blocks(encoder.blocks, x, _dense_coords(encoder.blocks, lc, grid, s, x.device), None, False)
    )
    y = predictor.predictor_embed(torch.randn(s, lp, encoder.width, device=clips.device))  # [S, Lp, P]
    coords = _dense_coords(predictor.predictor_blocks, lp, predictor.grid, s, y.device)
    y = predictor.predictor_proj(
        predictor.predictor_norm(run_blocks(predictor.predictor_blocks, y, coords, None, False))
    )
    loss = z.float().abs().mean() + y.float().abs().mean()
    params = [p for p in (*encoder.parameters(), *predictor.parameters()) if p.requires_grad]
    torch.autograd.grad(loss, params, allow_unused=True)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    p.add_argument("--compile", action="store_true", help="model.compile=true")
    p.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak for MFU")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device, precision: str):
    """(config, engine, one synthetic batch on the device) for the benchmark's arguments."""
    from data_pipelines import MaskGenerator, build_train_stream
    from vjepa.config import load_config
    from vjepa.distributed.env import DistEnv
    from vjepa.models.builder import token_grid
    from vjepa.train.trainer import build_models, make_engine

    overrides = [
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
    ]
    if args.compile:
        overrides.append("model.compile=true")
    cfg = load_config(None, overrides)
    engine = make_engine(cfg, build_models(cfg, device), device, DistEnv())
    grid = token_grid(
        frames=args.frames, crop=args.crop, patch=cfg.model.patch_size, tubelet=cfg.model.tubelet_size
    )
    masks = MaskGenerator(cfg.mask, grid=grid, seed=cfg.train.seed, rank=0)
    batch = next(iter(build_train_stream(cfg.data, mask_generator=masks, seed=cfg.train.seed)))  # reused
    return cfg, engine, batch.to(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else argv
    if any(a.startswith("--lengths") for a in given):  # a batch of several clip lengths: step_mixed
        from benchmarks.step_mixed import main as mixed

        return mixed(given)
    from data_pipelines import normalize
    from vjepa.objective import pack_masks
    from vjepa.train.trainer import autocast_for, train_step
    from vjepa.utils import resolve_device

    args = parse_args(argv)
    device = resolve_device("auto")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg, engine, batch = build(args, device, precision)
    encoder, predictor = engine.module.encoder, engine.module.predictor
    packed = pack_masks(batch.masks)
    ctx_len = torch.tensor(packed.context.layout.lengths)
    tgt_len = torch.tensor(packed.target.layout.lengths)
    b, n = batch.clips.shape[0], packed_grid_tokens(encoder, batch.clips)
    ours = step_flops(
        encoder, predictor, batch=b, grid_tokens=n, context_lengths=ctx_len, target_lengths=tgt_len
    )
    shapes = dense_shapes(ctx_len, tgt_len)
    dense_total = dense_flops(ours, encoder, predictor, shapes)
    clips = normalize(batch.clips)

    def dense() -> None:
        with autocast_for(precision, device):
            dense_step(engine.target.module, encoder, predictor, clips, shapes)

    times, cpu, dense_times, dense_cpu = [], [], [], []
    for step in range(args.warmup + args.steps):  # ours and the dense reference alternate
        wall, proc = timed(lambda step=step: train_step(engine, batch, step, cfg, device), device)
        dense_wall, dense_proc = timed(dense, device)
        if step >= args.warmup:
            times.append(wall)
            cpu.append(proc)
            dense_times.append(dense_wall)
            dense_cpu.append(dense_proc)
    median, dense_median = statistics.median(times), statistics.median(dense_times)
    peak = peak_tflops(device, args.peak_tflops)
    padded, real = padded_layout_rows(batch.masks)
    achieved, dense_rate = ours.total / median / 1e12, dense_total / dense_median / 1e12
    result = {
        "bench": "step",
        "model": args.model,
        "frames": args.frames,
        "crop": args.crop,
        "batch": args.batch,
        "precision": precision,
        "compile": args.compile,
        "attention": args.attention,
        "grad_ckpt": args.ckpt,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "ms_per_step": round(median * 1000, 2),
        "cpu_ms_per_step": round(statistics.median(cpu) * 1000, 2),
        "clips_per_s": round(args.batch / median, 2),
        "tokens_per_clip": n,
        "context_tokens_per_batch": [int(m.context_valid.sum()) for m in batch.masks],
        "target_tokens_per_batch": [int(m.target_valid.sum()) for m in batch.masks],
        "padding_fraction": 0.0,  # packed: no padding row goes through a block
        "padded_layout_padding_fraction": round(1 - real / padded, 4),
        "flop_per_step": float(f"{ours.total:.4g}"),
        "achieved_tflops": round(achieved, 4),
        "dense_ms": round(dense_median * 1000, 2),
        "dense_flop": float(f"{dense_total:.4g}"),
        "dense_tflops": round(dense_rate, 4),
        "efficiency": round(achieved / dense_rate, 3),
        # Process CPU time: on a shared CPU with 1 torch thread, less sensitive to other processes' load.
        "dense_cpu_ms": round(statistics.median(dense_cpu) * 1000, 2),
        "efficiency_cpu": round(
            (ours.total / statistics.median(cpu)) / (dense_total / statistics.median(dense_cpu)), 3
        ),
        "mfu": round(achieved / peak, 4) if peak else None,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def packed_grid_tokens(encoder, clips: torch.Tensor) -> int:
    tp, hp, wp = encoder.patch_embed.grid(*clips.shape[2:])
    return tp * hp * wp


if __name__ == "__main__":
    main()
