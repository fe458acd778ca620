"""`vjepa plan --predictor AC_RUN --out DIR [--encoder CKPT ...]`: plan with CEM + MPC towards goal frames
on held-out episodes of the push scene, against random actions and the untrained predictor; prints the
report (success rates with standard errors) as one JSON line and writes it with two PNGs to DIR."""

from __future__ import annotations

import argparse
import dataclasses
import json

HELP = {
    "predictor": "a `vjepa train-ac` run folder (its newest checkpoint), checkpoints/ folder or step folder",
    "encoder": "the frozen encoder's checkpoint (default: the AC run's encoder.checkpoint)",
    "out": "report folder: report.json, energy_landscape.png, episode.png",
    "episodes": "held-out episodes per controller (default 20)",
    "seed": "episode i is PushEnv.reset(seed + i); must not be a training seed (default 1000000)",
    "steps": "actions executed per episode (default 12)",
    "horizon": "steps CEM plans ahead (default 2)",
    "samples": "CEM candidates per iteration (default 64)",
    "elites": "CEM elites (default 8)",
    "iterations": "CEM iterations per replanning (default 3)",
    "goal_distance": "the goal's agent offset from the start is drawn in [LOW, HIGH] (default 0.15 0.3)",
    "tolerance": "success: final agent position within this of the goal's (default 0.05)",
    "grid": "energy-landscape points per action axis (default 21)",
    "device": "auto, cpu or cuda (default auto)",
}


def register(sub: argparse._SubParsersAction) -> None:
    from vjepa.world.plan_settings import PlanSettings

    p = sub.add_parser(
        "plan",
        help="plan towards goal frames with the AC world model (CEM + MPC) and report its success",
        description=__doc__,
    )
    for f in dataclasses.fields(PlanSettings):
        flag = "--" + f.name.replace("_", "-")
        kind = {int: int, float: float}.get(type(f.default), str)
        if f.name == "goal_distance":
            p.add_argument(flag, type=float, nargs=2, metavar=("LOW", "HIGH"), help=HELP[f.name])
        elif f.name == "device":
            p.add_argument(flag, choices=("auto", "cpu", "cuda"), help=HELP[f.name])
        else:
            p.add_argument(flag, type=kind, help=HELP[f.name])
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vjepa.world.plan_eval import evaluate_planning
    from vjepa.world.plan_settings import PlanSettings

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PlanSettings)}
    settings = PlanSettings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    )
    progress = {"auto": None, "on": True, "off": False}[args.progress]
    report = evaluate_planning(settings, progress=progress)
    line = {k: report[k] for k in ("episodes", "seeds", "trained_vs_random", "trained_vs_untrained", "plots")}
    line["methods"] = {
        k: {m: v[m] for m in ("success_rate", "success_se", "mean_final_distance")}
        for k, v in report["methods"].items()
    }
    print(json.dumps(line))
    return 0
