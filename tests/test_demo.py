"""The demo end to end (marked slow; `make test-slow`): the quick mode runs the whole pipeline and writes a
complete report and its plots, and training was healthy. No accuracy threshold: the quick mode claims
nothing. A user's labelled dataset (`--data`) goes through the same protocol."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.cli import main

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"trained", "context", "random_init", "pixels", "single_frame"}


def check_report(report: dict, out: Path, *, probes: set[str]) -> None:
    assert report["mode"] == "quick" and report["claims"] is False
    assert set(report["probes"]) == SOURCES
    for source, rows in report["probes"].items():
        assert set(rows) == probes, source
        for name, row in rows.items():
            assert 0.0 <= row["top1"] <= 1.0 and 0.0 <= row["train_top1"] <= 1.0, (source, name)
            assert row["se"] == pytest.approx(
                math.sqrt(row["top1"] * (1 - row["top1"]) / row["n_val"]), abs=1e-3
            )
            assert sum(map(sum, row["confusion"])) == row["n_val"] * len(row["settings"]["seeds"])
    for name, m in report["margins"].items():
        assert m["best_baseline"] in ("random_init", "pixels", "single_frame"), name
        best = report["probes"][m["best_baseline"]][name]["top1"]
        assert m["margin"] == pytest.approx(report["probes"]["trained"][name]["top1"] - best, abs=1e-3)
    steps = [p["step"] for p in report["curve"]["points"]]
    assert steps[0] == 0 and steps[-1] == report["pretraining"]["steps"] and steps == sorted(steps)
    assert set(report["seconds"]) >= {"data", "pretrain", "probe", "curve", "report", "total"}
    for name in ("training", "curve", "confusion"):
        path = Path(report["plots"][name])
        assert path.parent == out and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.slow
def test_quick_demo_writes_the_report_and_plots_and_trains_healthily(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vjepa", "demo", "--mode", "quick", "--out", str(out), "log.progress=false"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[demo] trained" in proc.stdout and "margin" in proc.stdout and "claim nothing" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    check_report(report, out, probes={"mean", "time", "few4", "attentive"})
    # healthy training: the loss fell, no skipped steps, every collapse monitor above its threshold
    pre, monitors = report["pretraining"], report["monitors"]
    assert pre["last_loss"] < pre["first_loss"] and pre["skipped_steps"] == 0
    assert monitors["healthy"] is True and report["training_healthy"] is True
    for key in ("target_eff_dim", "pred_eff_dim"):
        assert monitors[key]["last"] >= monitors["warn_fraction"] * monitors[key]["first"], key
    for key in ("target_clip_const", "pred_clip_const"):
        assert monitors[key]["last"] <= monitors["clip_const_max"], key
    assert report["data"]["train_videos"] == 160 and report["data"]["val_videos"] == 80


@pytest.mark.slow
def test_demo_on_a_users_labelled_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic_dataset(data, videos=32, val_videos=16, classes=4, frames=32, size=64, seed=3, workers=1)
    out = tmp_path / "demo"
    argv = ["demo", "--mode", "quick", "--data", str(data), "--out", str(out), "--steps", "4"]
    assert main([*argv, "--probes", "mean,quad", "log.progress=false", "data.num_workers=0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["kind"] == "files" and report["data"]["classes"] == 4
    assert report["data"]["class_names"] == json.loads((data / "classes.json").read_text())
    assert report["data"]["train_videos"] == 32 and report["data"]["val_videos"] == 16
    check_report(report, out, probes={"mean", "quad"})
    assert main(["demo", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "--data" in capsys.readouterr().err
