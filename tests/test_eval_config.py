"""The typed eval config: the published-protocol configs load with their values, mistakes name the key, and
`vjepa extract` / `vjepa probe` read a config file with flags and key=value overrides on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import TINY_RUN

from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.cli import main
from vjepa.commands.probe import probe_config
from vjepa.config import load_config
from vjepa.eval.config import load_eval_config

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_LRS = [0.005, 0.003, 0.001, 0.0003, 0.0001]
PUBLISHED_WDS = [0.01, 0.1, 0.4, 0.8]


@pytest.mark.parametrize(("name", "segments"), [("k400", 8), ("ssv2", 2)])
def test_the_published_protocol_configs_load(name, segments):
    cfg = load_eval_config(REPO / "configs" / "eval" / f"{name}.yaml")
    c, p = cfg.clips, cfg.probe
    assert (c.frames, c.frame_step, c.crop, c.segments, c.views) == (16, 4, 256, segments, 3)
    assert (p.kind, p.depth, p.heads, p.epochs, p.attend_across_segments) == ("attentive", 3, 16, 20, True)
    probe = probe_config(p)
    assert probe.grid() == [(lr, wd) for lr in PUBLISHED_LRS for wd in PUBLISHED_WDS]  # 20 heads
    probe.validate()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("probe.lrz=[0.1]", "unknown config key 'probe.lrz'"),
        ("clips.views=2", "clips.views"),
        ("probe.wds=[-1]", "probe.wds: >= 0 each"),
        ("probe.lrs=[]", "probe.lrs: give at least one value"),
        ("extract.part_size=0", "extract.part_size: must be >= 1"),
        ("extract.dtype=int8", "extract.dtype"),
        ("clips.segments=0", "clips.segments: must be >= 1"),
    ],
)
def test_eval_config_mistakes_name_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_eval_config(None, [override])


def test_a_config_file_drives_extract_and_a_probe_sweep(tmp_path, capsys):
    from vjepa.train.trainer import train

    run = tmp_path / "run"
    train(load_config(None, [*TINY_RUN, "train.steps=1", "checkpoint.every_steps=1", f"train.out_dir={run}"]))
    data = tmp_path / "data"
    write_synthetic_dataset(data, videos=12, val_videos=8, classes=4, frames=8, size=32, seed=0, workers=1)
    config = tmp_path / "eval.yaml"
    config.write_text(
        "clips: {frames: 4, frame_step: 1, crop: 32, segments: 2, views: 1}\n"
        "extract: {part_size: 5, batch: 4}\n"
        "probe: {epochs: 2, batch: 8, lrs: [0.001, 0.01], wds: [0.0, 0.1], attend_across_segments: true}\n"
    )
    feats = tmp_path / "feats"
    argv = [
        "extract",
        "--config",
        str(config),
        "--checkpoint",
        str(run),
        "--data",
        str(data),
        "--out",
        str(feats),
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["segments"] == 2 and summary["shape"]["train"] == [12, 2, 8, 48]
    report = tmp_path / "report"
    argv = ["probe", "--config", str(config), "--train", str(feats / "train"), "--val", str(feats / "val")]
    assert main([*argv, "--out", str(report), "probe.depth=0"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert len(result["heads"]) == 4 and result["depth"] == 0 and result["epochs"] == 2
    assert result["tokens"] == 2 * 8 and result["train_views"] == 1  # both segments in one view
    assert {(h["lr"], h["wd"]) for h in result["heads"]} == {
        (a, b) for a in (0.001, 0.01) for b in (0.0, 0.1)
    }
    assert result["top5_val"] >= result["top1_val"]
    for name in ("probe.json", "probe_curves.png", "confusion.png"):
        assert (report / name).is_file(), name
    assert json.loads((report / "probe.json").read_text())["best"] == result["best"]
    assert main([*argv, "--lr", "0.001", "--wd", "0.0", "--epochs", "1"]) == 0  # flags override the file
    single = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert len(single["heads"]) == 1 and single["epochs"] == 1
