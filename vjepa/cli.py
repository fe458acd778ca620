"""The `vjepa` command. Thin: each module in `vjepa.commands` registers one subcommand, parses its
arguments and calls the library."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import vjepa.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vjepa", description="V-JEPA video pretraining and evaluation.")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(vjepa.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"vjepa.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad config or input: one clear line, no traceback
        print(f"vjepa {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
