"""`vjepa shards --input CSV_OR_DIR --out DIR`: packs a user's videos into webdataset tar shards."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shards",
        help="pack videos (a CSV of 'path label' lines, or a folder) into tar shards, optionally re-encoded",
    )
    p.add_argument("--input", required=True, help="CSV ('path label' per line) or a folder of videos")
    p.add_argument("--out", required=True, help="output folder for shard-NNNNNN.tar and summary.json")
    p.add_argument("--shard-size", type=int, default=256, help="videos per shard (default 256)")
    p.add_argument("--reencode", action="store_true", help="re-encode to H.264 mp4 (see --gop, --short-side)")
    p.add_argument("--gop", type=int, default=16, help="keyframe interval when re-encoding (default 16)")
    p.add_argument("--short-side", type=int, default=None, help="resize so the short side has this many px")
    p.add_argument("--workers", type=int, default=2, help="decode/re-encode processes (default 2)")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default 'shard')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipelines import pack_videos

    if not args.reencode and args.short_side is not None:
        raise ValueError("--short-side needs --reencode")
    summary = pack_videos(
        args.input,
        args.out,
        shard_size=args.shard_size,
        reencode=args.reencode,
        gop=args.gop,
        short_side=args.short_side,
        workers=args.workers,
        prefix=args.prefix,
    )
    print(json.dumps(summary), flush=True)
    return 0
