"""`vjepa plan`'s PNGs: the energy landscape of one step's actions and a strip of a planned episode's frames
(matplotlib's Agg backend, imported on first use as in vjepa/eval/plots.py).

Shape legend: G landscape points per action axis, H/W pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vjepa.eval.plots import _pyplot, _save

__all__ = ["plot_episode", "plot_landscape"]


def plot_landscape(landscape: dict, path: str | Path, *, title: str = "energy of one action") -> Path:
    """The energy [G, G] over the action grid (x across, y down, as in the image), with the lowest-energy
    grid action and the ideal action (towards the goal, clipped to the bounds) marked."""
    plt = _pyplot()
    energy = np.asarray(landscape["energy"])  # [G, G]: rows y, columns x
    axis = landscape["axis"]
    fig, ax = plt.subplots(figsize=(5, 4.4))
    image = ax.imshow(energy, origin="upper", extent=(axis[0], axis[-1], axis[-1], axis[0]), cmap="viridis")
    fig.colorbar(image, ax=ax, label="L1 to the goal representation")
    ax.plot(*landscape["best_action"], "w*", ms=12, label="lowest energy")
    ax.plot(*landscape["ideal_action"], "rx", ms=10, mew=2, label="towards the goal")
    ax.set(title=title, xlabel="action x", ylabel="action y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    return _save(fig, plt, path)


def plot_episode(
    frames: Sequence[np.ndarray], goal: np.ndarray, path: str | Path, *, max_frames: int = 8, title: str = ""
) -> Path:
    """Up to `max_frames` evenly spaced frames [H, W, 3] of an episode (first and last included), then the
    goal frame."""
    plt = _pyplot()
    picks = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    shown = [(frames[i], f"step {i}") for i in picks] + [(goal, "goal")]
    fig, axes = plt.subplots(1, len(shown), figsize=(1.6 * len(shown), 2.0))
    for ax, (frame, label) in zip(np.atleast_1d(axes), shown):
        ax.imshow(frame)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, plt, path)
