"""Mask drawing speed: our batched `draw_masks` against a per-sample, per-block Python-loop sampler.

Both draw the same distribution (V-JEPA's two default multi-block configurations: block size once per
batch, positions per sample, union = target, complement = context, padded index sets). Prints one JSON
line; the speed-up is measured in the same run, alternating rounds of the two samplers so that both see
the same machine load.

    python benchmarks/masks.py --batch 24 --frames 16 --crop 224 --patch 16 --tubelet 2 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from data_pipelines.batch import MaskBatch
from data_pipelines.masking import MaskSpec, default_mask_specs, draw_masks
from data_pipelines.masking.blocks import draw_block_size

_ROUND = 10  # consecutive timed calls of one sampler before switching to the other


def loop_draw_masks(
    specs: list[MaskSpec], *, grid: tuple[int, int, int], batch_size: int, generator: torch.Generator
) -> list[MaskBatch]:
    """The straightforward sampler: one mask tensor per sample, one slice assignment per block."""
    out = []
    for spec in specs:
        t, h, w = draw_block_size(
            grid=grid,
            spatial_scale=spec.spatial_scale,
            temporal_scale=spec.temporal_scale,
            aspect_ratio=spec.aspect_ratio,
            generator=generator,
        )
        context, target = [], []
        for _ in range(batch_size):
            hidden = torch.ones(grid, dtype=torch.bool)
            while hidden.all():  # re-draw a sample whose blocks leave no context
                hidden = torch.zeros(grid, dtype=torch.bool)
                for _ in range(spec.num_blocks):
                    t0 = int(torch.randint(0, grid[0] - t + 1, (1,), generator=generator))
                    h0 = int(torch.randint(0, grid[1] - h + 1, (1,), generator=generator))
                    w0 = int(torch.randint(0, grid[2] - w + 1, (1,), generator=generator))
                    hidden[t0 : t0 + t, h0 : h0 + h, w0 : w0 + w] = True
            flat = hidden.flatten()
            context.append(torch.nonzero(~flat).squeeze(1))
            target.append(torch.nonzero(flat).squeeze(1))
        out.append(MaskBatch.from_lists(context, target))
    return out


def _time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _hidden_fractions(masks: list[list[MaskBatch]], num_tokens: int) -> list[float]:
    """Mean target fraction per sample, one value per mask configuration."""
    per_spec = zip(*masks)
    return [
        round(statistics.fmean(float(m.target_valid.sum(1).float().mean()) for m in batches) / num_tokens, 4)
        for batches in per_spec
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--tubelet", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200, help="timed batches per sampler")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    for key in ("batch", "frames", "crop", "patch", "tubelet", "repeats"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key}: must be >= 1, got {getattr(args, key)}")

    torch.set_num_threads(1)
    grid = (args.frames // args.tubelet, args.crop // args.patch, args.crop // args.patch)
    specs = default_mask_specs()
    ours_gen = torch.Generator().manual_seed(args.seed)
    loop_gen = torch.Generator().manual_seed(args.seed)
    kw = {"grid": grid, "batch_size": args.batch}

    def ours() -> list[MaskBatch]:
        return draw_masks(specs, generator=ours_gen, **kw)

    def loop() -> list[MaskBatch]:
        return loop_draw_masks(specs, generator=loop_gen, **kw)

    for _ in range(args.warmup):
        ours()
        loop()
    ours_ms: list[float] = []
    loop_ms: list[float] = []
    for start in range(0, args.repeats, _ROUND):  # alternate rounds so that both see the same machine load
        calls = min(_ROUND, args.repeats - start)
        ours_ms += [_time_ms(ours) for _ in range(calls)]
        loop_ms += [_time_ms(loop) for _ in range(calls)]
    drawn = [ours() for _ in range(max(1, 1000 // args.batch))]  # untimed: about 1,000 samples
    ms, lms = statistics.median(ours_ms), statistics.median(loop_ms)
    result = {
        "bench": "masks",
        "ms_per_batch": round(ms, 4),
        "loop_ms_per_batch": round(lms, 4),
        "speedup": round(lms / ms, 2),
        "hidden_fraction": _hidden_fractions(drawn, grid[0] * grid[1] * grid[2]),
        "batch": args.batch,
        "grid": list(grid),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }
    if not args.json:
        print(f"masks: {ms:.3f} ms/batch, loop {lms:.3f} ms ({lms / ms:.1f}x), grid {grid}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
