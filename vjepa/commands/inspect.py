"""`vjepa inspect PATH`: what a checkpoint holds (form, size, clip, grid, position kind, parameter counts,
parts), for any form `vjepa.pretrained` reads: run folders, exported files, official V-JEPA / V-JEPA 2 files."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="print what a checkpoint holds (format, size, clip, position kind, parameters)",
        description="Reads a run folder, a checkpoint folder, an exported torch/safetensors file or an official "
        "V-JEPA / V-JEPA 2 checkpoint and prints its architecture and contents.",
    )
    p.add_argument("path", help="run folder, checkpoint folder or model file")
    p.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vjepa.pretrained import describe

    info = describe(args.path)
    if args.json:
        print(json.dumps(info), flush=True)
        return 0
    rows = {**info, "parameters": ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in info["parameters"].items())}
    rows["grid"] = " x ".join(map(str, info["grid"]))
    rows["parts"] = ", ".join(info["parts"])
    if "predictor" in info:
        rows["predictor"] = ", ".join(f"{k} {v}" for k, v in info["predictor"].items())
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    return 0
