"""`vjepa extract --checkpoint PATH --data SPEC --out DIR`: frozen-encoder features of every eval clip
(segments x spatial views, no augmentation) written to DIR/<split>.pt, with a one-line JSON summary."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="frozen-encoder features of a dataset to disk (for vjepa probe)",
        description="Loads the frozen encoder (the EMA target by default) from an exported model file, a "
        "checkpoint step folder or a run folder (DeepSpeed ZeRO checkpoints too), and writes "
        "{tokens [videos, views, N, D] float16, labels, keys, meta}. DATA with train/ and val/ (and test/) "
        "subfolders gives one file per split (DIR/train.pt, ...); otherwise DIR/features.pt.",
    )
    p.add_argument("--checkpoint", required=True, help="exported model file, checkpoint folder or run folder")
    p.add_argument("--data", required=True, help="dataset folder with train/ val/, shards, a CSV or a folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--frame-step", type=int, default=None, help="source frames between sampled frames")
    p.add_argument("--crop", type=int, default=None, help="crop size in pixels (default: the checkpoint's)")
    p.add_argument("--segments", type=int, default=1, help="temporal segments per video")
    p.add_argument("--views", type=int, default=1, choices=(1, 3), help="spatial views: 1 centre, 3 crops")
    p.add_argument("--batch", type=int, default=32, help="clips per forward pass")
    p.add_argument("--encoder", default="target", choices=("target", "context"), help="which encoder")
    p.add_argument("--pool", default="none", choices=("none", "mean"), help="keep all tokens or their mean")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights with --random-init")
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the encoder runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipelines import EvalClipSpec, find_splits
    from vjepa.eval.extract import (
        checkpoint_config,
        extract_split,
        load_checkpoint_state,
        load_encoder,
        save_features,
    )
    from vjepa.utils import resolve_device

    start = time.perf_counter()
    state = load_checkpoint_state(args.checkpoint)
    cfg = checkpoint_config(state)
    spec = EvalClipSpec(
        frames=cfg.data.frames_per_clip if args.frames is None else args.frames,
        frame_step=cfg.data.frame_step if args.frame_step is None else args.frame_step,
        crop=cfg.data.crop_size if args.crop is None else args.crop,
        segments=args.segments,
        views=args.views,
        decoder=cfg.data.decoder,
    )
    spec.validate()
    device = resolve_device(args.device, key="--device")
    splits = find_splits(args.data)  # before the model is built: a bad --data fails fast
    encoder = load_encoder(
        state,
        frames=spec.frames,
        crop=spec.crop,
        which=args.encoder,
        random_init=args.random_init,
        seed=args.seed,
        device=device,
    )
    meta = {
        "checkpoint": str(args.checkpoint),
        "model": cfg.model.name,
        "encoder": args.encoder,
        "random_init": args.random_init,
        "seed": args.seed,
    }
    summary: dict = {**meta, "out": {}, "videos": {}, "skipped": {}, "shape": {}}
    for split, data in splits.items():
        features = extract_split(
            encoder,
            data,
            spec,
            batch=args.batch,
            device=device,
            pool=args.pool,
            workers=args.workers,
            meta={**meta, "split": split},
        )
        path = save_features(features, Path(args.out) / f"{split}.pt")
        summary["out"][split] = str(path)
        summary["videos"][split] = len(features)
        summary["skipped"][split] = len(features.meta["skipped"])
        summary["shape"][split] = list(features.tokens.shape)
    summary.update(
        frames=spec.frames,
        frame_step=spec.frame_step,
        crop=spec.crop,
        segments=spec.segments,
        views=spec.views,
    )
    summary.update(pool=args.pool, device=str(device), seconds=round(time.perf_counter() - start, 2))
    print(json.dumps(summary), flush=True)
    return 0
