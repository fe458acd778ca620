"""Paired before/after step times: two checkouts of vjepa (say main and a branch) each in its own worker
process, taking turns one training step at a time on the same synthetic batch, so both see the same machine
load (on a shared CPU, runs minutes apart differ by 20 % and more). Prints one JSON line with the medians,
the speedup and every round's ratio.

    python benchmarks/step_pair.py --before /path/to/main --after . --model vit_tiny --frames 8 --crop 112
    python benchmarks/step_pair.py --before . --before-set train.host_memory=release   # one option, A/B

The workers use only `load_config`, `build_models`, `make_engine`, `MaskGenerator`, `build_train_stream` and
`train_step`, which both checkouts must have; each runs with one torch thread unless --threads says more.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    """One checkout's side: build the step, print "ready", then run one step per line read from stdin."""
    import torch

    from data_pipelines import MaskGenerator, build_train_stream
    from vjepa.config import load_config
    from vjepa.distributed.env import DistEnv
    from vjepa.models.builder import token_grid
    from vjepa.train.trainer import build_models, make_engine, train_step

    device = torch.device("cpu")
    cfg = load_config(
        None,
        [
            f"model.name={args.model}",
            f"data.frames_per_clip={args.frames}",
            f"data.crop_size={args.crop}",
            f"data.batch_size={args.batch}",
            "data.dataset=synthetic",
            "train.precision=fp32",
            "train.device=cpu",
            f"train.steps={args.rounds + args.warmup}",
            "optim.warmup_steps=0",
            *(args.before_set if args.side == "before" else args.after_set),
        ],
    )
    engine = make_engine(cfg, build_models(cfg, device), device, DistEnv())
    grid = token_grid(
        frames=args.frames, crop=args.crop, patch=cfg.model.patch_size, tubelet=cfg.model.tubelet_size
    )
    masks = MaskGenerator(cfg.mask, grid=grid, seed=cfg.train.seed, rank=0)
    batch = next(iter(build_train_stream(cfg.data, mask_generator=masks, seed=cfg.train.seed)))
    print("ready", flush=True)
    for step, _ in enumerate(sys.stdin):
        f0, t0, c0 = faults(), time.perf_counter(), time.process_time()
        train_step(engine, batch, step, cfg, device)
        print(time.perf_counter() - t0, time.process_time() - c0, faults() - f0, flush=True)


def faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def start(side: str, root: Path, args: argparse.Namespace, argv: list[str]) -> subprocess.Popen:
    """The `side` worker, for the checkout at `root`, given this command's arguments `argv`."""
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(args.threads))
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--side", side, *argv]
    # cwd = the checkout, and this file run by path: `vjepa` and `data_pipelines` come from `root`.
    proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker for {root} did not start")
    return proc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, required=True, help="checkout root of the baseline")
    p.add_argument("--after", type=Path, default=Path("."), help="checkout root of the change")
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--before-set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--after-set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=("before", "after"), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for side in ("before", "after"):
            procs[side] = start(side, getattr(args, side).resolve(), args, argv)
    except RuntimeError:
        for proc in procs.values():  # the side that did start
            proc.kill()
        raise
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in procs}
    for r in range(args.warmup + args.rounds):
        for name, proc in procs.items():
            proc.stdin.write("step\n")
            proc.stdin.flush()
            wall, cpu, faulted = map(float, proc.stdout.readline().split())
            if r >= args.warmup:
                times[name].append((wall, cpu, faulted))
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    result = {"bench": "step_pair", "model": args.model, "frames": args.frames, "crop": args.crop}
    result.update(batch=args.batch, rounds=args.rounds, threads=args.threads)
    result.update(before_set=args.before_set, after_set=args.after_set)
    for name, ts in times.items():
        result[f"{name}_ms"] = round(statistics.median(t[0] for t in ts) * 1000, 1)
        result[f"{name}_cpu_ms"] = round(statistics.median(t[1] for t in ts) * 1000, 1)
        result[f"{name}_page_faults"] = int(statistics.median(t[2] for t in ts))  # minor, per step
    result["speedup"] = round(result["before_ms"] / result["after_ms"], 3)
    result["speedup_cpu"] = round(result["before_cpu_ms"] / result["after_cpu_ms"], 3)
    result["round_speedups"] = [round(b[0] / a[0], 3) for b, a in zip(times["before"], times["after"])]
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
