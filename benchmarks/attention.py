"""Attention speed and memory: our path (`vjepa.layers.attention.attend`, PyTorch SDPA) against a plain eager
softmax(q k^T / sqrt(hd)) v, forward + backward, at V-JEPA's token counts (1568 = 16x224x224 and
2048 = 16x256x256 with tubelet 2, patch 16), head dim 64. Prints one JSON line.

Times are medians over `--repeats` forward+backward passes, the two implementations alternating so that
both see the same machine load. Peak extra memory is what one forward+backward adds on top of its inputs
(q, k, v and the output gradient), the input gradients included:
  - CUDA: torch.cuda.max_memory_allocated over the pass, minus the memory allocated before it.
  - CPU: PyTorch's CPU allocator keeps no cache, so the process's resident set follows the live tensors.
    Each (implementation, token count) is measured in a fresh Python process, so nothing left by the
    other one (or by a larger earlier pass) can hide its growth. Inside it, after one warm-up pass, the
    resident high-water mark is reset (`5` to /proc/self/clear_refs) and the peak (VmHWM) is read after
    one pass, minus the resident size before it. glibc's malloc is pinned to a fixed mmap threshold
    (MALLOC_MMAP_THRESHOLD_), so every large tensor is its own mapping, returned on free: its default
    dynamic threshold would otherwise keep freed blocks in the heap and count them as baseline. Where
    clear_refs is missing (not Linux), the growth of ru_maxrss over the first pass is used instead.

    python benchmarks/attention.py --tokens 1568 2048 --heads 8 --head-dim 64 --batch 1 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vjepa.layers.attention import attend
from vjepa.utils import resolve_device

Attn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MIB = 2**20


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The eager baseline: matmul, softmax, matmul on [B, H, N, hd]; the scale is folded into q (an N x hd
    multiply instead of an N x N one)."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # [B, H, N, N]
    return scores.softmax(dim=-1) @ v


def ours(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attend(q, k, v, backend="sdpa")


VARIANTS: dict[str, Attn] = {"ours": ours, "naive": naive_attention}


def _inputs(args: argparse.Namespace, tokens: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(tokens)
    shape = (args.batch, args.heads, tokens, args.head_dim)  # [B, H, N, hd]
    dtype = getattr(torch, args.dtype)
    qkv = [torch.randn(shape, generator=gen).to(args.device, dtype).requires_grad_(True) for _ in range(3)]
    grad = torch.randn(shape, generator=gen).to(args.device, dtype)
    return qkv, grad


def _step(fn: Attn, qkv: list[torch.Tensor], grad: torch.Tensor) -> None:
    """One forward + backward; the input gradients are dropped afterwards."""
    fn(*qkv).backward(grad)
    for t in qkv:
        t.grad = None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- memory


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _cpu_peak_bytes(fn: Attn, qkv: list[torch.Tensor], grad: torch.Tensor) -> tuple[int, str]:
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        before = _maxrss_bytes()  # the first pass in this fresh process, so it has to beat only the baseline
        _step(fn, qkv, grad)
        return max(_maxrss_bytes() - before, 0), "ru_maxrss growth in a fresh process"
    _step(fn, qkv, grad)  # warm-up: thread pools and one-time buffers are not attention memory
    base = _proc_status_kib("VmRSS")
    clear_refs.write_text("5")  # reset VmHWM to the current resident size
    _step(fn, qkv, grad)
    return max(_proc_status_kib("VmHWM") - base, 0) * 1024, "VmHWM over VmRSS in a fresh process"


def _cuda_peak_bytes(fn: Attn, qkv: list[torch.Tensor], grad: torch.Tensor, device: str) -> int:
    _step(fn, qkv, grad)
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    _step(fn, qkv, grad)
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def _memory_worker(args: argparse.Namespace) -> None:
    """Runs in the fresh process: prints {"peak_bytes", "method"} for one variant and token count."""
    variant, tokens = args.memory_worker[0], int(args.memory_worker[1])
    qkv, grad = _inputs(args, tokens)
    peak, method = _cpu_peak_bytes(VARIANTS[variant], qkv, grad)
    print(json.dumps({"peak_bytes": peak, "method": method}))


def _cpu_peak_in_fresh_process(args: argparse.Namespace, variant: str, tokens: int) -> tuple[int, str]:
    # A fixed threshold also turns off glibc's dynamic threshold; 128 KiB is its default starting value.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--memory-worker", variant, str(tokens),
        "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--batch", str(args.batch),
        "--dtype", args.dtype, "--threads", str(torch.get_num_threads()), "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker for {variant} at {tokens} tokens failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(out["peak_bytes"]), str(out["method"])


# ----------------------------------------------------------------------------- timing


def _time_ms(fn: Attn, qkv: list[torch.Tensor], grad: torch.Tensor, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    _step(fn, qkv, grad)
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def measure(args: argparse.Namespace, tokens: int) -> dict[str, float | int]:
    """Median forward+backward time and peak extra memory of both implementations at `tokens` tokens."""
    qkv, grad = _inputs(args, tokens)
    with torch.no_grad():  # the two agree before they are compared
        diff = float((ours(*qkv) - naive_attention(*qkv)).abs().max())
    for _ in range(args.warmup):
        _step(ours, qkv, grad)
        _step(naive_attention, qkv, grad)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, fn in VARIANTS.items():
            times[name].append(_time_ms(fn, qkv, grad, args.device))
    del qkv, grad
    peaks, method = {}, "torch.cuda.max_memory_allocated"
    for name, fn in VARIANTS.items():
        if args.device.startswith("cuda"):
            qkv, grad = _inputs(args, tokens)
            peaks[name] = _cuda_peak_bytes(fn, qkv, grad, args.device)
            del qkv, grad
        else:
            peaks[name], method = _cpu_peak_in_fresh_process(args, name, tokens)
    ours_ms, naive_ms = statistics.median(times["ours"]), statistics.median(times["naive"])
    return {
        "tokens": tokens,
        "ours_ms": round(ours_ms, 2),
        "naive_ms": round(naive_ms, 2),
        "speedup": round(naive_ms / ours_ms, 2),
        "ours_peak_mib": round(peaks["ours"] / MIB, 1),
        "naive_peak_mib": round(peaks["naive"] / MIB, 1),
        "memory_ratio": round(peaks["ours"] / max(peaks["naive"], 1), 3),
        "max_abs_diff": diff,
        "memory_method": method,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1568, 2048])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7, help="timed forward+backward passes per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=resolve_device("auto").type)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--memory-worker", nargs=2, metavar=("VARIANT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key in ("heads", "head_dim", "batch", "repeats"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}: must be >= 1, got {getattr(args, key)}")
    if any(n < 1 for n in args.tokens):
        raise ValueError(f"--tokens: every count must be >= 1, got {args.tokens}")
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        _memory_worker(args)
        return

    results = [measure(args, n) for n in args.tokens]
    report = {
        "bench": "attention",
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "batch": args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "results": results,
    }
    if not args.json:
        for r in results:
            print(
                f"attention {r['tokens']} tokens: ours {r['ours_ms']} ms vs naive {r['naive_ms']} ms "
                f"({r['speedup']}x), peak extra {r['ours_peak_mib']} vs {r['naive_peak_mib']} MiB "
                f"(x{r['memory_ratio']})"
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
