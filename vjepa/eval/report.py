"""The demo's report on the console and as plots: one table of every source under every probe, the margin
of the trained encoder over the best baseline, the collapse monitors and the time per stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_table", "print_table", "write_plots"]

ORDER = ("trained", "context", "random_init", "pixels", "single_frame")
CELL = 24


def _cell(row: Mapping[str, Any]) -> str:
    return f"{row['top1']:.3f}±{row['se']:.3f} ({row['train_top1']:.2f})".ljust(CELL)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f}"


def _paired(x: float | None) -> str:
    return "" if x is None else f" {x:+.1f}p"


def _monitor_line(monitors: Mapping[str, Any]) -> str:
    parts = []
    for prefix in ("target", "pred"):
        bits = []
        dim, const = monitors.get(f"{prefix}_eff_dim"), monitors.get(f"{prefix}_clip_const")
        if dim:
            bits.append(f"eff_dim {dim['first']:.2f} -> {dim['last']:.2f}")
        if const:
            bits.append(f"clip_const {const['first']:.2f} -> {const['last']:.2f}")
        if bits:
            parts.append(f"{prefix} " + ", ".join(bits))
    healthy = {True: "no collapse", False: "COLLAPSE WARNING", None: "not measured"}[monitors.get("healthy")]
    limits = (
        f"warn: eff_dim < {monitors['warn_fraction']:g} x first, clip_const > {monitors['clip_const_max']:g}"
    )
    return f"monitors: {'; '.join(parts) or 'none logged'} ({limits}): {healthy}"


def format_table(report: Mapping[str, Any]) -> list[str]:
    """The console lines of the report (see vjepa/commands/demo.py for its fields)."""
    data, probes, pre = report["data"], report["probes"], report["pretraining"]
    kinds = list(probes["trained"])
    seeds = {k: len(r["settings"]["seeds"]) for k, r in probes["trained"].items()}
    lines = [
        f"val top-1 ± binomial SE (probe's train top-1); {data['val_videos']} val / {data['train_videos']} train "
        f"clips, {data['classes']} classes, chance {data['chance']:.3f}; mean over (n) probe seeds",
        "source".ljust(14) + "".join(f"{k} ({seeds[k]})".ljust(CELL) for k in kinds),
    ]
    for source in [s for s in ORDER if s in probes] + [s for s in probes if s not in ORDER]:
        lines.append(source.ljust(14) + "".join(_cell(probes[source][k]) for k in kinds))
    margin_cells = []
    for k in kinds:
        m = report["margins"].get(k)
        text = (
            "-"
            if m is None
            else f"{m['margin']:+.3f} {_num(m['margin_in_se'])} SE" + _paired(m["margin_in_paired_se"])
        )
        margin_cells.append(text.ljust(CELL))
    lines.append("margin".ljust(14) + "".join(margin_cells))
    best = {k: report["margins"][k]["best_baseline"] for k in kinds if k in report["margins"]}
    lines.append(
        "  (trained minus the best baseline of random_init / pixels / single_frame, in unpaired SE; p: paired SE"
        " over the same val clips; best baseline: " + ", ".join(f"{k} {b}" for k, b in best.items()) + ")"
    )
    first, last = pre["first_loss"], pre["last_loss"]
    if first is not None:
        lines.append(f"loss {first:.4f} -> {last:.4f} (mean of the first / last tenth of logged steps)")
    lines.append(_monitor_line(report["monitors"]))
    curve = report["curve"]
    lines.append(
        f"curve ({curve['probe']} probe, seed {curve['seed']}): "
        + ", ".join(f"step {p['step']} {p['top1']:.3f}" for p in curve["points"])
    )
    sec = report["seconds"]
    stages = ("data", "pretrain", "probe", "curve", "report")
    lines.append(
        "time: "
        + " | ".join(f"{s} {sec[s]:.0f}s" for s in stages if s in sec)
        + f" | total {sec['total']:.0f}s"
        f" (probe stage: extract {sec.get('probe_extract', 0):.0f}s, probes {sec.get('probe_probe', 0):.0f}s)"
    )
    if not report["claims"]:
        lines.append("quick mode: a smoke run on tiny data and few steps; these numbers claim nothing")
    return lines


def print_table(report: Mapping[str, Any]) -> None:
    for line in format_table(report):
        print(f"[demo] {line}")


def write_plots(
    report: Mapping[str, Any], records: Sequence[Mapping[str, Any]], out: str | Path, *, warn_fraction: float
) -> dict[str, str]:
    """training.png (loss and monitors), curve.png (accuracy against step), confusion.png (the trained
    encoder's best probe) in `out`; -> {name: path}."""
    from vjepa.eval.plots import plot_confusion, plot_curve, plot_training

    out = Path(out)
    curve, probes = report["curve"], report["probes"]
    baselines = {
        name: {"top1": probes[name][curve["probe"]]["per_seed"][0]}
        for name in ("random_init", "pixels", "single_frame")
        if name in probes
    }
    best = report["best_probe"]
    paths = {
        "training": plot_training(records, out / "training.png", warn_fraction=warn_fraction),
        "curve": plot_curve(
            curve["points"],
            baselines,
            out / "curve.png",
            probe=curve["probe"],
            chance=report["data"]["chance"],
        ),
        "confusion": plot_confusion(
            probes["trained"][best]["confusion"],
            report["data"]["class_names"],
            out / "confusion.png",
            title=f"trained encoder, {best} probe (val, summed over seeds)",
        ),
    }
    return {k: str(v) for k, v in paths.items()}
