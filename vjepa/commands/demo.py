"""`vjepa demo`: does pretraining gain anything, measured honestly on one machine.

Renders labelled motion clips (or reads `--data DIR`), pretrains with the demo config, then probes the
trained target encoder and every baseline (the run's own initial weights, raw pixels, a single repeated
frame; the context encoder beside them) with the same probes and seeds, and prints one table: val top-1
± binomial SE and the probe's train top-1 for each, the margin over the best baseline in SE, the collapse
monitors and the time per stage. Intermediate checkpoints give a curve of accuracy against pretraining
step. Writes `report.json` and PNG plots to `--out`.

`--mode quick` is a smoke run of the same pipeline on tiny data: it shows the machinery and claims nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_CONFIG, FALLBACK_CONFIG = "demo", "quickstart"


@dataclass(frozen=True)
class DemoPlan:
    """One protocol: how much labelled data, how long to pretrain, which probes with which seeds."""

    train_videos: int  # labelled clips the probes train on (rendered; --data brings its own)
    val_videos: int
    steps: int | None  # pretraining steps; None keeps the config's train.steps
    probes: tuple[str, ...]  # names from probe_settings()
    seeds: tuple[int, ...]  # probe seeds; few-label: one label subset each; L-BFGS on all labels: one
    curve_probe: str  # the cheap probe run on the intermediate checkpoints
    curve_points: int  # intermediate checkpoints probed (besides the initial and the final weights)
    claims: bool  # False: a smoke run whose numbers mean nothing
    max_seeds: tuple[tuple[str, int], ...] = ()  # (probe, n): that probe runs the first n seeds only


PLANS = {
    "full": DemoPlan(
        train_videos=2000,
        val_videos=500,
        steps=None,
        probes=("mean", "time", "few16", "attentive"),  # "quad" overfits here (train ~1.0, val at chance)
        seeds=(0, 1, 2),  # the few-label probe: three label subsets
        curve_probe="time",
        curve_points=3,
        claims=True,
        max_seeds=(("attentive", 2),),
    ),
    "quick": DemoPlan(
        train_videos=160,
        val_videos=80,
        steps=16,
        probes=("mean", "time", "few4", "attentive"),
        seeds=(0, 1),
        curve_probe="time",
        curve_points=1,
        claims=False,
    ),
}


def probe_settings(grid: tuple[int, int, int]) -> dict[str, Any]:
    """The probes by name for features on token grid (T, H, W); each seed of a plan replaces the seed.
    Linear probes are fitted by L-BFGS (deterministic); pooled ones keep coarse where and when."""
    from vjepa.eval.evaluate import ProbeConfig

    t = grid[0]
    lbfgs = dict(kind="linear", solver="lbfgs", wd=1e-3, lbfgs_iters=200)
    return {
        "mean": ProbeConfig(**lbfgs),  # mean-pooled tokens
        "time": ProbeConfig(**lbfgs, pool=(t, 1, 1)),  # one cell per time step
        "quad": ProbeConfig(**lbfgs, pool=(t, 2, 2)),  # 2 x 2 quadrants per time step
        "few16": ProbeConfig(**lbfgs, labels_per_class=16),
        "few4": ProbeConfig(**lbfgs, labels_per_class=4),
        "token": ProbeConfig(kind="token_linear", solver="lbfgs", wd=1e-3, lbfgs_iters=200),
        "attentive": ProbeConfig(
            kind="attentive", epochs=10, lr=1e-3, wd=0.01, batch=32, depth=0, heads=None
        ),
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="pretrain, then probe the trained encoder beside its baselines (rendered motion clips or --data)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--out", default="runs/demo", help="folder for the run, the report and the plots")
    p.add_argument("--mode", default="full", choices=sorted(PLANS), help="the full protocol or a smoke run")
    p.add_argument(
        "--data",
        default=None,
        help="labelled dataset DIR: DIR/train and DIR/val (tar shards or class folders) or DIR/train.csv and "
        "DIR/val.csv ('path label' lines); default: rendered motion clips",
    )
    p.add_argument(
        "--config",
        default=None,
        help=f"training config (default: the bundled {DEMO_CONFIG!r}, else {FALLBACK_CONFIG!r} + a small-batch recipe)",
    )
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the mode's)")
    p.add_argument("--train-videos", type=int, default=None, help="rendered labelled training clips")
    p.add_argument("--val-videos", type=int, default=None, help="rendered validation clips")
    p.add_argument("--probes", default=None, help="comma-separated probe names, e.g. quad,few16,attentive")
    p.add_argument("--seeds", type=int, default=None, help="probe seeds averaged per probe")
    p.add_argument(
        "--fresh", action="store_true", help="delete a previous run in --out instead of resuming it"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the demo's ops are small; on 2 shared cores 1 thread ran a training "
        "step 4x and a forward 5x faster than 2)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for training")
    p.set_defaults(func=run)


def resolve_plan(args: argparse.Namespace) -> DemoPlan:
    plan = PLANS[args.mode]
    known = probe_settings((1, 1, 1))
    probes = tuple(args.probes.split(",")) if args.probes else plan.probes
    unknown = [p for p in probes if p not in known]
    if unknown:
        raise ValueError(f"--probes: unknown {unknown} (known: {', '.join(known)})")
    for flag in ("steps", "train_videos", "val_videos", "seeds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: must be >= 1, got {value}")
    return replace(
        plan,
        train_videos=args.train_videos or plan.train_videos,
        val_videos=args.val_videos or plan.val_videos,
        steps=args.steps or plan.steps,
        probes=probes,
        seeds=tuple(range(args.seeds)) if args.seeds else plan.seeds,
        curve_probe=plan.curve_probe if plan.curve_probe in probes else probes[0],
    )


def small_batch_recipe(steps: int) -> list[str]:
    """The training recipe until the bundled demo config ships: the quickstart config with a tiny encoder
    and the small-batch settings (lower lr, warmup 10 %, clipping, constant weight decay, EMA from 0.99)."""
    return [
        "model.name=vit_micro", "model.pred_depth=2", "data.frames_per_clip=16", "data.crop_size=64",
        "data.batch_size=16",
        "optim.lr=1e-4", "optim.start_lr=1e-5", "optim.final_lr=1e-6", f"optim.warmup_steps={max(1, steps // 10)}",
        "optim.weight_decay=0.04", "optim.final_weight_decay=0.04", "optim.grad_clip=1.0", "optim.ema_start=0.99",
        "optim.schedule_scale=1.0", "train.precision=fp32", "train.device=cpu", f"train.steps={steps}",
    ]  # fmt: skip


def demo_config(args: argparse.Namespace, plan: DemoPlan, run_dir: Path, train_split: Path | None) -> Any:
    """The training config: the demo config (or `--config`), the plan's steps, the data source, a kept
    checkpoint for every curve point, monitors about 12 times per run, then the user's overrides."""
    from vjepa.config import bundled_configs, load_config

    name = args.config or (DEMO_CONFIG if DEMO_CONFIG in bundled_configs() else FALLBACK_CONFIG)
    if args.config is None and name == FALLBACK_CONFIG:
        base = small_batch_recipe(plan.steps or 300)
    else:
        base = [f"train.steps={plan.steps}"] if plan.steps else []
    base.append(f"train.out_dir={run_dir}")
    if train_split is None:
        base.append("data.dataset=synthetic")
    else:
        base += ["data.dataset=files", f"data.sources=[{{path: '{train_split}'}}]"]
    steps = load_config(name, [*base, *args.overrides]).train.steps
    layout = [
        f"checkpoint.every_steps={max(1, -(-steps // (plan.curve_points + 1)))}",  # ceil: curve_points mids
        f"checkpoint.keep_last={plan.curve_points + 2}",
        f"log.monitor_every={max(1, steps // 12)}",
    ]
    return load_config(name, [*base, *layout, *args.overrides])


