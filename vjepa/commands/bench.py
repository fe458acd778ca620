"""`vjepa bench NAME [args]`: runs the benchmark module `benchmarks.NAME` (attention, loader, masks, step),
which prints JSON. The benchmarks are installed with the package, so this works outside a checkout too."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def benchmark_names() -> list[str]:
    """The modules of the `benchmarks` package (listed without importing them)."""
    import benchmarks

    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def register(sub: argparse._SubParsersAction) -> None:
    names = benchmark_names()
    p = sub.add_parser("bench", help=f"benchmarks printing JSON ({', '.join(names) or 'none found'})")
    p.add_argument("name", help="benchmark name")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = benchmark_names()
    if args.name not in names:
        raise ValueError(f"unknown benchmark {args.name!r} (known: {', '.join(names)})")
    module = importlib.import_module(f"benchmarks.{args.name}")
    old_argv = sys.argv
    try:
        sys.argv = [f"vjepa bench {args.name}", *args.args]
        module.main(list(args.args))
    finally:
        sys.argv = old_argv
    return 0
