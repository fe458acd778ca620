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

SYNTHETIC_CLASSES = 8  # the in-memory training stream draws its labels from the first 8 motion classes
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
    one_seed: tuple[str, ...] = ()  # probes run with the first seed only (too slow for more)


PLANS = {
    "full": DemoPlan(
        train_videos=2000,
        val_videos=500,
        steps=None,
        probes=("mean", "time", "quad", "few16", "attentive"),
        seeds=(0, 1),
        curve_probe="quad",
        curve_points=3,
        claims=True,
        one_seed=("attentive",),  # ~40 s per source and seed on 2,000 clips on 2 busy cores
    ),
    "quick": DemoPlan(
        train_videos=160,
        val_videos=80,
        steps=16,
        probes=("mean", "quad", "few4", "attentive"),
        seeds=(0, 1),
        curve_probe="quad",
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
        "attentive": ProbeConfig(kind="attentive", epochs=10, lr=1e-3, wd=0.01, batch=32),
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
        "optim.lr=2e-4", "optim.start_lr=2e-5", "optim.final_lr=2e-6", f"optim.warmup_steps={max(1, steps // 10)}",
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
        f"checkpoint.every_steps={max(1, steps // (plan.curve_points + 1))}",
        f"checkpoint.keep_last={plan.curve_points + 2}",
        f"log.monitor_every={max(1, steps // 12)}",
    ]
    return load_config(name, [*base, *layout, *args.overrides])


def run(args: argparse.Namespace) -> int:
    from vjepa.eval.report import print_table, write_plots
    from vjepa.models.builder import token_grid
    from vjepa.train.trainer import train
    from vjepa.utils import resolve_device

    plan = resolve_plan(args)
    out = Path(args.out)
    run_dir = out / "run"
    splits = find_data_splits(Path(args.data)) if args.data else None
    cfg = demo_config(args, plan, run_dir, splits["train"] if splits else None)
    if args.fresh and (run_dir / "config.yaml").is_file():
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
            plan, frames=d.frames_per_clip, size=d.crop_size, seed=cfg.train.seed
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
    seeds_for = {name: plan.seeds[:1] for name in plan.one_seed}
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


# ----------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class ProbeContext:
    """What every probe run shares: the labelled clips, the probes, seeds, class count, token grid, device."""

    clips: dict[str, list]
    probes: dict[str, Any]
    seeds: tuple[int, ...]
    seeds_for: dict[str, tuple[int, ...]]  # probes with seeds of their own
    classes: int
    grid: tuple[int, int, int]
    device: Any


def probe_final(run_dir: Path, cfg: Any, ctx: ProbeContext) -> tuple[dict, dict[str, float]]:
    """Every source of the final checkpoint (and the run's initial weights) under every probe."""
    from vjepa.checkpoint import RunFolder
    from vjepa.eval.baselines import ALL_SOURCES, evaluate_sources, feature_sources
    from vjepa.eval.extract import load_checkpoint_state
    from vjepa.models.weights import read_torch_file

    init_file = RunFolder(run_dir).init_weights
    init_state = None
    if init_file.is_file():
        init_state = read_torch_file(init_file, what="the run's initial weights")
    else:
        log.warning("%s is missing: random_init draws fresh weights instead of the run's own", init_file)
    d = cfg.data
    sources = feature_sources(
        load_checkpoint_state(run_dir),
        frames=d.frames_per_clip,
        crop=d.crop_size,
        names=ALL_SOURCES,
        init_state=init_state,
        pixel_downsample=pixel_downsample(cfg.model.patch_size),
        device=ctx.device,
    )
    return evaluate_sources(
        sources,
        ctx.clips,
        ctx.probes,
        seeds=ctx.seeds,
        seeds_for=ctx.seeds_for,
        num_classes=ctx.classes,
        grid=ctx.grid,
        device=ctx.device,
        probe_threads=1,
    )


def probe_curve(
    run_dir: Path, cfg: Any, ctx: ProbeContext, probe: str, results: dict
) -> list[dict[str, Any]]:
    """Val top-1 of the `probe` probe (first seed) on the target encoder at step 0 (the run's initial
    weights), at every intermediate checkpoint and at the end."""
    from vjepa.checkpoint import CheckpointManager, RunFolder
    from vjepa.eval.baselines import evaluate_sources, feature_sources
    from vjepa.eval.extract import load_checkpoint_state

    every, steps = cfg.checkpoint.every_steps, cfg.train.steps
    mids = list(range(every, steps, every))
    print(f"[demo] 4/5 the {probe} probe on the checkpoints of steps {mids} ...", flush=True)
    points = [curve_point(0, results["random_init"][probe])]
    ckpts = CheckpointManager(RunFolder(run_dir).checkpoints)
    for step in mids:
        if not ckpts.step_dir(step).is_dir():
            log.warning("no checkpoint at step %d (pruned?); the curve skips it", step)
            continue
        state = load_checkpoint_state(ckpts.step_dir(step))
        encoder = feature_sources(
            state,
            frames=cfg.data.frames_per_clip,
            crop=cfg.data.crop_size,
            names=("trained",),
            device=ctx.device,
        )
        row, _ = evaluate_sources(
            encoder,
            ctx.clips,
            {probe: ctx.probes[probe]},
            seeds=ctx.seeds[:1],
            num_classes=ctx.classes,
            grid=ctx.grid,
            device=ctx.device,
            probe_threads=1,
        )
        points.append(curve_point(step, row["trained"][probe]))
    points.append(curve_point(steps, results["trained"][probe]))
    return points


def curve_point(step: int, summary: dict[str, Any]) -> dict[str, Any]:
    """A curve point from a probe summary: its first seed's top-1 (the curve runs one seed)."""
    from vjepa.eval.evaluate import binomial_se

    top1 = summary["per_seed"][0]
    return {"step": step, "top1": top1, "se": round(binomial_se(top1, summary["n_val"]), 4)}


def pixel_downsample(patch: int) -> int:
    """Raw-pixel tokens keep (patch / s)^2 pixels per frame: s = 4 for patch 16, 2 for patch 8."""
    return max(1, min(4, patch // 4))


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


# ----------------------------------------------------------------------------- data


def render_probe_sets(
    plan: DemoPlan, *, frames: int, size: int, seed: int
) -> tuple[dict[str, list], list[str]]:
    """{"train": [EvalVideo], "val": [EvalVideo]} of rendered clips with balanced labels, and the class
    names. The clips depend only on (seed, split, index) and are not the pretraining stream's."""
    import multiprocessing

    from data_pipelines import CLASS_NAMES, EvalVideo

    out: dict[str, list] = {}
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        for split_id, (split, n) in enumerate((("train", plan.train_videos), ("val", plan.val_videos))):
            chunks = [(seed, split_id, lo, min(n, lo + 50), frames, size) for lo in range(0, n, 50)]
            out[split] = [
                EvalVideo(f"{split}_{i:06d}", label, clip[None])  # clips [1, 3, T, S, S]: one view
                for chunk in pool.imap(_render_chunk, chunks)
                for i, label, clip in chunk
            ]
    return out, list(CLASS_NAMES[:SYNTHETIC_CLASSES])


def _render_chunk(job: tuple[int, int, int, int, int, int]) -> list[tuple[int, int, Any]]:
    """Clips lo..hi-1 of one split: [(index, label, uint8 clip [3, T, S, S])]."""
    import numpy as np
    import torch

    from data_pipelines.synthetic import render_video

    seed, split_id, lo, hi, frames, size = job
    out = []
    for i in range(lo, hi):
        label = i % SYNTHETIC_CLASSES  # balanced
        rng = np.random.default_rng([seed, 9_000 + split_id, i])  # 9000+: a stream of its own
        video = render_video(label, frames=frames, size=size, rng=rng)  # [T, S, S, 3]
        out.append((i, label, torch.from_numpy(video).permute(3, 0, 1, 2).contiguous()))
    return out


def find_data_splits(root: Path) -> dict[str, Path]:
    """DIR/train and DIR/val: folders (shards or class folders) or `path label` CSV lists."""
    if not root.is_dir():
        raise ValueError(f"--data: {root} is not a folder")
    found = {}
    for split in ("train", "val"):
        candidates = [root / split, root / f"{split}.csv"]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            raise ValueError(f"--data: {root} has neither {split}/ nor {split}.csv")
        found[split] = hit
    return found


def decode_probe_sets(splits: dict[str, Path], cfg: Any) -> tuple[dict[str, list], list[str]]:
    """The centred eval clip of every video of both splits at the training clip size, and the class
    names (classes.json beside the splits, the class folder names, or the label numbers)."""
    from data_pipelines import EvalClipSpec, iter_eval_videos, list_videos

    d = cfg.data
    spec = EvalClipSpec(
        frames=d.frames_per_clip, frame_step=d.frame_step, crop=d.crop_size, decoder=d.decoder
    )
    clips = {}
    for split, path in splits.items():
        clips[split] = list(iter_eval_videos(path, spec, workers=min(2, d.num_workers)))
        unlabelled = sum(v.label < 0 for v in clips[split])
        if not clips[split] or unlabelled:
            raise ValueError(
                f"--data: {path} needs labelled videos ({len(clips[split])} read, {unlabelled} without a label)"
            )
    classes = max(v.label for videos in clips.values() for v in videos) + 1
    names_file = splits["train"].parent / "classes.json"
    if names_file.is_file():
        names = [str(n) for n in json.loads(names_file.read_text())]
    elif splits["train"].is_dir() and not any(splits["train"].glob("*.tar")):
        names = list_videos(splits["train"])[1]
    else:
        names = []
    return clips, names if len(names) >= classes else [str(i) for i in range(classes)]
