"""`vjepa probe --train FEATURES --val FEATURES`: trains an attentive (or linear) probe on frozen features
(one view per video per epoch), evaluates with the softmax averaged over all views, prints one JSON line."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="train and evaluate a probe on frozen features (from vjepa extract); prints top-1",
        description="AdamW with a cosine learning rate, as the V-JEPA evaluation. Deterministic given --seed.",
    )
    p.add_argument("--train", required=True, help="training feature file (vjepa extract)")
    p.add_argument("--val", required=True, help="validation feature file")
    p.add_argument("--kind", default="attentive", choices=("attentive", "linear"), help="probe type")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--wd", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--depth", type=int, default=0, help="self-attention blocks before the attentive pooler")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default: from the width)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vjepa.eval.evaluate import ProbeConfig, train_probe
    from vjepa.eval.extract import load_features
    from vjepa.utils import resolve_device

    device = resolve_device(args.device, key="--device")
    cfg = ProbeConfig(
        kind=args.kind,
        epochs=args.epochs,
        lr=args.lr,
        wd=args.wd,
        batch=args.batch,
        seed=args.seed,
        depth=args.depth,
        heads=args.heads,
    )
    train, val = load_features(args.train), load_features(args.val)
    result = train_probe(train, val, cfg, device=device)
    print(json.dumps({"train": args.train, "val": args.val, **result}), flush=True)
    return 0
