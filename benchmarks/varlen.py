"""Variable-length attention kernels (vjepa/layers/varlen.py) forward + backward on packed sequences: per-
sequence SDPA over slices, one SDPA with a block-diagonal mask, and SDPA on nested (jagged) tensors; the
default lengths are a vit_tiny 8x112 batch of 4 with the two default masks (encoder context sets, then the
predictor's context + target sets). Prints one JSON line; medians over `--repeats`, kernels alternating.

    python benchmarks/varlen.py --lengths 98 80 92 82 35 30 40 35 --heads 3 --head-dim 64 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vjepa.layers.varlen import VarlenLayout, attend_varlen
from vjepa.utils import resolve_device


def time_kernel(kernel: str, qkv: list[torch.Tensor], lengths: list[int], repeats: int) -> float | None:
    """Median seconds of one forward + backward, or None where the kernel does not run on this device."""
    layout = VarlenLayout(tuple(lengths), device=qkv[0].device, kernel=kernel)
    times = []
    for _ in range(repeats + 1):
        for t in qkv:
            t.grad = None
        t0 = time.perf_counter()
        try:
            attend_varlen(*qkv, layout).sum().backward()
        except (RuntimeError, NotImplementedError):
            return None
        if qkv[0].device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[98, 80, 92, 82, 35, 30, 40, 35])
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    device = resolve_device("auto")
    gen = torch.Generator().manual_seed(0)
    shape = (sum(args.lengths), args.heads, args.head_dim)  # [T, H, hd]
    qkv = [torch.randn(shape, generator=gen).to(device).requires_grad_(True) for _ in range(3)]
    kernels = ["slices", "mask", "nested"] + (["xformers"] if device.type == "cuda" else [])
    ms = {k: time_kernel(k, qkv, args.lengths, args.repeats) for k in kernels}
    result = {
        "bench": "varlen",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "lengths": args.lengths,
        "heads": args.heads,
        "head_dim": args.head_dim,
        **{f"{k}_ms": None if t is None else round(t * 1000, 3) for k, t in ms.items()},
        "fastest": min((k for k in ms if ms[k] is not None), key=lambda k: ms[k]),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
