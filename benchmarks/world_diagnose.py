"""Why the world model does or does not plan, for one frozen encoder and push-scene setting
(vjepa/world/diagnose.py): the state probe's R^2 and the oracle planner (true next-frame features). Prints one
JSON line.

    python benchmarks/world_diagnose.py --encoder runs/quickstart --agent-radius 0.07 --episodes 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from data_pipelines.push_env import PushEnv, PushEnvParams
from vjepa.world.config import EncoderSettings
from vjepa.world.diagnose import encoder_features, oracle_planning, state_probe
from vjepa.world.features import load_frozen_encoder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, help="the frozen encoder's checkpoint")
    parser.add_argument("--random-init", action="store_true", help="its architecture with fresh weights")
    parser.add_argument("--crop", type=int, default=64, help="frame size (the scene is rendered at it)")
    parser.add_argument("--agent-radius", type=float, default=PushEnvParams.agent_radius)
    parser.add_argument("--probe-frames", type=int, default=500, help="frames of the state probe (0: skip)")
    parser.add_argument("--episodes", type=int, default=10, help="oracle planning episodes (0: skip)")
    parser.add_argument("--seed", type=int, default=2_000_000, help="the first oracle episode's seed")
    parser.add_argument("--grid", type=int, default=9, help="candidate actions per axis")
    args = parser.parse_args(argv)
    env = PushEnv(dataclasses.replace(PushEnvParams(size=args.crop), agent_radius=args.agent_radius))
    settings = EncoderSettings(checkpoint=args.encoder, random_init=args.random_init)
    encoder, info = load_frozen_encoder(settings, crop=args.crop, device=torch.device("cpu"))
    features = encoder_features(encoder, torch.device("cpu"))
    result: dict = {"benchmark": "world_diagnose", "encoder": info, "crop": args.crop}
    result["agent_radius"] = args.agent_radius
    start = time.perf_counter()
    if args.probe_frames:
        result["probe"] = state_probe(features, env, range(10_000, 10_000 + args.probe_frames))
    if args.episodes:
        seeds = range(args.seed, args.seed + args.episodes)
        result["oracle"] = oracle_planning(features, env, seeds, grid=args.grid)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
