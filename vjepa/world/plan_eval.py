"""`vjepa plan`: load the frozen encoder and an AC run's predictor, run the three controllers of
vjepa/world/evaluate.py on the same held-out push episodes, and write report.json, the energy landscape
(energy_landscape.png) and one planned episode (episode.png) into the report folder."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from vjepa.eval.progress import Progress
from vjepa.utils import atomic_write, resolve_device
from vjepa.world.ac_checkpoint import ACCheckpoint, read_ac_checkpoint
from vjepa.world.config import PlanSettings
from vjepa.world.evaluate import Episode, Planner, push_env, summarise, training_seeds
from vjepa.world.features import load_frozen_encoder
from vjepa.world.plots import plot_episode, plot_landscape

__all__ = ["METHODS", "evaluate_planning"]

METHODS = ("cem_trained", "random", "cem_untrained")
REPORT_FILE = "report.json"


def _check_seeds(ckpt: ACCheckpoint, s: PlanSettings) -> None:
    overlap = sorted(training_seeds(ckpt.trajectories) & set(range(s.seed, s.seed + s.episodes)))
    if overlap:
        raise ValueError(
            f"--seed: the planning episodes {overlap[:5]}{'...' if len(overlap) > 5 else ''} are training "
            f"trajectories of {ckpt.folder}; choose --seed past the training seeds"
        )


def _load(s: PlanSettings, device: torch.device) -> tuple[ACCheckpoint, Planner, dict[str, Any]]:
    """The AC checkpoint, a planner over the frozen encoder (checked against the predictor's shapes)."""
    ckpt = read_ac_checkpoint(s.predictor, what="--predictor")
    if ckpt.config.data.kind != "shards":
        raise ValueError(
            f"--predictor: {ckpt.folder} was trained on data.kind={ckpt.config.data.kind}; `vjepa plan` plans "
            "in the built-in push scene, for predictors trained on its trajectory shards"
        )
    _check_seeds(ckpt, s)
    cfg = ckpt.config
    settings = dataclasses.replace(cfg.encoder, checkpoint=s.encoder or cfg.encoder.checkpoint)
    if not Path(settings.checkpoint).exists():
        raise ValueError(f"--encoder: {settings.checkpoint} does not exist")
    encoder, info = load_frozen_encoder(settings, crop=cfg.data.crop, device=device, key="--encoder")
    got = {"feature_dim": encoder.width, "grid": [encoder.grid[1], encoder.grid[2]]}
    want = {k: ckpt.shapes[k] for k in got}
    if got != want:
        raise ValueError(f"--encoder: its features {got} do not fit the predictor's {want} ({ckpt.folder})")
    radius = push_env(cfg.data.crop).params.agent_radius
    planner = Planner(encoder, s, state_input=cfg.data.state, device=device, arena=(radius, 1 - radius))
    return ckpt, planner, info


def _margin(a: dict, b: dict) -> dict:
    diff = a["success_rate"] - b["success_rate"]
    ratio = a["success_rate"] / b["success_rate"] if b["success_rate"] > 0 else None
    return {"difference": diff, "se": math.hypot(a["success_se"], b["success_se"]), "ratio": ratio}


def evaluate_planning(s: PlanSettings, *, progress: bool | None = None) -> dict[str, Any]:
    """Runs the evaluation described in vjepa/world/evaluate.py; -> the report (also written to --out)."""
    s.validate()
    start = time.perf_counter()
    device = resolve_device(s.device, key="--device")
    ckpt, planner, encoder_info = _load(s, device)
    predictors = {
        "cem_trained": ckpt.predictor(device),
        "random": None,
        "cem_untrained": ckpt.predictor(device, trained=False),
    }
    env = push_env(ckpt.config.data.crop)
    results, first, seconds = {}, {}, {}
    with Progress(
        len(METHODS) * s.episodes,
        label="plan",
        unit="episodes",
        enabled=progress is not False,
        force=bool(progress),
    ) as bar:
        for name, predictor in predictors.items():
            t0, runs = time.perf_counter(), []
            for i in range(s.episodes):
                generator = torch.Generator().manual_seed(
                    s.seed + i
                )  # the same CEM draws for both predictors
                runs.append(planner.run_episode(env, s.seed + i, predictor, generator=generator))
                bar.update(1, method=name)
            results[name], first[name] = summarise(runs, s.tolerance), runs[0]
            seconds[name] = round(time.perf_counter() - t0, 2)
    landscape = planner.landscape(predictors["cem_trained"], env, s.seed)
    report = {
        "episodes": s.episodes,
        "seeds": [s.seed, s.seed + s.episodes - 1],
        "settings": {k: v for k, v in dataclasses.asdict(s).items() if k not in ("out",)},
        "predictor": {
            "run": str(ckpt.folder),
            "config": dataclasses.asdict(ckpt.config),
            "shapes": ckpt.shapes,
        },
        "encoder": encoder_info,
        "methods": results,
        "trained_vs_random": _margin(results["cem_trained"], results["random"]),
        "trained_vs_untrained": _margin(results["cem_trained"], results["cem_untrained"]),
        "landscape": {k: v for k, v in landscape.items() if k != "energy"},
        "plots": _plots(s, landscape, first["cem_trained"]),
    }
    report["seconds"] = {**seconds, "total": round(time.perf_counter() - start, 2)}
    with atomic_write(Path(s.out) / REPORT_FILE) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report


def _plots(s: PlanSettings, landscape: dict, episode: Episode) -> dict[str, str]:
    out = Path(s.out)
    title = f"episode {episode.seed}: distance {episode.start_distance:.3f} -> {episode.final_distance:.3f}"
    return {
        "energy_landscape": str(plot_landscape(landscape, out / "energy_landscape.png")),
        "episode": str(plot_episode(episode.frames, episode.goal_frame, out / "episode.png", title=title)),
    }
