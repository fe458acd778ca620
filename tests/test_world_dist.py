"""`vjepa train-ac` with dist.backend=ddp: two processes under torchrun (gloo) train exactly as one process
on the union of their batches, each rank encoding only its own share of the trajectories, and resume exactly
from a checkpoint.

Tolerances: the ranks' gradient average is the union batch's mean gradient computed in another order, a few
fp32 ulps per step (as in tests/test_distributed.py); Adam can amplify that on near-zero gradients, so losses
must agree to 1e-5 relative and weights to 1e-5 absolute. Training each rank alone (no averaging) or on the
same trajectories moves the weights at the 1e-3 level after the first step (lr 1e-3).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_distributed import json_objects, run_torchrun

from vjepa.train.metrics import read_log
from vjepa.world.ac_checkpoint import read_ac_checkpoint
from vjepa.world.config import load_ac_config
from vjepa.world.train import train_ac

STEPS, PER_RANK = 3, 2


def overrides(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        f"encoder.checkpoint={world['encoder']}",
        f"data.train={world['train']}",
        "data.crop=32",
        "data.clips_per_trajectory=3",
        "predictor.width=24",
        "predictor.depth=1",
        "predictor.heads=2",
        f"optim.steps={STEPS}",
        f"optim.batch={PER_RANK}",
        f"train.checkpoint_every={STEPS - 1}",
        "optim.lr=1e-3",
        "optim.warmup_steps=1",
        "optim.grad_clip=0.5",
        "train.device=cpu",
        "train.progress=false",
        f"train.out_dir={out}",
        *extra,
    ]


class UnionBank:
    """The feature banks of both ranks as one process's data: step s's batch is rank 0's batch of step s
    followed by rank 1's, what the two DDP ranks train on together."""

    def __init__(self, parts: list) -> None:
        self.parts = parts
        self.keys = [k for bank in parts for k in bank.keys]

    def __len__(self) -> int:
        return sum(len(bank) for bank in self.parts)

    def fingerprint(self) -> str:
        return "union"

    def batch(self, step: int, *, seed: int, size: int, rank: int = 0) -> tuple[torch.Tensor, ...]:
        pieces = [
            bank.batch(step, seed=seed, size=size // len(self.parts), rank=r)
            for r, bank in enumerate(self.parts)
        ]
        return tuple(torch.cat(tensors) for tensors in zip(*pieces))


def union_reference(world: dict[str, Path], out: Path) -> None:
    """One process, single backend, trained on the union of the two ranks' batches of every step."""
    from vjepa.world.features import encode_bank, load_frozen_encoder, trajectory_reader
    from vjepa.world.train import build_ac_run, loop

    cfg = load_ac_config(None, overrides(world, out, f"optim.batch={2 * PER_RANK}"))
    run = build_ac_run(cfg)
    encoder, _ = load_frozen_encoder(cfg.encoder, crop=cfg.data.crop, device=run.device)
    parts = [
        encode_bank(
            encoder, trajectory_reader(cfg.data, seed=0, rank=r, world_size=2), cfg.data, device=run.device
        )
        for r in (0, 1)
    ]
    assert not set(parts[0].keys) & set(parts[1].keys)  # disjoint shares ...
    assert set(parts[0].keys) | set(parts[1].keys) == set(run.bank.keys)  # ... of every trajectory
    run.bank = UnionBank(parts)
    loop(run, 0)


@pytest.mark.dist
def test_ddp_train_ac_matches_one_process_on_the_union_batch(world, tmp_path: Path) -> None:
    ddp, reference = tmp_path / "ddp", tmp_path / "reference"
    proc = run_torchrun(["-m", "vjepa", "train-ac", *overrides(world, ddp, "dist.backend=ddp")])
    summaries = json_objects(proc.stdout, '{"start_step"')
    assert len(summaries) == 2, proc.stdout[-2000:]  # one per rank
    for s in summaries:
        assert s["world_size"] == 2 and s["steps_run"] == STEPS and s["skipped_steps"] == 0
        assert s["clips"] == 18 and s["trajectories"] == 6 and s["skipped_trajectories"] == 0
    step_dir = ddp / "checkpoints" / f"step_{STEPS:08d}"
    assert {p.name for p in step_dir.glob("trainer_rank*.pt")} == {"trainer_rank0.pt", "trainer_rank1.pt"}
    assert len(read_ac_checkpoint(ddp).trajectories) == 6  # both ranks' trajectories

    union_reference(world, reference)
    got, expected = read_log(ddp), read_log(reference)
    assert [r["step"] for r in got] == list(range(STEPS))
    for a, b in zip(got, expected):
        for key in ("loss", "loss_tf", "loss_rollout", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=0), (a["step"], key)
    trained, single = read_ac_checkpoint(ddp).predictor(), read_ac_checkpoint(reference).predictor()
    for (name, p), q in zip(trained.state_dict().items(), single.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)
    start = read_ac_checkpoint(ddp).predictor(trained=False)
    assert (trained.proj.weight - start.proj.weight).abs().max() > 1e-4  # the weights did move

    with pytest.raises(ValueError, match="written by 2 process"):  # each rank's clips depend on the ranks
        train_ac(load_ac_config(None, overrides(world, ddp, f"optim.steps={STEPS + 1}")))


@pytest.mark.dist
@pytest.mark.slow
def test_ddp_train_ac_resumes_exactly(world, tmp_path: Path) -> None:
    """The last checkpoint lost, the same command resumes both ranks from the one before, and ends with the
    weights of the uninterrupted run."""
    import shutil

    ddp = tmp_path / "ddp"
    command = ["-m", "vjepa", "train-ac", *overrides(world, ddp, "dist.backend=ddp")]
    run_torchrun(command)
    whole, whole_log = read_ac_checkpoint(ddp).predictor(), read_log(ddp)
    shutil.rmtree(ddp / "checkpoints" / f"step_{STEPS:08d}")
    proc = run_torchrun(command)
    assert {s["start_step"] for s in json_objects(proc.stdout, '{"start_step"')} == {STEPS - 1}
    resumed_log = read_log(ddp)
    assert [r["step"] for r in resumed_log] == list(range(STEPS))
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in whole_log], rel=1e-6)
    resumed = read_ac_checkpoint(ddp).predictor()
    for (name, p), q in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_ddp_launched_alone_trains_like_the_single_backend(world, tmp_path: Path) -> None:
    """A group of one through the DDP wrapper: the same losses and weights as dist.backend=single."""
    from vjepa.distributed.env import DistEnv
    from vjepa.distributed.process_group import is_started

    runs = {b: tmp_path / b for b in ("single", "ddp")}
    for backend, out in runs.items():
        summary = train_ac(load_ac_config(None, overrides(world, out, f"dist.backend={backend}")))
        assert summary["world_size"] == 1 and summary["clips"] == 18
    assert not is_started(DistEnv())  # the run stopped the group it started
    got, expected = read_log(runs["ddp"]), read_log(runs["single"])
    values = [[r[k] for k in ("loss", "grad_norm")] for r in (*got, *expected)]
    assert values[: len(got)] == [pytest.approx(v, rel=1e-6) for v in values[len(got) :]]
    a, b = read_ac_checkpoint(runs["ddp"]).predictor(), read_ac_checkpoint(runs["single"]).predictor()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
