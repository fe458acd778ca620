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
    p.add_argument(
        "--print-value",
        metavar="KEY",
        default=None,
        help="print one resolved value (e.g. train.out_dir, for job scripts) and exit",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=20")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from vjepa.config import load_config, to_dict

    # Every mistake surfaces here, before any work; the data and run folder paths too, unless only printing
    # (job scripts print values where the data may not be mounted).
    printing = args.print_config or args.print_value is not None
    cfg = load_config(args.config, args.overrides, check_paths=not printing)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.print_value is not None:
        value = to_dict(cfg)
        for part in args.print_value.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"--print-value: no config key {args.print_value!r}")
            value = value[part]
        print(value if isinstance(value, str) else json.dumps(value))
        return 0
    from vjepa.train.trainer import train

    args.run_dir = cfg.train.out_dir  # where the CLI appends the traceback of an error that stops the run
    summary = train(cfg)
    if summary.rank == 0:
        print(json.dumps(dataclasses.asdict(summary)))
    return 0
