"""The run-folder layout module and weight loading: weights-only loads refuse a pickle that would run code,
the one weight-loading function names what does not fit, and the trainer writes its initial weights."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from tiny import TINY_RUN

from vjepa.checkpoint import CheckpointManager, RunFolder, load_trainer_state, save_trainer_state
from vjepa.config import load_config
from vjepa.models.builder import build_encoder
from vjepa.models.weights import checked_weights, load_weights, read_torch_file

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_RUN


class RunsCode:
    """Unpickling this object would create the file `marker` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def malicious_file(path: Path, marker: Path) -> Path:
    """A file whose unpickling runs code: a plain pickle, which torch.load also reads (its legacy format)."""
    with path.open("wb") as f:
        pickle.dump({"encoder": RunsCode(marker), "step": 3}, f)
    return path


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = malicious_file(tmp_path / "model.pt", marker)
    with bad.open("rb") as f:
        pickle.load(f)  # the file really does run code when loaded unsafely
    assert marker.exists()
    os.rmdir(marker)
    with pytest.raises(ValueError, match="train.init_from: .*not a weights-only torch file"):
        read_torch_file(bad, what="train.init_from")
    assert not marker.exists()


def test_training_from_a_malicious_init_file_stops_before_running_it(tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    marker = tmp_path / "pwned"
    bad = malicious_file(tmp_path / "evil.pt", marker)
    cfg = load_config(
        None, [*TINY, "train.steps=2", f"train.out_dir={tmp_path / 'run'}", f"train.init_from={bad}"]
    )
    with pytest.raises(ValueError, match="train.init_from"):
        train(cfg)
    assert not marker.exists()


def test_resuming_from_a_malicious_checkpoint_refuses_it(tmp_path: Path) -> None:
    from vjepa.train.trainer import train

    run = tmp_path / "run"
    cfg = load_config(None, [*TINY, "train.steps=2", "checkpoint.every_steps=2", f"train.out_dir={run}"])
    train(cfg)
    latest = CheckpointManager(RunFolder(run).checkpoints).latest()
    marker = tmp_path / "pwned"
    for name in ("model.pt", "trainer_rank0.pt"):
        original = (latest / name).read_bytes()
        malicious_file(latest / name, marker)
        with pytest.raises(ValueError, match="not a weights-only torch file"):
            train(load_config(None, [*TINY, "train.steps=4", f"train.out_dir={run}"]))
        assert not marker.exists()
        (latest / name).write_bytes(original)


def test_trainer_state_round_trips_under_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    save_trainer_state(tmp_path, 1, step=7, data={"epoch": 2, "keys": ["a", "b"]}, extra={"mean": 0.5})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(1)  # move every RNG on
    step, data, extra = load_trainer_state(tmp_path, 1)
    assert (step, data, extra) == (7, {"epoch": 2, "keys": ["a", "b"]}, {"mean": 0.5})
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_weights_that_do_not_fit_name_the_keys() -> None:
    encoder = build_encoder("vit_test", frames=4, crop=32, device="cpu")
    state = dict(encoder.state_dict())
    state.pop("norm.weight")
    state["head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"missing \['norm.weight'\], unexpected \['head.weight'\]"):
        load_weights(encoder, state, "train.init_from: 'encoder'")
    good = dict(encoder.state_dict())
    good["norm.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"norm.bias is \(7,\) in the file and \(\d+,\) in the model"):
        checked_weights(encoder, good, "x")


def test_weights_load_across_clip_sizes_with_the_table_rebuilt() -> None:
    small = build_encoder("vit_test", frames=4, crop=32, device="cpu")
    large = build_encoder("vit_test", frames=8, crop=64, device="cpu")
    table = large.pos_embed.clone()
    load_weights(large, small.state_dict(), "encoder")
    assert torch.equal(large.pos_embed, table)  # the fixed table stays the one built for 8 x 64
    assert torch.equal(large.blocks[0].attn.qkv.weight, small.blocks[0].attn.qkv.weight)


def test_a_fresh_run_writes_its_initial_weights(tmp_path: Path) -> None:
    from vjepa.train.trainer import build_models, train

    run = tmp_path / "run"
    cfg = load_config(None, [*TINY, "train.steps=2", f"train.out_dir={run}"])
    train(cfg)
    init = read_torch_file(RunFolder(run).init_weights, what="init")
    torch.manual_seed(cfg.train.seed)  # the trainer seeds rank 0 this way before building the models
    fresh = build_models(cfg, torch.device("cpu"))
    for key, module in (
        ("encoder", fresh.encoder),
        ("predictor", fresh.predictor),
        ("target_encoder", fresh.encoder),
    ):
        live = module.state_dict()
        assert init[key].keys() == live.keys() and all(torch.equal(init[key][k], live[k]) for k in live)
    final = read_torch_file(CheckpointManager(RunFolder(run).checkpoints).latest() / "model.pt", what="ckpt")
    assert not torch.equal(
        final["encoder"]["blocks.0.attn.qkv.weight"], init["encoder"]["blocks.0.attn.qkv.weight"]
    )
