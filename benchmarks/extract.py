"""Extraction throughput: `vjepa extract`'s part writer (decode, encode, write parts) in videos/s with 1 and
2 decoding workers on the same files and the same encoder, in the same run, against the bare decode loop
(the eval clips only, no encoder, no parts). One JSON line:

    python benchmarks/extract.py --videos 64 --frames 16 --crop 112 --model vit_tiny --json

The encoder has random weights (throughput does not depend on them); the data are synthetic videos written
into a temporary folder. Rounds alternate the configurations (order flipped every round); the figures are
the best round of each, the steadiest estimate on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from data_pipelines import EvalClipSpec, iter_eval_videos, list_eval_samples
from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.eval.parts import extract_parts
from vjepa.models.builder import build_encoder


def time_extract(encoder, data: Path, spec: EvalClipSpec, out: Path, *, workers: int, batch: int) -> float:
    start = time.perf_counter()
    done = extract_parts(encoder, data, spec, out, settings={}, part_size=16, batch=batch, workers=workers)
    assert done["complete"]
    return time.perf_counter() - start


def time_decode(data: Path, spec: EvalClipSpec) -> float:
    start = time.perf_counter()
    for _ in iter_eval_videos(data, spec, workers=0):
        pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        write_synthetic_dataset(
            data,
            videos=args.videos,
            val_videos=0,
            classes=4,
            frames=2 * args.frames,
            size=args.crop,
            seed=0,
            workers=1,
        )
        data = data / "train"
        videos = len(list_eval_samples(data))
        spec = EvalClipSpec(frames=args.frames, frame_step=1, crop=args.crop)
        encoder = build_encoder(args.model, frames=args.frames, crop=args.crop, device="cpu").eval()
        best: dict[str, float] = {}
        for r in range(args.rounds):
            order = ["decode", "workers_1", "workers_2"]
            for name in order if r % 2 == 0 else order[::-1]:
                if name == "decode":
                    seconds = time_decode(data, spec)
                else:
                    workers = int(name[-1])
                    out = root / f"out_{name}_{r}"
                    seconds = time_extract(encoder, data, spec, out, workers=workers, batch=args.batch)
                best[name] = min(best.get(name, float("inf")), seconds)
    result = {
        "benchmark": "extract",
        "videos": videos,
        "model": args.model,
        "frames": args.frames,
        "crop": args.crop,
        "threads": args.threads,
        **{f"{k}_videos_s": round(videos / v, 2) for k, v in best.items()},
        "workers_2_over_1": round(best["workers_1"] / best["workers_2"], 3),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=1), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
