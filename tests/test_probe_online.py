"""Probes trained online (the frozen encoder on augmented training clips every step): every head of a sweep
trains exactly as it would alone, the segments of a view are joined as at evaluation, and the command reads
the checkpoint and data from the eval config."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import TINY_RUN

from data_pipelines import EvalClipSpec
from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.cli import main
from vjepa.config import load_config
from vjepa.eval.evaluate import ProbeConfig
from vjepa.eval.extract import load_checkpoint_state, load_encoder
from vjepa.eval.online import train_probes_online

TOKENS, WIDTH = 8, 48  # vit_test on 4 x 32 x 32 clips


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from vjepa.train.trainer import train

    root = tmp_path_factory.mktemp("online")
    run = root / "run"
    train(load_config(None, [*TINY_RUN, "train.steps=1", "checkpoint.every_steps=1", f"train.out_dir={run}"]))
    data = root / "data"
    write_synthetic_dataset(data, videos=12, val_videos=6, classes=3, frames=8, size=40, seed=0, workers=1)
    return run, data


def encoder_of(run: Path) -> torch.nn.Module:
    return load_encoder(load_checkpoint_state(run), frames=4, crop=32)


def test_every_head_of_an_online_sweep_trains_as_it_would_alone(setup):
    run, data = setup
    spec = EvalClipSpec(frames=4, frame_step=1, crop=32)
    cfg = ProbeConfig(epochs=2, batch=4, depth=1, heads=None, lrs=(1e-3, 1e-2), wds=(0.0, 0.1))
    sweep = train_probes_online(encoder_of(run), data / "train", data / "val", spec, cfg)
    assert len(sweep["heads"]) == 4 and sweep["online"] and sweep["steps"] == 2 * 3
    assert sweep["train_videos"] == 12 and sweep["val_videos"] == 6 and sweep["tokens"] == TOKENS
    for lr, wd in [(1e-2, 0.1), (1e-3, 0.0)]:
        alone = train_probes_online(
            encoder_of(run), data / "train", data / "val", spec, replace(cfg, lrs=(lr,), wds=(wd,))
        )
        (head,) = [h for h in sweep["heads"] if (h["lr"], h["wd"]) == (lr, wd)]
        torch.testing.assert_close(head["history"]["train_loss"], alone["heads"][0]["history"]["train_loss"])
        assert head["top1_val"] == alone["top1_val"] and head["top5_val"] == alone["top5_val"]
    losses = {tuple(h["history"]["train_loss"]) for h in sweep["heads"]}
    assert len(losses) == 4  # the heads do differ


def test_online_segments_are_joined_into_one_view(setup):
    run, data = setup
    spec = EvalClipSpec(frames=4, frame_step=1, crop=32, segments=2, views=1)
    cfg = ProbeConfig(epochs=1, batch=4, depth=0, heads=None, attend_across_segments=True)
    result = train_probes_online(encoder_of(run), data / "train", data / "val", spec, cfg)
    assert result["tokens"] == 2 * TOKENS and result["val_views"] == 1
    apart = train_probes_online(
        encoder_of(run), data / "train", data / "val", spec, replace(cfg, attend_across_segments=False)
    )
    assert apart["tokens"] == TOKENS and apart["val_views"] == 2


def test_the_online_probe_command(setup, tmp_path, capsys):
    run, data = setup
    argv = [
        "probe",
        "--online",
        "--checkpoint",
        str(run),
        "--data",
        str(data),
        "--epochs",
        "1",
        "--batch",
        "4",
    ]
    assert (
        main([*argv, "--lrs", "0.001,0.01", "--depth", "0", "clips.frames=4", "--out", str(tmp_path / "r")])
        == 0
    )
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["online"] and len(result["heads"]) == 2 and result["model"] == "vit_test"
    assert (tmp_path / "r" / "confusion.png").is_file()
    assert main(["probe", "--online", "--data", str(data)]) == 2
    assert "extract.checkpoint: required" in capsys.readouterr().err
    assert main(["probe", "--online", "--checkpoint", str(run), "--data", str(data / "train")]) == 2
    assert "needs train/ and val/" in capsys.readouterr().err
