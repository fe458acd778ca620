"""`vjepa export --checkpoint DIR --out FILE`: one plain torch file with the encoder, predictor and EMA target
(fp32) and the run's config, from any of our checkpoints (single, DDP or DeepSpeed ZeRO 0-3)."""

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
        "--checkpoint", required=True, help="checkpoint step folder, checkpoints/ folder or run folder"
    )
    p.add_argument("--out", required=True, help="output file, e.g. runs/x/model_export.pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vjepa.checkpoint import resolve_checkpoint
    from vjepa.distributed.export import export_checkpoint

    folder = resolve_checkpoint(args.checkpoint)
    out = export_checkpoint(folder, args.out)
    print(json.dumps({"checkpoint": str(folder), "out": str(out)}), flush=True)
    return 0
