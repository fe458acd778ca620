"""`vjepa synth --out DIR`: writes the built-in synthetic motion-video dataset as mp4s in tar shards."""

from __future__ import annotations

import argparse
import json

_CLASSES = "Classes (the first --classes are used): {}."


class _ClassListHelp(argparse.HelpFormatter):
    """Fills in the built-in class names when the help is printed: the generator module loads PyAV, which
    `vjepa --help` and the other subcommands do not need."""

    def add_text(self, text: str | None) -> None:
        if text == _CLASSES:
            from data_pipelines import CLASS_NAMES

            text = _CLASSES.format(", ".join(CLASS_NAMES))
        super().add_text(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write the labelled synthetic motion-video dataset (train/val tar shards of mp4s)",
        description=_CLASSES,
        formatter_class=_ClassListHelp,
    )
    p.add_argument(
        "--out", required=True, help="output folder (gets train/, val/, classes.json, summary.json)"
    )
    p.add_argument("--videos", type=int, default=400, help="training videos (default 400)")
    p.add_argument(
        "--val-videos", type=int, default=None, help="validation videos (default 25%% of --videos)"
    )
    p.add_argument("--classes", type=int, default=8, help="number of classes (at most those listed above)")
    p.add_argument("--frames", type=int, default=32, help="frames per video (default 32)")
    p.add_argument("--size", type=int, default=64, help="frame height = width in pixels, even (default 64)")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate written to the mp4s (default 15)")
    p.add_argument("--seed", type=int, default=0, help="the dataset depends only on the seed and sizes")
    p.add_argument("--shard-size", type=int, default=100, help="videos per tar shard (default 100)")
    p.add_argument("--workers", type=int, default=2, help="rendering/encoding processes (default 2)")
    p.add_argument(
        "--env",
        choices=("none", "push"),
        default="none",
        help="push: write trajectories of the interactive push scene instead (--videos episodes of --frames "
        "frames, with their actions and states; one process)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.env == "push":
        return _run_push(args)
    from data_pipelines import write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out,
        videos=args.videos,
        val_videos=args.val_videos,
        classes=args.classes,
        frames=args.frames,
        size=args.size,
        fps=args.fps,
        seed=args.seed,
        shard_size=args.shard_size,
        workers=args.workers,
    )
    print(json.dumps(summary), flush=True)
    return 0


def _run_push(args: argparse.Namespace) -> int:
    """Trajectory shards of the push scene: train/ seeded seed.., val/ seeded after the training episodes."""
    from pathlib import Path

    from data_pipelines.push_env import PushEnvParams
    from data_pipelines.trajectories import write_push_trajectories

    val = args.val_videos if args.val_videos is not None else max(1, args.videos // 4)
    params = PushEnvParams(size=args.size)
    summary = {}
    for split, episodes, seed in (("train", args.videos, args.seed), ("val", val, args.seed + args.videos)):
        summary[split] = write_push_trajectories(
            Path(args.out) / split,
            episodes=episodes,
            steps=args.frames - 1,
            seed=seed,
            params=params,
            fps=args.fps,
            shard_size=args.shard_size,
            overwrite=True,
        )
    print(json.dumps(summary), flush=True)
    return 0
