"""`vjepa train --config YAML [key=value ...]`: validate the whole config, then pretrain (alone, under
torchrun or under srun)."""

from __future__ import annotations

import argparse
import dataclasses
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pretrain a V-JEPA model")
    p.add_argument("--config", default=None, help="YAML file of overrides (defaults live in vjepa/config.py)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=20")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from vjepa.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)  # every error surfaces here, before any work
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from vjepa.train.trainer import train

    summary = train(cfg)
    if summary.rank == 0:
        print(json.dumps(dataclasses.asdict(summary)))
    return 0
