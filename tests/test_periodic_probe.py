"""A pretraining run probing itself (eval.every_steps): the probe's top-1 lands in the run's log at the
due steps only, from rendered or a dataset's labelled clips; bad settings stop before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import TINY_RUN

from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.config import load_config
from vjepa.train.trainer import train


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("source", ["synthetic", "folder"])
def test_the_probe_is_logged_at_the_due_steps(tmp_path, source):
    data = "synthetic"
    if source == "folder":
        data = str(tmp_path / "labelled")
        write_synthetic_dataset(
            data, videos=12, val_videos=8, classes=4, frames=8, size=32, seed=0, workers=1
        )
    out = tmp_path / "run"
    overrides = [*TINY_RUN, "train.steps=4", "log.jsonl=true", "log.every_steps=1", f"train.out_dir={out}"]
    overrides += ["eval.every_steps=2", f"eval.data={data}", "eval.max_videos=12"]
    train(load_config(None, overrides))
    logged = records(out)
    probed = [r["step"] for r in logged if "probe_top1" in r]
    assert probed == [1, 3] and len(logged) == 4
    for r in logged:
        if "probe_top1" in r:
            assert 0.0 <= r["probe_top1"] <= 1.0 and 0.0 <= r["probe_top1_train"] <= 1.0


def test_without_eval_every_steps_nothing_is_probed(tmp_path):
    out = tmp_path / "run"
    train(load_config(None, [*TINY_RUN, "train.steps=2", "log.jsonl=true", f"train.out_dir={out}"]))
    assert not any("probe_top1" in r for r in records(out))


def test_bad_periodic_eval_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="eval.data: needs a labelled dataset"):
        load_config(None, [*TINY_RUN, "eval.every_steps=5"])
    with pytest.raises(ValueError, match="eval.every_steps: must be >= 0"):
        load_config(None, [*TINY_RUN, "eval.every_steps=-1"])
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"eval.data: {missing} has neither train/"):
        load_config(None, [*TINY_RUN, "eval.every_steps=5", f"eval.data={missing}"], check_paths=True)
    with pytest.raises(ValueError, match="eval.probe"):
        load_config(None, [*TINY_RUN, "eval.probe=knn"])
