"""Classification metrics of a probe from its class probabilities: top-1, top-k, per-class accuracy and the
confusion matrix.

Shape legend: M videos, C classes.
"""

from __future__ import annotations

import torch

__all__ = ["classification_metrics", "confusion_matrix", "per_class_accuracy", "topk_accuracy"]

TOP_K = 5  # top-5, or top-C where there are fewer classes


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of videos whose true class is among the k most probable; probs [M, C], labels [M]."""
    if k < 1:
        raise ValueError(f"top-k: k must be >= 1, got {k}")
    k = min(k, probs.shape[-1])
    top = probs.topk(k, dim=-1).indices  # [M, k]
    return float((top == labels[:, None]).any(-1).float().mean())


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Counts [C, C] int64: row the true class, column the predicted one; predicted, labels [M]."""
    flat = labels.long() * classes + predicted.long()  # [M], one cell index per video
    return torch.bincount(flat, minlength=classes * classes).view(classes, classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Recall of every class (diagonal over row sum); None for a class with no videos."""
    rows = confusion.sum(1)
    return [float(confusion[c, c]) / float(n) if n > 0 else None for c, n in enumerate(rows.tolist())]


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: int) -> dict:
    """top1, top5 (top-min(5, C)), per_class and confusion (nested lists) of probs [M, C] against labels [M]."""
    confusion = confusion_matrix(probs.argmax(-1), labels, classes)
    return {
        "top1": topk_accuracy(probs, labels, 1),
        "top5": topk_accuracy(probs, labels, TOP_K),
        "top_k": min(TOP_K, probs.shape[-1]),
        "per_class": per_class_accuracy(confusion),
        "confusion": confusion.tolist(),
    }
