"""Probes trained online: the frozen encoder runs on freshly decoded, augmented training clips every step, and
every head of the sweep learns from the same encoder forward (what the published evaluation does; cached
features of a large dataset's full token grids do not fit on a disk). Validation clips (segments x spatial
views, no augmentation) are encoded once and kept in memory.

Training clips come from the training loader (data_pipelines): one random resized crop and flip per clip,
`segments` random clips per video with `attend_across_segments` (their tokens joined into one view, as at
evaluation), else one. An epoch is ceil(videos / batch) steps of the shuffled, resampled stream.

Shape legend: K heads, B videos in a step, S segments, N tokens per clip, D width, C classes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from data_pipelines import (
    DataConfig,
    EvalClipSpec,
    SourceConfig,
    build_train_stream,
    list_eval_samples,
    normalize,
)
from vjepa.eval.evaluate import ProbeConfig, head_result, new_probe, num_classes_of, probe_result
from vjepa.eval.extract import FeatureSet, extract_split
from vjepa.eval.fit import FitResult, predict_heads
from vjepa.eval.heads import LoopHeads, StackedHeads
from vjepa.eval.metrics import topk_accuracy
from vjepa.eval.progress import Progress
from vjepa.eval.views import join_segments

__all__ = ["train_probes_online"]


def _train_stream(data: str | Path, spec: EvalClipSpec, cfg: ProbeConfig, *, workers: int, clips: int):
    d = DataConfig(
        dataset="files",
        sources=[SourceConfig(path=str(data))],
        frames_per_clip=spec.frames,
        frame_step=spec.frame_step,
        num_clips=clips,
        crop_size=spec.crop,
        batch_size=cfg.batch * clips,
        num_workers=workers,
        decoder=spec.decoder,
        resampled=True,
        drop_last=False,
    )
    return build_train_stream(d, mask_generator=None, seed=cfg.seed)


@torch.no_grad()
def _encode_batch(
    encoder: nn.Module, clips_u8: torch.Tensor, clips: int, device: torch.device
) -> torch.Tensor:
    """uint8 clips [B*S, 3, T, c, c] -> tokens [B, S*N, D] float32 (consecutive rows are one video's)."""
    x = clips_u8.to(device, non_blocking=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        tokens = encoder(normalize(x))  # [B*S, N, D]
    b = tokens.shape[0] // clips
    return tokens.float().reshape(b, clips * tokens.shape[1], tokens.shape[2])  # [B, S*N, D]


def train_probes_online(
    encoder: nn.Module,
    train_data: str | Path,
    val_data: str | Path,
    spec: EvalClipSpec,
    cfg: ProbeConfig,
    *,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = False,
) -> dict:
    """Trains the heads of the sweep cfg.lrs x cfg.wds online over `train_data` with the frozen `encoder`,
    evaluates them on `val_data`'s eval clips (`spec`); -> train_probes' result layout. The train top-1 is
    measured on the last epoch's augmented training clips."""
    start, device = time.perf_counter(), torch.device(device)
    cfg.validate()
    if cfg.kind != "attentive" or cfg.solver != "adamw" or cfg.labels_per_class is not None:
        raise ValueError("probe.online: trains attentive probes with AdamW on every training video")
    encoder = encoder.to(device).eval().requires_grad_(False)
    clips = spec.segments if cfg.attend_across_segments else 1
    val = extract_split(encoder, val_data, spec, batch=cfg.batch, device=device)  # [M_val, S*V, N, D]
    if cfg.attend_across_segments:
        val = join_segments(val)  # [M_val, V, S*N, D]
    classes = num_classes_of(val)
    videos = len(list_eval_samples(train_data))
    steps_per_epoch, grid = math.ceil(videos / cfg.batch), cfg.grid()
    shape = (videos, 1, *val.tokens.shape[2:])  # what a cached train set would hold: [M, 1, S*N, D]
    probes = [new_probe(_shaped(shape), cfg, kind="attentive", classes=classes).to(device) for _ in grid]
    lrs, wds = [lr for lr, _ in grid], [wd for _, wd in grid]
    bank = StackedHeads(probes[0], lrs, wds) if device.type == "cuda" else LoopHeads(probes, lrs, wds)
    stream = iter(_train_stream(train_data, spec, cfg, workers=workers, clips=clips))
    total = cfg.epochs * steps_per_epoch
    bar = Progress(total, label="probe (online)", unit="steps", enabled=progress)
    history: list[dict[str, list[float]]] = [{"train_loss": [], "val_top1": []} for _ in grid]
    for epoch in range(cfg.epochs):
        bank.train(True)
        sums, seen_probs, seen_labels = [0.0] * len(grid), [], []
        for i in range(steps_per_epoch):
            batch = next(stream)
            x = _encode_batch(encoder, batch.clips, clips, device)  # [B, S*N, D], one forward for all heads
            y = batch.labels[::clips]  # [B]
            if int(y.min()) < 0 or int(y.max()) >= classes:
                raise ValueError(
                    f"{train_data}: training labels {y.tolist()} outside the val set's {classes} classes"
                )
            losses = bank.step(x, y.to(device), epoch * steps_per_epoch + i, total)  # [K]
            sums = [a + b for a, b in zip(sums, losses)]
            if epoch == cfg.epochs - 1:
                bank.train(False)
                with torch.no_grad():
                    seen_probs.append(torch.softmax(bank.logits(x), -1).cpu())  # [K, B, C]
                bank.train(True)
                seen_labels.append(y)
            bar.update(epoch=f"{epoch + 1}/{cfg.epochs}", loss=min(losses))
        val_probs = predict_heads(bank, val.tokens, batch=cfg.batch, device=device)  # [K, M_val, C]
        for k in range(len(grid)):
            history[k]["train_loss"].append(sums[k] / steps_per_epoch)
            history[k]["val_top1"].append(topk_accuracy(val_probs[k], val.labels, 1))
    bar.close()
    labels = torch.cat(seen_labels)
    seen = FeatureSet(torch.empty(len(labels), *shape[1:], device="meta"), labels, [], {})
    fit = FitResult(torch.cat(seen_probs, 1), val_probs, [h["train_loss"][-1] for h in history], history, [])
    heads = [head_result(fit, k, seen, val, lr, wd) for k, (lr, wd) in enumerate(grid)]
    best = max(range(len(heads)), key=lambda k: (heads[k]["top1_val"], -k))
    lr, wd = grid[best]
    result = probe_result(fit, best, seen, val, cfg, lr=lr, wd=wd, classes=classes)
    result.update(train_videos=videos, online=True, steps=total)
    return {**result, "heads": heads, "best": best, "seconds": round(time.perf_counter() - start, 2)}


def _shaped(shape: tuple[int, ...]) -> FeatureSet:
    """A FeatureSet with only a shape (meta-device tokens): what new_probe reads to size a probe."""
    return FeatureSet(torch.empty(shape, device="meta"), torch.zeros(0, dtype=torch.long), [], {})