def run(args: argparse.Namespace) -> int:
    import torch

    from vjepa.checkpoint import RunFolder
    from vjepa.eval.protocol import (
        SYNTHETIC_CLASSES,
        ProbeContext,
        decode_probe_sets,
        find_data_splits,
        probe_curve,
        probe_final,
        render_probe_sets,
    )
    from vjepa.eval.report import print_table, write_plots
    from vjepa.models.builder import token_grid
    from vjepa.train.trainer import train
    from vjepa.utils import resolve_device

    plan = resolve_plan(args)
    if args.threads < 1:
        raise ValueError(f"--threads: must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    run_dir = out / "run"
    splits = find_data_splits(Path(args.data)) if args.data else None
    cfg = demo_config(args, plan, run_dir, splits["train"] if splits else None)
    if args.fresh and RunFolder(run_dir).config.is_file():
        shutil.rmtree(run_dir)
    d, m = cfg.data, cfg.model
    grid = token_grid(frames=d.frames_per_clip, crop=d.crop_size, patch=m.patch_size, tubelet=m.tubelet_size)
    probes = {name: probe_settings(grid)[name] for name in plan.probes}
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    if splits is None:
        print(
            f"[demo] 1/5 rendering {plan.train_videos} + {plan.val_videos} labelled clips ({d.frames_per_clip} "
            f"frames, {d.crop_size} px, {SYNTHETIC_CLASSES} motion classes) ...",
            flush=True,
        )
        clips, names = render_probe_sets(
            plan.train_videos,
            plan.val_videos,
            frames=d.frames_per_clip,
            size=d.crop_size,
            seed=cfg.train.seed,
        )
    else:
        print(f"[demo] 1/5 decoding the labelled clips of {args.data} ...", flush=True)
        clips, names = decode_probe_sets(splits, cfg)
    seconds["data"] = time.perf_counter() - t

    t = time.perf_counter()
    print(
        f"[demo] 2/5 pretraining {m.name} (patch {m.patch_size}, {grid[0]}x{grid[1]}x{grid[2]} tokens) for "
        f"{cfg.train.steps} steps, batch {d.batch_size}, lr {cfg.optim.lr:g}, on {cfg.train.device} -> {run_dir}",
        flush=True,
    )
    summary = train(cfg)
    if summary.start_step:
        print(f"[demo]     resumed a previous run at step {summary.start_step} (--fresh starts over)")
    seconds["pretrain"] = time.perf_counter() - t

    device = resolve_device(cfg.train.device, key="train.device")
    seeds_for = {name: plan.seeds[:n] for name, n in plan.max_seeds}
    context = ProbeContext(clips, probes, plan.seeds, seeds_for, len(names), grid, device)
    t = time.perf_counter()
    print(
        f"[demo] 3/5 probing the trained encoder and the baselines: {', '.join(plan.probes)} probes, seeds "
        f"{list(plan.seeds)}, {len(clips['train'])} train / {len(clips['val'])} val clips ...",
        flush=True,
    )
    results, probe_seconds = probe_final(run_dir, cfg, context)
    seconds["probe"] = time.perf_counter() - t

    t = time.perf_counter()
    points = probe_curve(run_dir, cfg, context, plan.curve_probe, results)
    seconds["curve"] = time.perf_counter() - t

    report = build_report(args, plan, cfg, summary, names, clips, results, points)
    t = time.perf_counter()
    report["plots"] = write_plots(
        report, report.pop("_records"), out, warn_fraction=cfg.log.collapse_warn_fraction
    )
    seconds["report"] = time.perf_counter() - t
    report["seconds"] = {
        **{k: round(v, 1) for k, v in seconds.items()},
        "total": round(sum(seconds.values()), 1),
        **{f"probe_{k}": v for k, v in probe_seconds.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"[demo] report: {out / 'report.json'}; plots: {', '.join(report['plots'].values())}")
    return 0


def build_report(
    args: argparse.Namespace,
    plan: DemoPlan,
    cfg: Any,
    summary: Any,
    names: list[str],
    clips: dict[str, list],
    results: dict,
    points: list[dict[str, Any]],
) -> dict[str, Any]:
    """report.json's content (without plots and times); "_records" carries the training log to the plots."""
    from vjepa.eval.baselines import BASELINES, margins
    from vjepa.train.metrics import read_log
    from vjepa.train.monitors import collapse_verdict

    records = read_log(cfg.train.out_dir)
    verdict = collapse_verdict(records, warn_fraction=cfg.log.collapse_warn_fraction)
    losses = [float(r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    tenth = max(1, len(losses) // 10)
    first = sum(losses[:tenth]) / tenth if losses else None
    last = sum(losses[-tenth:]) / tenth if losses else None
    d = cfg.data
    return {
        "mode": args.mode,
        "claims": plan.claims,
        "data": {
            "kind": "files" if args.data else "synthetic",
            "path": args.data,
            "train_videos": len(clips["train"]),
            "val_videos": len(clips["val"]),
            "classes": len(names),
            "class_names": names,
            "chance": round(1.0 / len(names), 4),
        },
        "pretraining": {
            "run_dir": cfg.train.out_dir,
            "model": cfg.model.name,
            "patch": cfg.model.patch_size,
            "frames": d.frames_per_clip,
            "crop": d.crop_size,
            "batch": d.batch_size,
            "lr": cfg.optim.lr,
            "steps": cfg.train.steps,
            "resumed_from_step": summary.start_step,
            "skipped_steps": summary.skipped_steps,
            "first_loss": first,
            "last_loss": last,
        },
        "monitors": verdict,
        "training_healthy": bool(
            losses and last < first and verdict["healthy"] is not False and not summary.skipped_steps
        ),
        "probes": {
            source: {p: {k: v for k, v in r.items() if k != "correct"} for p, r in rows.items()}
            for source, rows in results.items()
        },
        "margins": margins(results, baselines=BASELINES),
        "best_probe": max(results["trained"], key=lambda p: results["trained"][p]["top1"]),
        "curve": {"probe": plan.curve_probe, "seed": plan.seeds[0], "points": points},
        "_records": records,
    }
