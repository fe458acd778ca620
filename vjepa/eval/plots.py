"""The demo's and the probe report's PNG plots: training loss and collapse monitors, probe accuracy against
pretraining step, a probe's loss and val accuracy per epoch, and a confusion matrix. matplotlib is imported
on first use (the Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_confusion", "plot_curve", "plot_probe_curves", "plot_training"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the demo's plots need matplotlib: pip install 'matplotlib>=3.7'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["step"]), float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_training(records: Sequence[Mapping[str, Any]], path: str | Path, *, warn_fraction: float) -> Path:
    """Loss, effective dimensionality and within-clip constant share over training (log.jsonl records);
    the dashed lines are the warning thresholds."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps, loss = _series(records, "loss")
    axes[0].plot(steps, loss, lw=1)
    axes[0].set(title="JEPA loss (L1)", xlabel="step")
    for prefix, colour in (("target", "C0"), ("pred", "C1")):
        steps, dims = _series(records, f"{prefix}_eff_dim")
        if dims:
            axes[1].plot(steps, dims, "o-", ms=3, color=colour, label=prefix)
            axes[1].axhline(warn_fraction * dims[0], ls="--", lw=0.8, color=colour)
        steps, const = _series(records, f"{prefix}_clip_const")
        if const:
            axes[2].plot(steps, const, "o-", ms=3, color=colour, label=prefix)
    from vjepa.train.monitors import CLIP_CONST_MAX

    axes[2].axhline(CLIP_CONST_MAX, ls="--", lw=0.8, color="grey")
    axes[1].set(title="effective dim (participation ratio)", xlabel="step")
    axes[2].set(title="share of variance constant within a clip", xlabel="step", ylim=(0, 1))
    for ax in axes[1:]:
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_curve(
    points: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    probe: str,
    chance: float,
) -> Path:
    """Val top-1 (± SE) of the target encoder against pretraining step (points: {"step", "top1", "se"}),
    with the baselines ({name: {"top1", "se"}}) and chance as horizontal lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = [p["step"] for p in points]
    ax.errorbar(steps, [p["top1"] for p in points], yerr=[p["se"] for p in points], fmt="o-", label="trained")
    for i, (name, row) in enumerate(baselines.items()):
        ax.axhline(row["top1"], ls="--", lw=1, color=f"C{i + 1}", label=f"{name} {row['top1']:.3f}")
    ax.axhline(chance, ls=":", lw=1, color="grey", label=f"chance {chance:.3f}")
    ax.set(title=f"{probe} probe, val top-1 against pretraining", xlabel="pretraining step", ylabel="top-1")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_probe_curves(
    heads: Sequence[Mapping[str, Any]], path: str | Path, *, best: int, title: str = "probe"
) -> Path:
    """Mean train loss and val top-1 per epoch of every head ({"lr", "wd", "history": {"train_loss",
    "val_top1"}}); the other heads thin and grey, the best one bold and labelled."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    order = [k for k in range(len(heads)) if k != best] + [best]  # the best drawn last, on top
    for k in order:
        head, is_best = heads[k], k == best
        style = {"lw": 2.0, "color": "C3", "label": f"best: lr {head['lr']:g}, wd {head['wd']:g}"}
        if not is_best:
            style = {"lw": 0.8, "color": "grey", "alpha": 0.5}
        for ax, key in zip(axes, ("train_loss", "val_top1")):
            values = head["history"][key]
            ax.plot(range(1, len(values) + 1), values, "o-" if len(values) == 1 else "-", ms=3, **style)
    axes[0].set(title=f"{title}: mean train loss per epoch", xlabel="epoch", ylabel="cross-entropy")
    axes[1].set(title=f"{title}: val top-1 per epoch ({len(heads)} heads)", xlabel="epoch", ylabel="top-1")
    axes[1].legend(fontsize=8)
    return _save(fig, plt, path)


def plot_confusion(
    matrix: Sequence[Sequence[int]], names: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """Counts [K][K], rows the true class, columns the predicted one."""
    plt = _pyplot()
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7)
    labels = list(names) if len(names) == k else [str(i) for i in range(k)]
    ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), labels, fontsize=7)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
