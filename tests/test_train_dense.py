"""`vjepa train` with every V-JEPA 2.1 switch on (context loss with warm-up, two levels, normalised
predictions) runs, logs the context terms, and resumes exactly; `vjepa extract` writes multi-level features
that the probes read, and its settings guard covers the levels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import TINY_RUN

from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.cli import main
from vjepa.config import load_config
from vjepa.eval.extract import load_features

DENSE = [
    "loss.context_weight=0.5",
    "loss.context_warmup_start=1",
    "loss.context_warmup_steps=2",
    "loss.levels=[0,1]",
    "loss.normalize_predictions=true",
]


def _log(run_dir: Path) -> dict[int, dict]:
    rows = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run logs replayed steps again: the last entry wins
    return rows


def test_train_with_every_switch_on_runs_and_resumes_exactly(tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    args = [*TINY_RUN, *DENSE, "train.steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=5"]
    full = tmp_path / "full"
    summary = train(load_config(None, [*args, f"train.out_dir={full}"]))
    assert summary.steps_run == 4 and summary.skipped_steps == 0
    log = _log(full)
    assert [log[s]["context_weight"] for s in range(4)] == pytest.approx([0.0, 0.0, 0.25, 0.5])
    assert all(log[s]["context_loss"] > 0 for s in range(4))
    state = torch.load(full / "checkpoints" / "step_00000004" / "model.pt", weights_only=True)
    assert state["predictor"]["predictor_proj.weight"].shape == (2 * 48, 32)  # two levels of width 48
    assert state["predictor"]["predictor_proj_context.weight"].shape == (2 * 48, 32)

    # A crash after the step-2 save: the rerun resumes there and reproduces steps 2 and 3 exactly.
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_00000004")
    resumed = train(load_config(None, [*args, f"train.out_dir={crashed}"]))
    assert resumed.start_step == 2 and resumed.steps_run == 2
    again = _log(crashed)
    for step in range(4):
        for key in ("loss", "context_loss", "context_weight"):
            assert again[step][key] == pytest.approx(log[step][key], abs=1e-6), (step, key)
    end = torch.load(crashed / "checkpoints" / "step_00000004" / "model.pt", weights_only=True)
    for part in ("encoder", "predictor", "target_encoder"):
        for key, value in state[part].items():
            torch.testing.assert_close(end[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vjepa.train.trainer import train

    out = tmp_path_factory.mktemp("levels_run")
    train(load_config(None, [*TINY_RUN, "train.steps=1", f"train.out_dir={out}"]))
    return out


def test_extract_writes_levels_side_by_side_and_the_probe_reads_them(run, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    write_synthetic_dataset(data, videos=6, val_videos=4, classes=2, frames=8, size=32, seed=1, workers=1)
    base = ["extract", "--checkpoint", str(run), "--data", str(data), "--batch", "3", "--dtype", "float32"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "levels"), "--levels", "0", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["levels"] == [0, 1] and summary["shape"]["train"] == [6, 1, 8, 2 * 48]
    plain, levels = load_features(tmp_path / "plain" / "train"), load_features(tmp_path / "levels" / "train")
    # the last block's level is the encoder's usual output; the first is a different, layer-normed one
    torch.testing.assert_close(levels.tokens[..., 48:], plain.tokens, atol=1e-5, rtol=0)
    first = levels.tokens[..., :48]
    torch.testing.assert_close(first.mean(-1), torch.zeros(first.shape[:-1]), atol=1e-4, rtol=0)
    assert (first - plain.tokens).abs().mean() > 1e-3

    # the settings guard: other levels into the same folder are refused, and levels into a plain folder
    assert main([*base, "--out", str(tmp_path / "levels"), "--levels", "1"]) == 2
    assert "levels: [0, 1] -> [1]" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "plain"), "--levels", "1"]) == 2
    assert "levels: None -> [1]" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "bad"), "--levels", "2"]) == 2  # vit_test has blocks 0, 1
    assert "extract.levels" in capsys.readouterr().err

    # a probe trains on the 96-wide features
    folder = tmp_path / "levels"
    probe = ["probe", "--train", str(folder / "train"), "--val", str(folder / "val"), "--epochs", "1"]
    assert main([*probe, "probe.kind=linear", "probe.batch=4"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert 0.0 <= report["top1_val"] <= 1.0
