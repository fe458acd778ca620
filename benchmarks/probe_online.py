"""Online probe sweep cost: 20 heads (5 lrs x 4 wds) trained in one pass by `train_probes_online` (one
frozen-encoder forward per step for all heads) against 20 separate single-head online runs over the same
videos, in the same run. The encoder has random weights (cost does not depend on them); the videos are
synthetic, written into a temporary folder. Prints one JSON line per probe depth.

    python benchmarks/probe_online.py --videos 16 --model vit_tiny --frames 8 --crop 112 --depths 0,3

The saving is the encoder's share of a step: large for the 1-block V-JEPA 1 probe (depth 0), smaller for
V-JEPA 2's 4-block probe, whose blocks cost about a third of a 12-block encoder's forward each step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from data_pipelines import EvalClipSpec
from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.eval.evaluate import ProbeConfig
from vjepa.eval.online import train_probes_online
from vjepa.models.builder import build_encoder

LRS = (5e-3, 3e-3, 1e-3, 3e-4, 1e-4)
WDS = (0.01, 0.1, 0.4, 0.8)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=16, help="training videos (val: half as many)")
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--depths", default="0,3", help="probe depths to measure, comma-separated")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = EvalClipSpec(frames=args.frames, frame_step=1, crop=args.crop)
    encoder = build_encoder(args.model, frames=args.frames, crop=args.crop, device="cpu").eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_synthetic_dataset(
            data,
            videos=args.videos,
            val_videos=max(2, args.videos // 2),
            classes=4,
            frames=2 * args.frames,
            size=args.crop,
            seed=0,
            workers=1,
        )
        for depth in (int(d) for d in args.depths.split(",")):
            cfg = ProbeConfig(epochs=args.epochs, batch=args.batch, depth=depth, lrs=LRS, wds=WDS)

            def run(c: ProbeConfig) -> dict:
                return train_probes_online(encoder, data / "train", data / "val", spec, c)

            start = time.perf_counter()
            sweep = run(cfg)
            sweep_s = time.perf_counter() - start
            start = time.perf_counter()
            singles = [run(replace(cfg, lrs=(lr,), wds=(wd,))) for lr, wd in cfg.grid()]
            separate_s = time.perf_counter() - start
            same = all(h["top1_val"] == s["top1_val"] for h, s in zip(sweep["heads"], singles))
            print(
                json.dumps(
                    {
                        "benchmark": "probe_online",
                        "model": args.model,
                        "frames": args.frames,
                        "crop": args.crop,
                        "threads": args.threads,
                        "train_videos": args.videos,
                        "epochs": args.epochs,
                        "probe_depth": depth,
                        "attention_heads": sweep["attention_heads"],
                        "sweep_heads": len(cfg.grid()),
                        "sweep_s": round(sweep_s, 2),
                        "separate_runs_s": round(separate_s, 2),
                        "speedup": round(separate_s / sweep_s, 2),
                        "goal_speedup": 5.0,
                        "heads_match_single_runs_top1": same,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
