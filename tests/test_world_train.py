"""`vjepa train-ac`: config mistakes name the key before any work, training lowers the loss, and a run
stopped and resumed logs exactly the losses of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vjepa.cli import main
from vjepa.train.metrics import read_log
from vjepa.world.ac_checkpoint import read_ac_checkpoint
from vjepa.world.config import load_ac_config
from vjepa.world.train import lr_at, train_ac


def ac_overrides(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        f"encoder.checkpoint={world['encoder']}",
        f"data.train={world['train']}",
        "data.crop=32",
        "data.clips_per_trajectory=3",
        "predictor.width=24",
        "predictor.depth=1",
        "predictor.heads=2",
        "optim.batch=4",
        "optim.warmup_steps=2",
        "train.device=cpu",
        "train.progress=false",
        f"train.out_dir={out}",
        *extra,
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", "optim.lr: must be > 0"),
        ("optim.steps=ten", "optim.steps: expected an integer"),
        ("loss.rollout_steps=4", "loss.rollout_steps: 4 exceeds data.frames - 1 = 3"),
        ("predictor.width=25", "predictor.width: must be divisible by predictor.heads"),
        ("data.state=object", "data.state"),
        ("train.lr=0.1", "unknown config key 'train.lr'"),
        ("data.frames=1", "data.frames: must be >= 2"),
        ("train.host_memory=hold", "train.host_memory: must be one of 'keep', 'release'"),
    ],
)
def test_ac_config_mistakes_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_ac_config(None, ["encoder.checkpoint=x", "data.train=y", override], check_paths=False)


def test_bad_paths_stop_before_any_work(world, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    for bad, message in (
        (f"encoder.checkpoint={tmp_path}/none", "encoder.checkpoint: "),
        (f"data.train={tmp_path}", "data.train: "),
    ):
        code = main(["train-ac", *ac_overrides(world, out, "optim.steps=2", bad)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and not out.exists(), err
    with pytest.raises(ValueError, match="data.crop: the trajectory frames are 32x32 pixels, not 64x64"):
        train_ac(load_ac_config(None, ac_overrides(world, out, "optim.steps=2", "data.crop=64")))
    with pytest.raises(ValueError, match="encoder.checkpoint: required"):
        load_ac_config(None, [])


def test_lr_schedule_warms_up_then_decays_to_final_lr() -> None:
    cfg = load_ac_config(None, ["encoder.checkpoint=x", "data.train=y", "optim.steps=10"], check_paths=False)
    optim = cfg.optim
    optim.warmup_steps, optim.lr, optim.final_lr = 2, 1e-3, 1e-5
    values = [lr_at(s, optim) for s in range(10)]
    assert values[0] == pytest.approx(5e-4) and values[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(values[1:], values[2:])) and values[-1] > 1e-5
    assert lr_at(10, optim) == pytest.approx(1e-5)


def _losses(run: Path) -> list[tuple[int, float, float, float]]:
    return [(r["step"], r["loss_tf"], r["loss_rollout"], r["lr"]) for r in read_log(run)]


def test_a_resumed_run_logs_the_losses_of_an_uninterrupted_one(world, tmp_path: Path) -> None:
    from vjepa.world.train import build_ac_run, loop

    whole, split = tmp_path / "whole", tmp_path / "split"
    summary = train_ac(load_ac_config(None, ac_overrides(world, whole, "optim.steps=6")))
    assert summary["steps_run"] == 6 and summary["skipped_steps"] == 0 and summary["clips"] == 18
    cfg = load_ac_config(None, ac_overrides(world, split, "optim.steps=6"))
    stopped = loop(build_ac_run(cfg), 0, until=3)  # a run stopped after step 3, with its checkpoint
    assert stopped["steps_run"] == 3 and read_ac_checkpoint(split).folder.name == "step_00000003"
    resumed = train_ac(cfg)
    assert resumed["start_step"] == 3 and resumed["steps_run"] == 3
    expected, got = _losses(whole), _losses(split)
    assert [r[0] for r in got] == list(range(6))
    for a, b in zip(expected, got):
        assert a[0] == b[0] and a[1:] == pytest.approx(b[1:], abs=1e-6, rel=0)
    assert len({r[1] for r in expected}) == 6  # the batches differ from step to step
    trained, again = read_ac_checkpoint(whole).predictor(), read_ac_checkpoint(split).predictor()
    for (name, p), q in zip(trained.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_a_resume_with_other_data_is_refused(world, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_ac(load_ac_config(None, ac_overrides(world, out, "optim.steps=2")))
    with pytest.raises(ValueError, match="are not those the checkpoint"):
        train_ac(
            load_ac_config(None, ac_overrides(world, out, "optim.steps=4", "data.clips_per_trajectory=2"))
        )


def test_training_lowers_the_loss_and_the_checkpoint_rebuilds_the_untrained_start(
    world, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code = main(
        ["train-ac", *ac_overrides(world, out, "optim.steps=40", "optim.lr=3e-3", "train.log_every=5")]
    )
    assert code == 0
    records = read_log(out)
    assert [r["step"] for r in records] == [0, 5, 10, 15, 20, 25, 30, 35, 39]
    assert records[-1]["loss_tf"] < 0.8 * records[0]["loss_tf"]
    assert records[-1]["loss_rollout"] < 0.8 * records[0]["loss_rollout"]
    ckpt = read_ac_checkpoint(out)
    assert ckpt.folder.name == "step_00000040" and ckpt.shapes["grid"] == [2, 2]
    assert len(ckpt.trajectories) == 6 and ckpt.encoder["name"] == "vit_test"
    trained, fresh = ckpt.predictor(), ckpt.predictor(trained=False)
    fresh_again = read_ac_checkpoint(out).predictor(trained=False)
    assert not torch.equal(trained.proj.weight, fresh.proj.weight)
    torch.testing.assert_close(fresh.proj.weight, fresh_again.proj.weight, rtol=0, atol=0)


def test_a_residual_predictor_starts_near_copying_its_input(world) -> None:
    from vjepa.world.ac_checkpoint import build_ac_predictor
    from vjepa.world.ac_objective import teacher_forcing_loss
    from vjepa.world.features import encode_bank, load_frozen_encoder, trajectory_reader

    cfg = load_ac_config(None, ac_overrides(world, world["root"] / "unused"))
    encoder, _ = load_frozen_encoder(cfg.encoder, crop=32, device=torch.device("cpu"))
    reader = trajectory_reader(cfg.data, seed=0)
    bank = encode_bank(encoder, reader, cfg.data, device=torch.device("cpu"))
    shapes = {"feature_dim": 48, "action_dim": 2, "state_dim": 2, "grid": [2, 2]}
    f, a, s = bank.features, bank.actions, bank.states
    copy = float((f[:, :-1] - f[:, 1:]).abs().mean())
    losses = {}
    for residual in (False, True):
        cfg.predictor.residual = residual
        model = build_ac_predictor(cfg.predictor, shapes, seed=0)
        with torch.no_grad():
            losses[residual] = float(teacher_forcing_loss(model, f, a, s))
    assert losses[True] < 2 * copy < losses[False], (losses, copy)  # ~copy + init noise vs ~unrelated
