"""`vjepa demo`: the whole loop on one CPU with the built-in synthetic dataset: write real mp4 shards,
pretrain a tiny model on them, and report what happened."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synth -> train on the built-in synthetic dataset, with a report")
    p.add_argument("--out", default="runs/demo", help="folder for the dataset, the run and the report")
    p.add_argument("--steps", type=int, default=60, help="pretraining steps")
    p.add_argument("--videos", type=int, default=240, help="training videos to synthesise")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for training")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipelines.synthetic import write_synthetic_dataset
    from vjepa.config import load_config
    from vjepa.train.trainer import train

    out = Path(args.out)
    repo = Path(__file__).resolve().parents[2]
    t0 = time.perf_counter()
    data_dir = out / "data"
    if (data_dir / "summary.json").is_file():
        data_summary = json.loads((data_dir / "summary.json").read_text())
        print(f"[demo] 1/2 synthetic dataset already at {data_dir}")
    else:
        print(f"[demo] 1/2 writing the synthetic motion dataset to {data_dir} ...")
        data_summary = write_synthetic_dataset(data_dir, videos=args.videos, frames=16, size=64, seed=0)
    t1 = time.perf_counter()
    cfg = load_config(
        repo / "configs" / "quickstart.yaml",
        [
            "data.dataset=files",
            f"data.sources=[{{path: '{data_dir / 'train'}'}}]",
            f"train.steps={args.steps}",
            f"train.out_dir={out / 'run'}",
            "log.progress=true",
            *args.overrides,
        ],
    )
    print(f"[demo] 2/2 pretraining {cfg.model.name} for {cfg.train.steps} steps on {cfg.train.device} ...")
    summary = train(cfg)
    t2 = time.perf_counter()
    report = {
        "dataset": str(data_dir),
        "videos": data_summary.get("train", data_summary),
        "model": cfg.model.name,
        "steps": cfg.train.steps,
        "resumed_from_step": summary["start_step"],
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
        "skipped_steps": summary["skipped_steps"],
        "run_dir": summary["run_dir"],
        "seconds": {"synth": round(t1 - t0, 1), "train": round(t2 - t1, 1)},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print("[demo] report:", json.dumps(report, indent=2))
    print(f"[demo] logs: {out / 'run' / 'log.jsonl'}, checkpoints: {out / 'run' / 'checkpoints'}")
    return 0
