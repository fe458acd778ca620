"""`vjepa export --checkpoint PATH --out FILE [--format torch|safetensors]`: one plain file with the encoder,
predictor and EMA target (fp32) and the run's config, from any of our checkpoints (single, DDP or DeepSpeed
ZeRO 0-3), or converted from any file `vjepa.pretrained` reads (an official V-JEPA / V-JEPA 2 file too)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="consolidate a checkpoint (DeepSpeed shards included) into one plain model file",
        description="Writes {encoder, predictor, target_encoder, config} as one torch file. DIR may be a "
        "checkpoint step folder, a run's checkpoints/ folder or the run folder (newest complete checkpoint).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint step folder, checkpoints/ folder, run folder, or a model file to convert",
    )
    p.add_argument("--out", required=True, help="output file, e.g. runs/x/model_export.pt")
    p.add_argument(
        "--format",
        default="torch",
        choices=("torch", "safetensors"),
        help="torch pickle (weights only) or safetensors (config as JSON in the metadata)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vjepa.checkpoint import resolve_checkpoint
    from vjepa.distributed.export import export_checkpoint, save_model_file
    from vjepa.pretrained import read_pretrained

    if Path(args.checkpoint).is_dir():
        source = resolve_checkpoint(args.checkpoint)
        out = export_checkpoint(source, args.out, format=args.format)
    else:
        source = Path(args.checkpoint)
        out = save_model_file(read_pretrained(source), args.out, format=args.format)
    print(json.dumps({"checkpoint": str(source), "out": str(out), "format": args.format}), flush=True)
    return 0
