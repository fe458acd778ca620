"""The research script behind docs/learning.md: one run pretrains on clips rendered in memory, then probes the
trained target encoder beside its own initialisation, raw pixels and a single repeated frame with several probes
on the same features, and appends one JSON line (every number in the log) to `--results`.

Usage (from the repository root): `python docs/learning_experiment.py --name r2 --lr 3e-4 --ema 0.998`.
Runs r1-r4 of the log: r1 `--lr 3e-4 --ema 0.99`, r2 `--lr 3e-4 --ema 0.998 --context --skip-single`,
r3 `--lr 1e-4 --ema 0.99 --masks short_future --attentive 2`, r4 `--lr 3e-4 --ema 0.998 --seed 1`; r5/r6 as r4
with `--seed 0 --gen heldout_a|heldout_b --skip-single`, r7 `--steps 600`, r8-r10 `--init-fix --seed 0|1|2`, r11
`--init-fix --gen heldout_b`.
It runs against the library as of commit 5597692 (the snapshot the measurements used; the seams refactor has
since renamed some of what it imports, e.g. SingleEngine) plus that commit's successor of
data_pipelines/synthetic.py with SceneParams:
`git worktree add /tmp/snap 5597692 && cp data_pipelines/synthetic.py /tmp/snap/data_pipelines/ &&
cd /tmp/snap && PYTHONPATH=. python /path/to/docs/learning_experiment.py --name r2 ...`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(2)

from data_pipelines.batch import VideoBatch  # noqa: E402
from data_pipelines.masking import MaskGenerator, MaskSpec, mix_seed  # noqa: E402
from data_pipelines.synthetic import SceneParams, render_video  # noqa: E402
from data_pipelines.transforms import normalize  # noqa: E402
from vjepa.config import load_config  # noqa: E402
from vjepa.distributed.engine import SingleEngine  # noqa: E402
from vjepa.eval.baselines import PixelTokens, single_frame  # noqa: E402
from vjepa.eval.evaluate import ProbeConfig, train_probe  # noqa: E402
from vjepa.eval.extract import FeatureSet  # noqa: E402
from vjepa.models.builder import token_grid  # noqa: E402
from vjepa.train.trainer import build_models, train_step  # noqa: E402

RESULTS = Path("runs/learning/results.jsonl")
PROBES = ("lin_mean", "lin_time")  # lin_quad (2x2 quadrants x time) overfits: train 0.95-1.0, val at chance
CACHE = Path("/tmp/vjepa_research_cache")

GENERATORS = {
    "default": {},
    # settings NOT tuned on (held out for the final check)
    "heldout_a": dict(  # 4 directions only, smaller objects, more distractors, flat or stripes
        classes=("move_right", "move_left", "move_down", "move_up", "right_then_back", "up_then_back"),
        object_size=(5.0, 9.0),
        distractors=(2, 5),
        backgrounds=("flat", "stripes"),
        displacement=(20.0, 40.0),
    ),
    "heldout_b": dict(  # all 10 classes, bigger objects, faster, noise background only, no distractors
        classes=tuple(
            "move_right move_left move_down move_up rotate_cw rotate_ccw grow shrink right_then_back "
            "up_then_back".split()
        ),
        object_size=(9.0, 14.0),
        distractors=(0, 1),
        backgrounds=("noise", "gradient"),
        displacement=(36.0, 56.0),
        drift=6.0,
    ),
}

MASKS = {
    "multiblock": None,  # the config default (8 x 15 % + 2 x 70 %, full time)
    "future_tube": [
        MaskSpec(kind="future", context_fraction=0.5),
        MaskSpec(kind="tube", ratio=0.9),
    ],
    "short_future": [  # short-range blocks, then predict the second half of the clip from the first
        MaskSpec(kind="multiblock", num_blocks=8, spatial_scale=(0.15, 0.15)),
        MaskSpec(kind="future", context_fraction=0.5),
    ],
    "multiblock_future": [
        MaskSpec(kind="multiblock", num_blocks=8, spatial_scale=(0.15, 0.15)),
        MaskSpec(kind="multiblock", num_blocks=2, spatial_scale=(0.7, 0.7)),
        MaskSpec(kind="future", context_fraction=0.5),
    ],
}


def render_set(params: SceneParams, n: int, *, frames: int, size: int, seed: int, split: int) -> tuple:
    """uint8 clips [n, C, T, H, W] and labels [n] (balanced), rendered deterministically."""
    classes = len(params.classes)
    labels = np.random.default_rng([seed, split]).permutation(np.arange(n) % classes)
    clips = np.empty((n, 3, frames, size, size), np.uint8)
    for i, y in enumerate(labels):
        v = render_video(
            int(y), frames=frames, size=size, rng=np.random.default_rng([seed, split, i]), params=params
        )
        clips[i] = v.transpose(3, 0, 1, 2)
    return torch.from_numpy(clips), torch.from_numpy(labels).long()


def probe_data(gen: str, n_train: int, n_val: int, frames: int, size: int, seed: int = 1234) -> dict:
    key = hashlib.sha1(
        json.dumps([gen, GENERATORS[gen], n_train, n_val, frames, size, seed]).encode()
    ).hexdigest()[:12]
    path = CACHE / f"probe_{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    params = SceneParams(**GENERATORS[gen])
    tr = render_set(params, n_train, frames=frames, size=size, seed=seed, split=0)
    va = render_set(params, n_val, frames=frames, size=size, seed=seed, split=1)
    data = {"train": tr[0], "train_y": tr[1], "val": va[0], "val_y": va[1]}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


class Stream:
    """Fresh rendered clips every step (batch i depends only on (seed, i)), or a fixed pool of clips."""

    def __init__(self, params: SceneParams, cfg, masks: MaskGenerator, seed: int, pool: int = 0) -> None:
        self.params, self.cfg, self.masks, self.seed = params, cfg, masks, seed
        self.pool = None
        if pool:
            self.pool = render_set(
                params,
                pool,
                frames=cfg.data.frames_per_clip,
                size=cfg.data.crop_size,
                seed=seed + 777,
                split=0,
            )

    def batch(self, i: int) -> VideoBatch:
        d = self.cfg.data
        rng = np.random.default_rng(mix_seed(self.seed, 0, i))
        if self.pool is not None:
            idx = torch.from_numpy(rng.integers(0, len(self.pool[1]), d.batch_size))
            clips, labels = self.pool[0][idx], self.pool[1][idx]
        else:
            labels = rng.integers(0, len(self.params.classes), size=d.batch_size)
            clips = np.stack(
                [
                    render_video(
                        int(y), frames=d.frames_per_clip, size=d.crop_size, rng=rng, params=self.params
                    )
                    for y in labels
                ]
            )
            clips = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()
            labels = torch.from_numpy(labels).long()
        return VideoBatch(clips=clips, labels=labels, masks=self.masks(d.batch_size, worker=0, step=i))


# ----------------------------------------------------------------------------- collapse monitors


@torch.no_grad()
def monitors(encoder, clips_u8: torch.Tensor) -> dict:
    """Participation ratio of the layer-normed tokens, and the share of their variance that is constant
    within a clip (variance of the per-clip mean token / total variance)."""
    h = encoder(normalize(clips_u8)).float()  # [B, N, D]
    h = F.layer_norm(h, (h.shape[-1],))
    flat = h.flatten(0, 1)
    flat = flat - flat.mean(0)
    cov = flat.T @ flat / flat.shape[0]
    ev = torch.linalg.eigvalsh(cov).clamp_min(0)
    pr = float(ev.sum() ** 2 / (ev**2).sum())
    total = float(flat.var(0).sum())
    clip_mean = h.mean(1)
    within_const = float(clip_mean.var(0).sum()) / max(total, 1e-12)
    return {
        "pr": round(pr, 2),
        "const_share": round(within_const, 3),
        "top3_share": round(float(ev.sort(descending=True).values[:3].sum() / ev.sum()), 3),
    }


# ----------------------------------------------------------------------------- features and probes


@torch.no_grad()
def encode(fn, clips_u8: torch.Tensor, batch: int = 32, transform=None) -> torch.Tensor:
    out = []
    for chunk in clips_u8.split(batch):
        if transform is not None:
            chunk = transform(chunk)
        out.append(fn(normalize(chunk)).to(torch.float16))
    return torch.cat(out)  # [M, N, D]


def pooled_views(tokens: torch.Tensor, grid: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Fixed poolings of tokens [M, N, D] for linear probes."""
    m, n, d = tokens.shape
    tp, hp, wp = grid
    x = tokens.float().view(m, tp, hp, wp, d)
    mean = x.mean((1, 2, 3))  # [M, D]
    time = x.mean((2, 3)).flatten(1)  # [M, Tp*D]
    # 2x2 spatial quadrants x time: a coarse where-and-when grid
    q = x.view(m, tp, 2, hp // 2, 2, wp // 2, d).mean((3, 5)).flatten(1)  # [M, Tp*4*D]
    views = {"lin_mean": mean, "lin_time": time, "lin_quad": q}
    return {k: views[k] for k in PROBES}


def linear_probe(xtr, ytr, xva, yva, *, classes: int, l2: float = 1e-3, iters: int = 150) -> dict:
    """Multinomial logistic regression on standardised features, full batch, L-BFGS, L2 penalty `l2`:
    convex and deterministic, so no probe-seed noise."""
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        tr = float(((xtr @ w + b).argmax(1) == ytr).float().mean())
        correct = (xva @ w + b).argmax(1) == yva
    return {"val": float(correct.float().mean()), "train": tr, "correct": correct}


def summarize(correct_list: list[torch.Tensor]) -> dict:
    c = torch.stack(correct_list).float()  # [seeds, n]
    p = float(c.mean())
    n = c.shape[1]
    return {
        "acc": round(p, 4),
        "se": round(math.sqrt(p * (1 - p) / n), 4),
        "n": n,
        "per_seed": [round(float(x), 4) for x in c.mean(1)],
    }


def paired_margin(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
    """Mean over probe seeds of (a correct - b correct) per clip; SE from the per-clip differences."""
    d = (torch.stack(a).float() - torch.stack(b).float()).mean(0)  # [n]
    n = d.shape[0]
    return {"margin": round(float(d.mean()), 4), "paired_se": round(float(d.std() / math.sqrt(n)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", default="vit_micro")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.04)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--ema", type=float, default=0.99)
    ap.add_argument("--schedule", default="vjepa1")
    ap.add_argument("--masks", default="multiblock", choices=list(MASKS))
    ap.add_argument("--pred-width", type=int, default=96)
    ap.add_argument("--pred-depth", type=int, default=2)
    ap.add_argument("--pred-heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen", default="default", choices=list(GENERATORS))
    ap.add_argument("--pool", type=int, default=0, help="train on a fixed pool of this many clips (0: fresh)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--attentive", type=int, default=0, help="attentive probe seeds (0 skips)")
    ap.add_argument("--attn-epochs", type=int, default=10)
    ap.add_argument("--few", type=int, default=16, help="labels per class for the few-label linear probe")
    ap.add_argument("--context", action="store_true", help="also probe the context encoder")
    ap.add_argument("--skip-single", action="store_true", help="no single-frame baseline (screening runs)")
    ap.add_argument("--init-fix", action="store_true", help="re-init: plain trunc-normal, no depth rescale")
    args = ap.parse_args()
    t0 = time.perf_counter()
    params = SceneParams(**GENERATORS[args.gen])
    overrides = [
        f"model.name={args.model}",
        f"model.patch_size={args.patch}",
        f"model.pred_width={args.pred_width}",
        f"model.pred_depth={args.pred_depth}",
        f"model.pred_heads={args.pred_heads}",
        f"data.frames_per_clip={args.frames}",
        f"data.crop_size={args.size}",
        f"data.batch_size={args.batch}",
        f"optim.lr={args.lr}",
        f"optim.start_lr={args.lr * 0.1}",
        f"optim.final_lr={args.lr * 0.01}",
        f"optim.warmup_steps={max(1, int(args.warmup * args.steps))}",
        f"optim.weight_decay={args.wd}",
        f"optim.final_weight_decay={args.wd}",
        f"optim.grad_clip={args.clip}",
        f"optim.ema_start={args.ema}",
        f"optim.schedule={args.schedule}",
        "optim.schedule_scale=1.0",
        f"train.steps={args.steps}",
        "train.precision=fp32",
        "train.device=cpu",
        f"train.seed={args.seed}",
    ]
    cfg = load_config(None, overrides)
    if MASKS[args.masks] is not None:
        cfg.mask = copy.deepcopy(MASKS[args.masks])
    grid = token_grid(frames=args.frames, crop=args.size, patch=args.patch, tubelet=2)
    torch.manual_seed(args.seed)
    model = build_models(cfg, torch.device("cpu"))
    if args.init_fix:
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, torch.nn.Linear):
                    torch.nn.init.trunc_normal_(mod.weight, std=0.02)
    init_encoder = copy.deepcopy(model.encoder).eval().requires_grad_(False)
    engine = SingleEngine(cfg, model, torch.device("cpu"))
    masks = MaskGenerator(cfg.mask, grid=grid, seed=args.seed)
    stream = Stream(params, cfg, masks, args.seed, pool=args.pool)
    data = probe_data(args.gen, args.n_train, args.n_val, args.frames, args.size)
    mon_clips = data["val"][:24]
    mon_start = monitors(engine.target, mon_clips)
    t_setup = time.perf_counter()
    losses, curve = [], []
    for step in range(args.steps):
        r = train_step(engine, stream.batch(step), step, cfg, torch.device("cpu"))
        losses.append(r.loss)
        if (step + 1) % max(1, args.steps // 4) == 0:
            curve.append(
                {
                    "step": step + 1,
                    "loss": round(float(np.mean(losses[-20:])), 4),
                    **monitors(engine.target, mon_clips),
                }
            )
            print(json.dumps(curve[-1]), f"{time.perf_counter() - t_setup:.0f}s", flush=True)
    t_train = time.perf_counter()
    target = engine.target.eval()
    mon_end = monitors(target, mon_clips)
    pix = PixelTokens(patch=args.patch, tubelet=2, downsample=2 if args.patch <= 8 else 4)
    sources = {
        "trained": (target, None),
        "random_init": (init_encoder, None),
        "pixels": (pix, None),
        "single_frame": (target, single_frame),
    }
    if args.context:
        sources["context"] = (engine.module.encoder.eval(), None)
    if args.skip_single:
        del sources["single_frame"]
    feats = {}
    for name, (fn, tf) in sources.items():
        cache = None
        if name in ("random_init", "pixels"):  # depend only on the architecture, seed and probe data
            what = [name, args.gen, args.n_train, args.n_val, args.frames, args.size, args.patch]
            if name == "random_init":
                what += [args.model, args.seed, args.init_fix]
            cache = CACHE / ("feat_" + hashlib.sha1(json.dumps(what).encode()).hexdigest()[:12] + ".pt")
            if cache.is_file():
                feats[name] = torch.load(cache, weights_only=True)
                continue
        feats[name] = {s: encode(fn, data[s], transform=tf) for s in ("train", "val")}
        if cache is not None:
            torch.save(feats[name], cache)
    t_extract = time.perf_counter()
    classes = len(params.classes)
    ytr, yva = data["train_y"], data["val_y"]
    results: dict = {}
    correct: dict = {}
    for name, f in feats.items():
        results[name], correct[name] = {}, {}
        vt, vv = pooled_views(f["train"], grid), pooled_views(f["val"], grid)
        for kind in vt:
            runs = [linear_probe(vt[kind], ytr, vv[kind], yva, classes=classes, l2=args.l2)]
            correct[name][kind] = [r["correct"] for r in runs]
            results[name][kind] = {
                **summarize(correct[name][kind]),
                "train": round(float(np.mean([r["train"] for r in runs])), 3),
            }
        if args.few:
            runs = []
            for s in range(3):  # three label subsets
                g = np.random.default_rng([s, 99])
                idx = np.concatenate(
                    [
                        g.choice(np.flatnonzero(ytr.numpy() == c), args.few, replace=False)
                        for c in range(classes)
                    ]
                )
                idx = torch.from_numpy(idx)
                runs.append(
                    linear_probe(
                        vt["lin_mean"][idx], ytr[idx], vv["lin_mean"], yva, classes=classes, l2=args.l2 * 10
                    )
                )
            correct[name]["few_mean"] = [r["correct"] for r in runs]
            results[name]["few_mean"] = {
                **summarize(correct[name]["few_mean"]),
                "train": round(float(np.mean([r["train"] for r in runs])), 3),
            }
        if args.attentive:
            cs, trs = [], []
            for s in range(args.attentive):
                tr_fs = FeatureSet(
                    f["train"][:, None], ytr, [str(i) for i in range(len(ytr))], {"num_classes": classes}
                )
                va_fs = FeatureSet(
                    f["val"][:, None], yva, [str(i) for i in range(len(yva))], {"num_classes": classes}
                )
                r = train_probe(
                    tr_fs, va_fs, ProbeConfig(kind="attentive", epochs=args.attn_epochs, batch=32, seed=s)
                )
                # per-clip correctness is needed for the paired margin: recompute via the returned top-1 is not
                # enough, so train_probe is re-run cheaply below only for its accuracy; store the accuracy.
                cs.append(r["top1_val"])
                trs.append(r["top1_train"])
            p = float(np.mean(cs))
            results[name]["attentive"] = {
                "acc": round(p, 4),
                "se": round(math.sqrt(p * (1 - p) / len(yva)), 4),
                "n": len(yva),
                "per_seed": cs,
                "train": round(float(np.mean(trs)), 3),
            }
        print(name, json.dumps({k: (v["acc"], v["train"]) for k, v in results[name].items()}), flush=True)
    margins = {}
    for kind in correct["trained"]:
        margins[kind] = {
            b: paired_margin(correct["trained"][kind], correct[b][kind]) for b in ("random_init", "pixels")
        }
        if "context" in correct:
            margins[kind].update(
                {
                    f"context_vs_{b}": paired_margin(correct["context"][kind], correct[b][kind])
                    for b in ("random_init", "pixels")
                }
            )
    t_probe = time.perf_counter()
    row = {
        "name": args.name,
        "args": vars(args),
        "grid": grid,
        "tokens": grid[0] * grid[1] * grid[2],
        "classes": classes,
        "chance": round(1 / classes, 4),
        "mask": [dataclasses.asdict(m) for m in cfg.mask],
        "loss_first": round(float(np.mean(losses[:10])), 4),
        "loss_last": round(float(np.mean(losses[-20:])), 4),
        "monitor_start": mon_start,
        "monitor_end": mon_end,
        "curve": curve,
        "results": results,
        "margins_vs": margins,
        "seconds": {
            "setup": round(t_setup - t0),
            "train": round(t_train - t_setup),
            "extract": round(t_extract - t_train),
            "probe": round(t_probe - t_extract),
            "total": round(t_probe - t0),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(
        json.dumps({"margins": margins, "seconds": row["seconds"], "mon": [mon_start, mon_end]}, indent=None)
    )


if __name__ == "__main__":
    main()
