"""Training a probe on frozen features and multi-view evaluation.

Shape legend: M videos, V views per video (segments x spatial views), N tokens, D width, B batch, K classes.

Training sees one view per video per epoch (drawn afresh every epoch); evaluation averages the softmax over
all views of a video and takes the argmax. AdamW with a per-step cosine learning rate, weight decay on
weight matrices only. Everything random comes from generators seeded by `seed`, so a run is repeatable.
With `labels_per_class`, the probe trains on that many videos of each class only (a few-label probe; the
subset is drawn from `seed`, so several seeds are several label subsets). A linear probe pools the tokens
once before training: their mean, or with `pool` an average over the cells of a coarse (time, height,
width) grid, each cell with its own weights (a linear readout that keeps coarse where and when).
The default probe is V-JEPA 2's attentive one (3 self-attention blocks, then the pooler; 16 heads). With
`attend_across_segments`, one view is the tokens of all temporal segments of a spatial view (vjepa.eval.views).
Several heads (lrs x wds) in one pass are vjepa.eval.sweep's train_probes; train_probe trains one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vjepa.eval.extract import FeatureSet
from vjepa.eval.fit import FitResult, fit_heads
from vjepa.eval.heads import LoopHeads
from vjepa.eval.metrics import classification_metrics
from vjepa.eval.probe import DEFAULT_HEADS, build_probe, resolve_heads
from vjepa.eval.views import join_segments

Grid = tuple[int, int, int]

__all__ = [
    "ProbeConfig",
    "binomial_se",
    "label_subset",
    "multiview_predict",
    "num_classes_of",
    "pool_tokens",
    "prepare_sets",
    "probe_result",
    "top1",
    "train_probe",
]


@dataclass
class ProbeConfig:
    kind: str = "attentive"  # attentive | linear (mean-pooled) | token_linear (per-token weights)
    epochs: int = 20
    lr: float = 1e-3
    wd: float = 0.01
    batch: int = 32
    seed: int = 0
    depth: int = 3  # self-attention blocks before the attentive pooler: 3 (V-JEPA 2, 4 blocks), 0 (V-JEPA 1)
    heads: int | None = DEFAULT_HEADS  # 16; gives way to default_heads(D) on narrow widths (resolve_heads)
    labels_per_class: int | None = None  # train on this many videos per class only (None: all)
    pool: Grid | None = None  # linear: average-pool the token grid to these (T, H, W) cells; None: mean
    solver: str = "adamw"  # adamw (minibatch, epochs) | lbfgs (full batch, linear probes, deterministic)
    lbfgs_iters: int = 200
    lrs: tuple[float, ...] | None = None  # a sweep (vjepa.eval.sweep): heads for lrs x wds; None: (lr,)
    wds: tuple[float, ...] | None = None  # None: (wd,)
    attend_across_segments: bool = False  # one view = the tokens of all segments of a spatial view

    def validate(self) -> None:
        for name in ("epochs", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.wd < 0:
            raise ValueError(f"--lr must be > 0 and --wd >= 0, got lr={self.lr} wd={self.wd}")
        if self.lrs is not None and (not self.lrs or min(self.lrs) <= 0):
            raise ValueError(f"--lrs: a non-empty list of learning rates > 0, got {self.lrs}")
        if self.wds is not None and (not self.wds or min(self.wds) < 0):
            raise ValueError(f"--wds: a non-empty list of weight decays >= 0, got {self.wds}")
        if self.depth < 0:
            raise ValueError(f"--depth: must be >= 0, got {self.depth}")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise ValueError(f"--labels-per-class: must be >= 1, got {self.labels_per_class}")
        if self.solver not in ("adamw", "lbfgs") or self.lbfgs_iters < 1:
            raise ValueError(
                f"--solver: adamw or lbfgs (lbfgs_iters >= 1), got {self.solver}/{self.lbfgs_iters}"
            )
        if self.solver == "lbfgs" and self.lrs is not None:
            raise ValueError("--lrs: the lbfgs solver has no learning rate; sweep --wds only")
        if self.pool is not None and (self.kind != "linear" or len(self.pool) != 3 or min(self.pool) < 1):
            raise ValueError(f"--pool: a (T, H, W) grid of cells >= 1 for a linear probe, got {self.pool}")

    def grid(self) -> list[tuple[float, float]]:
        """The (lr, wd) of every head, lr-major: lrs x wds."""
        return [(lr, wd) for lr in self.lrs or (self.lr,) for wd in self.wds or (self.wd,)]


def pool_tokens(features: FeatureSet, pool: Grid | None, *, chunk: int = 256) -> FeatureSet:
    """Tokens [M, V, N, D] -> float32 [M, V, P, D]: the mean over all N tokens (P = 1, pool=None) or the
    averages over the cells of `pool` (P = its product; needs the token grid in meta["grid"])."""
    m, v, n, d = features.tokens.shape
    if pool is not None:
        grid = features.meta.get("grid")
        if grid is None or len(grid) != 3 or grid[0] * grid[1] * grid[2] != n:
            raise ValueError(
                f"--pool: the features carry no token grid matching their {n} tokens (meta grid {grid})"
            )
        if any(p > g for p, g in zip(pool, grid)):
            raise ValueError(f"--pool: {tuple(pool)} is finer than the token grid {tuple(grid)}")
    out = []
    for part in features.tokens.flatten(0, 1).split(chunk):  # [c, N, D]
        x = part.float()
        if pool is None:
            out.append(x.mean(1, keepdim=True))  # [c, 1, D]
        else:
            x = x.view(len(x), *grid, d).permute(0, 4, 1, 2, 3)  # [c, D, T, H, W]
            out.append(F.adaptive_avg_pool3d(x, tuple(pool)).flatten(2).transpose(1, 2))  # [c, P, D]
    tokens = torch.cat(out).view(m, v, -1, d)
    return FeatureSet(tokens, features.labels, features.keys, features.meta)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent clips: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else float("nan")


def label_subset(labels: torch.Tensor, per_class: int, *, seed: int) -> torch.Tensor:
    """Indices [K * per_class] of `per_class` videos of every class, drawn without replacement by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique(sorted=True).tolist():
        members = (labels == c).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(
                f"--labels-per-class: class {c} has {len(members)} training videos, fewer than {per_class}"
            )
        picked.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picked).sort().values


