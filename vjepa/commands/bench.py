"""`vjepa bench NAME [args]`: runs `benchmarks/NAME.py` (masks, loader, attention, step), which prints JSON."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def register(sub: argparse._SubParsersAction) -> None:
    names = sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))
    p = sub.add_parser("bench", help=f"benchmarks printing JSON ({', '.join(names) or 'none found'})")
    p.add_argument("name", help="benchmark name")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    script = BENCH_DIR / f"{args.name}.py"
    if not script.is_file():
        raise ValueError(f"unknown benchmark {args.name!r}: no {script}")
    module = runpy.run_path(str(script), run_name="vjepa_bench")
    old_argv = sys.argv
    try:
        sys.argv = [str(script), *args.args]
        module["main"](list(args.args))
    finally:
        sys.argv = old_argv
    return 0
