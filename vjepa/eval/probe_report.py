"""A probe's output folder: probe.json (the whole result), probe_curves.png (loss and val top-1 per epoch of
every head, the best highlighted) and confusion.png (the best head's val confusion matrix)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from vjepa.eval.plots import plot_confusion, plot_probe_curves
from vjepa.utils import atomic_write

__all__ = ["json_safe", "write_probe_report"]


def json_safe(value: Any) -> Any:
    """Plain JSON values: tuples become lists, tensors lists, NaN and infinities None; weights
    ("state_dict") are left out."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items() if k != "state_dict"}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_probe_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Writes the report of a train_probe or train_probes result into `out_dir`; -> {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "probe.json",
        "curves": out / "probe_curves.png",
        "confusion": out / "confusion.png",
    }
    text = json.dumps(json_safe(result), indent=1, allow_nan=False)
    with atomic_write(paths["json"]) as tmp:
        tmp.write_text(text + "\n")
    sweep = "best" in result  # train_probes' result, or train_probe's (one head)
    heads, best = (result["heads"], int(result["best"])) if sweep else ([result], 0)
    title = f"{result['kind']} probe"
    plot_probe_curves(heads, paths["curves"], best=best, title=title)
    classes = [str(c) for c in range(len(result["confusion_val"]))]
    top1 = result["top1_val"]
    plot_confusion(
        result["confusion_val"], classes, paths["confusion"], title=f"{title}, val top-1 {top1:.3f}"
    )
    return paths
