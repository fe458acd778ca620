"""Speed of the built-in push scene: episodes rendered per second (numpy only), and with their mp4 encoding
(what `vjepa synth --env push` does per episode, one process). Prints one JSON line.

    python benchmarks/push_env.py --episodes 100 --steps 32 --size 64
"""

from __future__ import annotations

import argparse
import json
import time

from data_pipelines.encode import encode_video
from data_pipelines.push_env import PushEnv, PushEnvParams
from data_pipelines.trajectories import push_episode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=32, help="actions per episode (frames = steps + 1)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--encode-episodes", type=int, default=20, help="episodes also encoded to mp4")
    args = parser.parse_args(argv)
    for key in ("episodes", "steps", "size", "encode_episodes"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    env = PushEnv(PushEnvParams(size=args.size))
    start = time.perf_counter()
    for seed in range(args.episodes):
        frames, _, _ = push_episode(env, seed=seed, steps=args.steps)
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    for seed in range(args.encode_episodes):
        frames, _, _ = push_episode(env, seed=seed, steps=args.steps)
        encode_video(frames, fps=10.0, gop=8, threads=1)
    both_s = time.perf_counter() - start
    result = {
        "benchmark": "push_env",
        "episodes": args.episodes,
        "steps": args.steps,
        "size": args.size,
        "render_episodes_per_s": round(args.episodes / render_s, 1),
        "render_frames_per_s": round(args.episodes * (args.steps + 1) / render_s, 1),
        "render_and_encode_episodes_per_s": round(args.encode_episodes / both_s, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
