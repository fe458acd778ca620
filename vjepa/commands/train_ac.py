"""`vjepa train-ac --config YAML [key=value ...]`: train the action-conditioned predictor on a frozen
encoder's features of trajectory shards or DROID episodes (one process, or `torchrun ... -m vjepa train-ac`
with dist.backend=ddp; see vjepa/world/train.py)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-ac",
        help="train the action-conditioned world-model predictor on frozen features of trajectories",
        description="Keys and defaults: vjepa/world/config.py (e.g. configs/ac/push_tiny.yaml). The run folder "
        "(train.out_dir) gets config.yaml, log.jsonl and checkpoints/; the same command resumes a stopped run.",
    )
    p.add_argument(
        "--config", default=None, help="YAML file of overrides (defaults live in vjepa/world/config.py)"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.steps=20")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from vjepa.config import to_dict
    from vjepa.world.config import load_ac_config

    cfg = load_ac_config(args.config, args.overrides, check_paths=not args.print_config)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from vjepa.world.train import train_ac

    args.run_dir = cfg.train.out_dir  # where the CLI appends the traceback of an error that stops the run
    print(json.dumps(train_ac(cfg)))
    return 0