def num_classes_of(*sets: FeatureSet) -> int:
    """The class count: the datasets' own (meta num_classes) when known, else the largest label + 1."""
    largest = max(int(s.labels.max()) for s in sets) + 1
    declared = [s.meta.get("num_classes") for s in sets if s.meta.get("num_classes")]
    return max([largest, *declared])


def _check_sets(train: FeatureSet, val: FeatureSet) -> None:
    for name, s in (("train", train), ("val", val)):
        if len(s) == 0:
            raise ValueError(f"--{name}: the feature file holds no videos")
        if int(s.labels.min()) < 0:
            raise ValueError(f"--{name}: some videos have no label (-1); a probe needs labelled data")
    if train.tokens.shape[-1] != val.tokens.shape[-1]:
        raise ValueError(
            f"train and val features differ in width: {train.tokens.shape[-1]} vs {val.tokens.shape[-1]}"
        )


@torch.no_grad()
def multiview_predict(
    model: nn.Module, tokens: torch.Tensor, *, batch: int = 64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Tokens [M, V, N, D] -> class probabilities [M, K], the softmax averaged over the V views."""
    model.eval()
    probs = []
    for chunk in tokens.split(max(1, batch)):
        m, v = chunk.shape[:2]
        flat = chunk.flatten(0, 1).to(device, torch.float32)  # [m*V, N, D]
        p = F.softmax(model(flat).float(), dim=-1)  # [m*V, K]
        probs.append(p.view(m, v, -1).mean(1).cpu())  # [m, K]
    return torch.cat(probs)


def top1(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels).float().mean())


def train_probe(
    train: FeatureSet,
    val: FeatureSet,
    cfg: ProbeConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    predictions: bool = False,
    progress: bool = False,
    weights: bool = False,
) -> dict:
    """Trains one probe (cfg.lr, cfg.wd; a sweep's lrs/wds are vjepa.eval.sweep's) on `train`, evaluates it
    on both sets; returns top-1s, the val top-5, per-class accuracy and confusion matrix, the per-epoch
    history and the settings used. The train top-1 is measured on the videos the probe trained on. With
    `predictions`, the result also holds "val_predicted" (the predicted class of every val video, in order);
    with `weights`, "state_dict" (the trained probe's tensors, on the CPU)."""
    cfg = cfg or ProbeConfig()
    start = time.perf_counter()
    train, val, kind, classes = prepare_sets(train, val, cfg)
    if cfg.solver == "lbfgs":
        fit = fit_lbfgs(train, val, cfg.wd, kind=kind, classes=classes, iters=cfg.lbfgs_iters, device=device)
    else:
        bank = LoopHeads([new_probe(train, cfg, kind=kind, classes=classes).to(device)], [cfg.lr], [cfg.wd])
        fit = fit_heads(bank, train, val, **fit_options(cfg), device=device, progress=progress)
    result = probe_result(fit, 0, train, val, cfg, lr=cfg.lr, wd=cfg.wd, classes=classes)
    result["seconds"] = round(time.perf_counter() - start, 2)
    if predictions:
        result["val_predicted"] = fit.val_probs[0].argmax(-1).tolist()
    if weights:
        result["state_dict"] = fit.state_dicts[0]
    return result


def prepare_sets(
    train: FeatureSet, val: FeatureSet, cfg: ProbeConfig
) -> tuple[FeatureSet, FeatureSet, str, int]:
    """Checks the config and the sets, then applies the label subset, the segment joining and the linear
    probe's pooling; -> (train, val, probe kind to build, class count)."""
    cfg.validate()
    _check_sets(train, val)
    classes = num_classes_of(train, val)
    if cfg.labels_per_class is not None:
        keep = label_subset(train.labels, cfg.labels_per_class, seed=cfg.seed)
        train = FeatureSet(train.tokens[keep], train.labels[keep], [train.keys[i] for i in keep], train.meta)
    if cfg.attend_across_segments:
        train, val = join_segments(train), join_segments(val)
    kind = cfg.kind
    if kind == "linear":  # pooled once here instead of in every step
        train, val = pool_tokens(train, cfg.pool), pool_tokens(val, cfg.pool)
        kind = "linear" if cfg.pool is None else "token_linear"
    return train, val, kind, classes


def new_probe(train: FeatureSet, cfg: ProbeConfig, *, kind: str, classes: int) -> nn.Module:
    """A freshly initialised probe for these features; its weights depend on cfg.seed, not on lr or wd."""
    return build_probe(
        kind,
        dim=train.tokens.shape[-1],
        num_classes=classes,
        heads=cfg.heads,
        depth=cfg.depth,
        seed=cfg.seed,
        tokens=int(train.tokens.shape[2]),
    )


def fit_options(cfg: ProbeConfig) -> dict:
    """fit_heads' settings from the config (a lone last video is dropped where BatchNorm would fail)."""
    return {"epochs": cfg.epochs, "batch": cfg.batch, "seed": cfg.seed, "drop_lone": cfg.kind != "attentive"}


def head_result(fit: FitResult, k: int, train: FeatureSet, val: FeatureSet, lr: float, wd: float) -> dict:
    """Head k's summary: lr, wd, val top-1 and top-5, train top-1, final loss and per-epoch history."""
    val_metrics = classification_metrics(fit.val_probs[k], val.labels, fit.val_probs.shape[-1])
    return {
        "lr": lr,
        "wd": wd,
        "top1_val": val_metrics["top1"],
        "top5_val": val_metrics["top5"],
        "top1_train": top1(fit.train_probs[k], train.labels),
        "final_loss": fit.final_loss[k],
        "history": fit.history[k],
    }


def probe_result(
    fit: FitResult,
    k: int,
    train: FeatureSet,
    val: FeatureSet,
    cfg: ProbeConfig,
    *,
    lr: float,
    wd: float,
    classes: int,
) -> dict:
    """Everything train_probe reports for head k of `fit`, which trained with (lr, wd)."""
    val_metrics = classification_metrics(fit.val_probs[k], val.labels, classes)
    videos, views = train.tokens.shape[:2]
    return {
        **head_result(fit, k, train, val, lr, wd),
        "top_k": val_metrics["top_k"],
        "per_class_val": val_metrics["per_class"],
        "confusion_val": val_metrics["confusion"],
        "num_classes": classes,
        "chance": 1.0 / classes,
        "train_videos": videos,
        "val_videos": len(val),
        "train_views": views,
        "val_views": int(val.tokens.shape[1]),
        "tokens": int(train.tokens.shape[2]),
        "width": int(train.tokens.shape[3]),
        "attention_heads": resolve_heads(int(train.tokens.shape[3]), cfg.heads)
        if cfg.kind == "attentive"
        else None,
        **asdict(cfg),
        "lr": lr,
        "wd": wd,
    }


def fit_lbfgs(
    train: FeatureSet,
    val: FeatureSet,
    wd: float,
    *,
    kind: str,
    classes: int,
    iters: int,
    device: torch.device | str,
) -> FitResult:
    """Full-batch multinomial logistic regression by L-BFGS on standardised features (every view of every
    video a sample), L2 penalty `wd` on the weights; deterministic. One head; its history is one point."""
    if kind not in ("linear", "token_linear"):
        raise ValueError(f"--solver lbfgs: fits linear probes only, not {kind!r}")
    x = train.tokens.flatten(2).float().flatten(0, 1).to(device)  # [M*V, P*D]
    y = train.labels.repeat_interleave(train.tokens.shape[1]).to(device)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], classes, device=device, requires_grad=True)
    bias = torch.zeros(classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + wd * weight.square().sum()
        loss.backward()
        return loss

    final = float(opt.step(closure).detach())

    @torch.no_grad()
    def probs(s: FeatureSet) -> torch.Tensor:
        z = (s.tokens.flatten(2).float().to(device) - mean) / std  # [M, V, P*D]
        return F.softmax(z @ weight + bias, dim=-1).mean(1).cpu()  # [M, K], averaged over views

    val_probs = probs(val)[None]  # [1, M_val, K]
    history = {"train_loss": [final], "val_top1": [top1(val_probs[0], val.labels)]}
    tensors = {"weight": weight, "bias": bias, "mean": mean, "std": std}
    state = {k: v.detach().cpu() for k, v in tensors.items()}
    return FitResult(probs(train)[None], val_probs, [final], [history], [state])
