"""The files of an AC run (`vjepa train-ac`), in the run-folder layout of vjepa/checkpoint.py:

    <run>/config.yaml, <run>/log.jsonl
    <run>/checkpoints/step_XXXXXXXX/
        COMPLETE, config.yaml
        ac_model.pt          {"predictor", "optimizer", "shapes", "encoder", "trajectories", "config"}
        trainer_rank0.pt     step, data position (the step and the clip bank's fingerprint), RNG states

`build_ac_predictor` is the one place an AC predictor is made from a config: the trainer, the planner's
trained predictor and its untrained baseline (the same seed, so the baseline is the trained one's start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vjepa.checkpoint import AC_MODEL_FILE, CHECKPOINTS_DIR, CheckpointManager
from vjepa.config import from_dict
from vjepa.models.weights import read_torch_file
from vjepa.world.ac_predictor import ACPredictor
from vjepa.world.config import ACConfig, ACPredictorSettings

__all__ = ["ACCheckpoint", "build_ac_predictor", "read_ac_checkpoint", "resolve_ac_checkpoint"]

SHAPE_KEYS = ("feature_dim", "action_dim", "state_dim", "grid")


def build_ac_predictor(
    settings: ACPredictorSettings, shapes: dict[str, Any], *, seed: int, device: torch.device | str = "cpu"
) -> ACPredictor:
    """A freshly initialised predictor: weights drawn on the CPU from `seed` alone (the global generator is
    forked, so neither it nor anything else changes them), then moved to `device`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = ACPredictor(
            feature_dim=int(shapes["feature_dim"]),
            action_dim=int(shapes["action_dim"]),
            state_dim=int(shapes["state_dim"]),
            grid=(int(shapes["grid"][0]), int(shapes["grid"][1])),
            width=settings.width,
            depth=settings.depth,
            heads=settings.heads,
            mlp_ratio=settings.mlp_ratio,
            residual=settings.residual,
            action_scale=settings.action_scale,
        )
    return predictor.to(device)


def resolve_ac_checkpoint(path: str | Path, *, what: str = "--predictor") -> Path:
    """The step folder for a step folder, a run's `checkpoints/` folder or a run folder (its newest)."""
    path = Path(path)
    if path.is_file() and path.name == AC_MODEL_FILE:
        path = path.parent
    if not path.is_dir():
        raise ValueError(f"{what}: no such folder {path}")
    if (path / AC_MODEL_FILE).is_file():
        return path
    for root in (path, path / CHECKPOINTS_DIR):
        latest = CheckpointManager(root).latest() if root.is_dir() else None
        if latest is not None and (latest / AC_MODEL_FILE).is_file():
            return latest
    raise ValueError(
        f"{what}: {path} holds no AC checkpoint ({AC_MODEL_FILE}); is it a `vjepa train-ac` run?"
    )


class ACCheckpoint:
    """A read AC checkpoint: its config, shapes, encoder description, training trajectories and weights."""

    def __init__(self, folder: Path, state: dict[str, Any], *, what: str) -> None:
        missing = {"predictor", "shapes", "config", "encoder", "trajectories"} - set(state)
        if missing:
            raise ValueError(f"{what}: {folder / AC_MODEL_FILE} lacks {sorted(missing)}")
        if set(SHAPE_KEYS) - set(state["shapes"]):
            raise ValueError(f"{what}: {folder / AC_MODEL_FILE} has incomplete shapes {state['shapes']}")
        try:
            self.config: ACConfig = from_dict(ACConfig, state["config"])
        except ValueError as err:
            raise ValueError(f"{what}: the checkpoint's config does not load: {err}") from None
        self.folder, self.state, self.what = folder, state, what
        self.shapes: dict[str, Any] = dict(state["shapes"])
        self.encoder: dict[str, Any] = dict(state["encoder"])
        self.trajectories: list[str] = list(state["trajectories"])

    def predictor(self, device: torch.device | str = "cpu", *, trained: bool = True) -> ACPredictor:
        """The trained predictor in eval mode, or (trained=False) the same architecture freshly initialised
        from the run's seed: the weights training started from."""
        model = build_ac_predictor(
            self.config.predictor, self.shapes, seed=self.config.train.seed, device="cpu"
        )
        if trained:
            try:
                model.load_state_dict(self.state["predictor"])
            except RuntimeError as err:
                raise ValueError(
                    f"{self.what}: the saved predictor does not fit its own config: {err}"
                ) from None
        return model.to(device).eval().requires_grad_(False)


def read_ac_checkpoint(path: str | Path, *, what: str = "--predictor") -> ACCheckpoint:
    folder = resolve_ac_checkpoint(path, what=what)
    state = read_torch_file(folder / AC_MODEL_FILE, what=what)
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {folder / AC_MODEL_FILE} holds no AC checkpoint")
    return ACCheckpoint(folder, state, what=what)
