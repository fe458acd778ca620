"""`vjepa extract [--config YAML] --checkpoint PATH --data SPEC --out DIR [key=value ...]`: frozen-encoder
features of every eval clip (segments x spatial views, no augmentation) written in parts to DIR/<split>/,
resumable and spread over the ranks of a torchrun or SLURM launch; one JSON summary line per rank."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from data_pipelines import EvalClipSpec
    from vjepa.eval.config import EvalConfig

log = logging.getLogger(__name__)

FLAGS = {  # flag dest -> eval config key
    "checkpoint": "extract.checkpoint",
    "data": "extract.data",
    "out": "extract.out",
    "frames": "clips.frames",
    "frame_step": "clips.frame_step",
    "crop": "clips.crop",
    "segments": "clips.segments",
    "views": "clips.views",
    "batch": "extract.batch",
    "encoder": "extract.encoder",
    "pool": "extract.pool",
    "levels": "extract.levels",
    "dtype": "extract.dtype",
    "part_size": "extract.part_size",
    "random_init": "extract.random_init",
    "seed": "extract.seed",
    "workers": "extract.workers",
    "device": "extract.device",
    "progress": "extract.progress",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="frozen-encoder features of a dataset to disk (for vjepa probe), resumable, on many ranks",
        description="Loads the frozen encoder (the EMA target by default) from an exported model file, a "
        "checkpoint step folder, a run folder (DeepSpeed ZeRO checkpoints too) or an official V-JEPA file, "
        "and writes features [videos, views, N, D] in parts of --part-size videos. DATA with train/ and val/ "
        "(and test/) subfolders gives one feature folder per split (DIR/train/, ...); otherwise "
        "DIR/features/. Run it again with the same settings to finish a killed extraction; under torchrun "
        "or srun every rank takes its share of the parts. Flags map onto the eval config "
        "(configs/eval/*.yaml); key=value overrides come last.",
    )
    p.add_argument("--config", default=None, help="eval config YAML (e.g. configs/eval/k400.yaml)")
    p.add_argument("--checkpoint", help="exported model file, checkpoint folder, run folder or official file")
    p.add_argument("--data", help="dataset folder with train/ val/, shards, a CSV or a folder")
    p.add_argument("--out", help="output folder")
    p.add_argument("--frames", type=int, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--frame-step", type=int, help="source frames between sampled frames")
    p.add_argument("--crop", type=int, help="crop size in pixels (default: the checkpoint's)")
    p.add_argument("--segments", type=int, help="temporal segments per video (default 1)")
    p.add_argument("--views", type=int, choices=(1, 3), help="spatial views: 1 centre, 3 crops")
    p.add_argument("--batch", type=int, help="clips per forward pass (default 32)")
    p.add_argument("--encoder", choices=("target", "context"), help="which encoder (default target)")
    p.add_argument("--pool", choices=("none", "mean"), help="keep all tokens or their mean (default none)")
    p.add_argument(
        "--levels", type=int, nargs="+", help="encoder blocks written side by side (default: the output only)"
    )
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="on disk (default float16)")
    p.add_argument("--part-size", type=int, help="videos per part file (default 256)")
    p.add_argument("--random-init", action="store_true", default=None, help="random weights (a baseline)")
    p.add_argument("--seed", type=int, help="seed of the random weights with --random-init")
    p.add_argument("--workers", type=int, help="decoding worker processes per rank")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the encoder runs")
    p.add_argument("--progress", choices=("auto", "on", "off"), help="progress bar (auto: on a terminal)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="eval config overrides")
    p.set_defaults(func=run)


def frozen_encoder(cfg: EvalConfig, device: torch.device) -> tuple[nn.Module, EvalClipSpec, dict]:
    """The frozen encoder of cfg.extract's checkpoint for cfg.clips' eval clips (the checkpoint's frames,
    frame step and crop where unset), the clip spec, and the settings that identify the features."""
    from data_pipelines import EvalClipSpec
    from vjepa.eval.extract import checkpoint_config, load_checkpoint_state, load_encoder

    x, c = cfg.extract, cfg.clips
    state = load_checkpoint_state(x.checkpoint)
    ckpt = checkpoint_config(state)
    spec = EvalClipSpec(
        frames=c.frames or ckpt.data.frames_per_clip,
        frame_step=c.frame_step or ckpt.data.frame_step,
        crop=c.crop or ckpt.data.crop_size,
        segments=c.segments,
        views=c.views,
        decoder=ckpt.data.decoder,
    )
    spec.validate()
    encoder = load_encoder(
        state,
        frames=spec.frames,
        crop=spec.crop,
        which=x.encoder,
        random_init=x.random_init,
        seed=x.seed,
        device=device,
    )
    settings = {
        "checkpoint": str(Path(x.checkpoint).resolve()),
        "model": ckpt.model.name,
        "encoder": x.encoder,
        "random_init": x.random_init,
        "seed": x.seed,
    }
    if x.levels:  # several blocks side by side (only then a key: older feature folders stay valid)
        from vjepa.dense.config import check_levels
        from vjepa.dense.levels import LevelFeatures

        check_levels(x.levels, len(encoder.blocks), "extract.levels")
        encoder = LevelFeatures(encoder, x.levels)
        settings["levels"] = list(x.levels)
    return encoder, spec, settings


def run(args: argparse.Namespace) -> int:
    from data_pipelines import find_splits
    from vjepa.distributed.env import read_env
    from vjepa.eval.config import flag_overrides, load_eval_config
    from vjepa.eval.parts import extract_parts
    from vjepa.eval.progress import Progress
    from vjepa.utils import resolve_device

    start = time.perf_counter()
    given = {key: getattr(args, dest) for dest, key in FLAGS.items()}
    cfg = load_eval_config(args.config, [*flag_overrides(given), *args.overrides])
    x = cfg.extract
    x.check_paths()
    env = read_env()
    device = resolve_device(x.device, index=env.local_rank, key="extract.device")
    splits = find_splits(x.data)  # before the model is built: a bad data path fails fast
    encoder, spec, settings = frozen_encoder(cfg, device)
    summary: dict = {**settings, "rank": env.rank, "world": env.world_size, "out": {}, "videos": {}}
    summary.update(skipped={}, shape={}, complete={})
    for split, data in splits.items():
        label = f"extract {split}" + (f" [rank {env.rank}/{env.world_size}]" if env.world_size > 1 else "")

        def bar(total: int, label: str = label) -> Progress:
            return Progress(
                total, label=label, unit="videos", enabled=x.progress != "off", force=x.progress == "on"
            )

        folder = Path(x.out) / split
        done = extract_parts(
            encoder,
            data,
            spec,
            folder,
            settings=settings,
            part_size=x.part_size,
            rank=env.rank,
            world=env.world_size,
            batch=x.batch,
            device=device,
            pool=x.pool,
            dtype=x.dtype,
            workers=x.workers,
            meta={**settings, "split": split},
            progress=bar,
        )
        summary["out"][split] = str(folder)
        summary["complete"][split] = done["complete"]
        if done["complete"]:
            index = json.loads((folder / "index.json").read_text())
            summary["videos"][split] = index["videos"]
            summary["skipped"][split] = len(index["skipped"])
            summary["shape"][split] = index["shape"]
    summary.update({k: getattr(spec, k) for k in ("frames", "frame_step", "crop", "segments", "views")})
    summary.update(
        pool=x.pool, dtype=x.dtype, device=str(device), seconds=round(time.perf_counter() - start, 2)
    )
    print(json.dumps(summary), flush=True)
    return 0
