"""A probe sweep in one pass: one head per (lr, wd) of cfg.lrs x cfg.wds (the published SSv2 protocol
trains 20 at once on the same features), all trained on the same minibatches, each read once.

Every head equals the single head train_probe trains with the same seed, lr and wd: the same initial
weights (the seed), the same data order (the seed), the same AdamW (vjepa.eval.heads). The attentive probe's
heads are stacked and run as one vmapped computation (`batched`); the linear probes (BatchNorm) and the
L-BFGS solver loop over the heads. The best head is the one with the highest val top-1 (the first on ties).

Shape legend: K heads, M videos, C classes.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from vjepa.eval.evaluate import (
    ProbeConfig,
    fit_lbfgs,
    fit_options,
    head_result,
    new_probe,
    prepare_sets,
    probe_result,
)
from vjepa.eval.extract import FeatureSet
from vjepa.eval.fit import FitResult, fit_heads
from vjepa.eval.heads import LoopHeads, StackedHeads

__all__ = ["train_probes"]


def train_probes(
    train: FeatureSet,
    val: FeatureSet,
    cfg: ProbeConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    batched: bool | None = None,
    weights: bool = False,
) -> dict:
    """Trains the K = len(lrs) * len(wds) heads of the sweep in one pass over `train`; -> {**train_probe's
    result for the best head, "heads": [K summaries: lr, wd, top1_val, top5_val, top1_train, final_loss,
    history], "best": index of the best head, "seconds"} ("heads" replaces the config's attention-head
    count, which stays in "attention_heads"). `batched` (attentive probe only): stack the heads
    into one vmapped computation (True), loop over them (False), or None: stacked on CUDA, looped elsewhere
    (on the CPU, SDPA has no vmap batching rule and the stacked heads measure slower than the loop).
    With `weights`, every head summary holds its "state_dict"."""
    start = time.perf_counter()
    train, val, kind, classes = prepare_sets(train, val, cfg)
    grid = cfg.grid()  # [(lr, wd)] * K
    if batched and kind != "attentive":
        raise ValueError(f"batched heads: the {kind} probe has BatchNorm buffers; use batched=False")
    if cfg.solver == "lbfgs":
        fit = _lbfgs_heads(train, val, cfg, grid, kind=kind, classes=classes, device=device)
    else:
        lrs, wds = [lr for lr, _ in grid], [wd for _, wd in grid]
        if batched is None:
            batched = kind == "attentive" and torch.device(device).type == "cuda"
        if batched:
            bank = StackedHeads(new_probe(train, cfg, kind=kind, classes=classes).to(device), lrs, wds)
        else:
            models = [new_probe(train, cfg, kind=kind, classes=classes).to(device) for _ in grid]
            bank = LoopHeads(models, lrs, wds)
        fit = fit_heads(bank, train, val, **fit_options(cfg), device=device, progress=progress)
    heads = [head_result(fit, k, train, val, lr, wd) for k, (lr, wd) in enumerate(grid)]
    if weights:
        for head, state in zip(heads, fit.state_dicts):
            head["state_dict"] = state
    best = max(range(len(heads)), key=lambda k: (heads[k]["top1_val"], -k))
    lr, wd = grid[best]
    result = probe_result(fit, best, train, val, cfg, lr=lr, wd=wd, classes=classes)
    # "heads" is the list of head summaries here; the probe's attention heads are in "attention_heads".
    return {**result, "heads": heads, "best": best, "seconds": round(time.perf_counter() - start, 2)}


def _lbfgs_heads(
    train: FeatureSet,
    val: FeatureSet,
    cfg: ProbeConfig,
    grid: list[tuple[float, float]],
    *,
    kind: str,
    classes: int,
    device: torch.device | str,
) -> FitResult:
    """One deterministic L-BFGS fit per weight decay (full batch: nothing to share but the features)."""
    fits = [
        fit_lbfgs(train, val, wd, kind=kind, classes=classes, iters=cfg.lbfgs_iters, device=device)
        for _, wd in grid
    ]
    return FitResult(
        torch.cat([f.train_probs for f in fits]),
        torch.cat([f.val_probs for f in fits]),
        [f.final_loss[0] for f in fits],
        [f.history[0] for f in fits],
        [f.state_dicts[0] for f in fits],
    )


def single_head_config(cfg: ProbeConfig, lr: float, wd: float) -> ProbeConfig:
    """The config train_probe takes to train the sweep's (lr, wd) head alone."""
    return replace(cfg, lr=lr, wd=wd, lrs=None, wds=None)
