"""The minibatch loop that trains a bank of probe heads (vjepa.eval.heads) on cached features.

Shape legend: K heads, M videos, V views per video, N tokens, D width, B batch, C classes.

Every epoch draws a video order and one view per video from a generator seeded by `seed` alone, so the data
order does not depend on the heads' learning rates or weight decays: a head of a sweep sees exactly what a
single head with the same seed sees. Each minibatch is gathered and moved to the device once for all heads.
After every epoch the heads predict the val set (the softmax averaged over views) for the history; the last
epoch's prediction is the final one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from vjepa.eval.extract import FeatureSet
from vjepa.eval.metrics import topk_accuracy
from vjepa.eval.progress import Progress

__all__ = ["FitResult", "HeadBank", "fit_heads", "predict_heads"]


class HeadBank(Protocol):
    def train(self, mode: bool = True) -> None: ...
    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, total: int) -> list[float]: ...
    def logits(self, x: torch.Tensor) -> torch.Tensor: ...
    def state_dicts(self) -> list[dict[str, torch.Tensor]]: ...


@dataclass
class FitResult:
    train_probs: torch.Tensor  # [K, M, C]
    val_probs: torch.Tensor  # [K, M_val, C]
    final_loss: list[float]  # [K], mean train loss of the last epoch
    history: list[dict[str, list[float]]]  # per head: {"train_loss": [E], "val_top1": [E]}
    state_dicts: list[dict[str, torch.Tensor]]


@torch.no_grad()
def predict_heads(
    bank: HeadBank, tokens: torch.Tensor, *, batch: int, device: torch.device | str
) -> torch.Tensor:
    """Tokens [M, V, N, D] -> class probabilities [K, M, C] of every head, the softmax averaged over views."""
    bank.train(False)
    probs = []
    for chunk in tokens.split(max(1, batch)):
        m, v = chunk.shape[:2]
        flat = chunk.flatten(0, 1).to(device, torch.float32)  # [m*V, N, D], read once for all heads
        p = F.softmax(bank.logits(flat), dim=-1)  # [K, m*V, C]
        probs.append(p.unflatten(1, (m, v)).mean(2).cpu())  # [K, m, C]
    return torch.cat(probs, dim=1)


def fit_heads(
    bank: HeadBank,
    train: FeatureSet,
    val: FeatureSet,
    *,
    epochs: int,
    batch: int,
    seed: int,
    drop_lone: bool,
    device: torch.device | str,
    progress: bool = False,
) -> FitResult:
    """Trains every head of `bank` for `epochs` on `train`; `drop_lone` skips a final minibatch of one video
    (BatchNorm cannot normalise a single sample)."""
    gen = torch.Generator().manual_seed(seed)
    videos, views = train.tokens.shape[:2]
    steps_per_epoch = math.ceil(videos / batch)
    total, step = epochs * steps_per_epoch, 0
    history: list[dict[str, list[float]]] = []
    val_probs = torch.empty(0)
    bar = Progress(total, label="probe", unit="steps", enabled=progress)
    for epoch in range(epochs):
        bank.train(True)
        order = torch.randperm(videos, generator=gen)  # [M]
        view = torch.randint(views, (videos,), generator=gen)  # [M], one view per video this epoch
        sums, count = None, 0
        for idx in order.split(batch):
            if len(idx) < 2 and drop_lone:
                continue
            x = train.tokens[idx, view[idx]].to(device, torch.float32)  # [B, N, D]
            y = train.labels[idx].to(device)
            losses = bank.step(x, y, step, total)  # [K]
            sums = losses if sums is None else [a + b for a, b in zip(sums, losses)]
            count, step = count + 1, step + 1
            bar.update(epoch=f"{epoch + 1}/{epochs}", loss=min(losses))
        val_probs = predict_heads(bank, val.tokens, batch=batch, device=device)  # [K, M_val, C]
        means = [s / max(1, count) for s in sums or []]
        for k, probs in enumerate(val_probs):
            if epoch == 0:
                history.append({"train_loss": [], "val_top1": []})
            history[k]["train_loss"].append(means[k] if means else float("nan"))
            history[k]["val_top1"].append(topk_accuracy(probs, val.labels, 1))
    bar.close()
    train_probs = predict_heads(bank, train.tokens, batch=batch, device=device)
    final = [h["train_loss"][-1] for h in history]
    return FitResult(train_probs, val_probs, final, history, bank.state_dicts())
