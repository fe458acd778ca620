"""Distributed engines on CPU: DDP and DeepSpeed ZeRO 1/2/3 under torchrun (2 processes, gloo), against the
single-process engine on the same GLOBAL batch (see tests/dist_worker.py for how the batches are built).

Tolerances. In fp32 the distributed runs compute the same sums in another order (per-rank halves, then an
all-reduce / reduce-scatter), which moves results by a few fp32 ulps per step (measured: <= 4e-8 relative
on losses and grad norms over 4 steps); Adam can amplify that on near-zero gradients, so losses and grad
norms must agree to 1e-5 relative and features to 1e-4 absolute (layer-normed, O(1) values). Any real
mistake is orders of magnitude larger: a wrong loss normalisation or missing gradient average shifts the
loss at the 1e-2 level, a stale EMA target moves target features by ~10 % per step at momentum 0.9, and
the lr/weight-decay reaching the real optimizer is checked directly on its param groups. bf16 autocast
rounds to 8 mantissa bits (4e-3 relative) and DeepSpeed reduces Linear/Conv gradients in bf16: losses
(means over many tokens) must agree to 1e-3, grad norms to 5e-3, features to 3e-2 absolute (measured: 5e-5,
1e-4 and 5e-3).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import dist_worker as worker
import pytest
import torch
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Two workers under a non-elastic torchrun, with the port after the master's held by another socket:
    only a group that may restart keeps a store there (`fresh_store`), so these runs must not need it."""
    port = free_port(span=2)
    with socket.socket() as neighbour:
        neighbour.bind(("127.0.0.1", port + 1))
        neighbour.listen()
        return _run_torchrun(args, port, timeout)


def _run_torchrun(args: list[str], port: int, timeout: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        *args,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def json_objects(text: str, opening: str) -> list[dict]:
    """Every JSON object in `text` that starts with `opening`."""
    decoder, out, i = json.JSONDecoder(), [], text.find(opening)
    while i >= 0:
        obj, end = decoder.raw_decode(text, i)
        out.append(obj)
        i = text.find(opening, end)
    return out


def run_worker(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "result.json"
    run_torchrun(
        [str(ROOT / "tests" / "dist_worker.py"), "--out", str(out), "--workdir", str(tmp_path), *flags]
    )
    return json.loads(out.read_text())


def run_single(tmp_path: Path, *flags: str) -> dict:
    return worker.scenario(
        worker.parse(["--out", str(tmp_path / "ref.json"), "--workdir", str(tmp_path), *flags])
    )


@pytest.fixture(scope="module")
def single_fp32(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_single(tmp_path_factory.mktemp("single_fp32"))


def tensor(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def assert_matches_single(
    ref: dict, got: dict, *, loss_rtol: float, norm_rtol: float, feat_atol: float
) -> None:
    assert got["world_size"] == 2
    assert len(got["records"]) == len(ref["records"])
    for step, (r, g) in enumerate(zip(ref["records"], got["records"])):
        assert r["applied"] and g["applied"], step
        assert g["loss"] == pytest.approx(r["loss"], rel=loss_rtol), f"loss at step {step}"
        assert g["grad_norm"] == pytest.approx(r["grad_norm"], rel=norm_rtol), f"grad norm at step {step}"
    for key in ("encoder", "target"):
        diff = (tensor(got["features"][key]) - tensor(ref["features"][key])).abs().max().item()
        assert diff <= feat_atol, f"{key} features differ by {diff}"
    # the schedule's lr / weight decay reached the torch AdamW that really updates the weights
    assert got["groups"] == ref["groups"]
    assert got["groups"][1]["weight_decay"] == 0.0 and got["groups"][0]["weight_decay"] > 0


def assert_resumes(got: dict) -> None:
    """N/2 steps + checkpoint + a fresh engine (other weights) + load + N/2 steps == N steps."""
    half = len(got["records"]) // 2
    straight, resumed = got["records"][half:], got["resumed_records"]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-6, abs=0)
    for key in ("encoder", "target"):
        assert torch.allclose(tensor(got["resumed_features"][key]), tensor(got["features"][key]), atol=1e-6)


def assert_exports(got: dict) -> None:
    """The exported file rebuilds, without DeepSpeed, encoders that give the live model's features; loading
    it into a fresh engine reaches the weights and the fp32 masters (an lr-0 step keeps them)."""
    from vjepa.config import Config, from_dict
    from vjepa.models.builder import build_encoder

    state = torch.load(got["export"], map_location="cpu", weights_only=True)
    assert set(state) == {"encoder", "predictor", "target_encoder", "config"}
    m, d = state["config"]["model"], state["config"]["data"]
    clips = worker.probe_clips()
    for key, live in (("encoder", "encoder"), ("target_encoder", "target")):
        encoder = build_encoder(
            m["name"],
            frames=d["frames_per_clip"],
            crop=d["crop_size"],
            patch=m["patch_size"],
            tubelet=m["tubelet_size"],
            device="cpu",
        )
        encoder.load_state_dict(state[key])
        with torch.no_grad():
            rebuilt = encoder(clips).double()
        assert torch.allclose(rebuilt, tensor(got["features"][live]), atol=1e-5), key
    assert from_dict(Config, state["config"]).model.name == "vit_test"  # the run's config, complete
    for phase in ("load_weights_features", "load_weights_after_step"):
        for key in ("encoder", "target"):
            assert torch.allclose(tensor(got[phase][key]), tensor(got["features"][key]), atol=1e-5), (
                phase,
                key,
            )


def assert_nonfinite_skipped(got: dict) -> None:
    nf = got["nonfinite"]
    assert not nf["loss_skip_applied"], "a NaN loss on one rank must skip the step on all ranks"
    assert not nf["grad_skip_applied"], "NaN gradients on one rank must skip the step on all ranks"
    assert not math.isfinite(nf["grad_skip_norm"])
    assert nf["unchanged"], "skipped steps must leave encoder and target untouched"
    assert nf["next_applied"] and math.isfinite(nf["next_loss"])


# ----------------------------------------------------------------------------- multi-process (torchrun, gloo)


@pytest.mark.dist
def test_ddp_matches_single_process(tmp_path: Path, single_fp32: dict) -> None:
    got = run_worker(tmp_path, "--backend", "ddp", "--resume", "--export", "--nonfinite")
    assert_matches_single(single_fp32, got, loss_rtol=1e-5, norm_rtol=1e-5, feat_atol=1e-4)
    assert_resumes(got)
    assert_exports(got)
    assert_nonfinite_skipped(got)


@pytest.mark.dist
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_stages_0_1_2_match_single_process(tmp_path: Path, single_fp32: dict, stage: int) -> None:
    got = run_worker(
        tmp_path, "--backend", "deepspeed", "--stage", str(stage), "--resume", "--export", "--nonfinite"
    )
    assert_matches_single(single_fp32, got, loss_rtol=1e-5, norm_rtol=1e-5, feat_atol=1e-4)
    assert_resumes(got)
    assert_exports(got)
    assert_nonfinite_skipped(got)


@pytest.mark.dist
def test_zero3_matches_single_process_and_shards_state(tmp_path: Path, single_fp32: dict) -> None:
    """ZeRO-3 with nothing kept replicated (persistence threshold 0): same training as one process, each rank
    holding about half the parameter + optimizer-state + EMA-target bytes, exact resume, working export."""
    got = run_worker(
        tmp_path,
        "--backend",
        "deepspeed",
        "--stage",
        "3",
        "--resume",
        "--export",
        "--nonfinite",
        "--extra",
        "dist.deepspeed.zero_optimization.stage3_param_persistence_threshold=0",
    )
    assert_matches_single(single_fp32, got, loss_rtol=1e-5, norm_rtol=1e-5, feat_atol=1e-4)
    ratios = [b / single_fp32["held_bytes"] for b in got["held_bytes_per_rank"]]
    assert max(ratios) <= 0.55, f"per-rank parameter + optimizer + target bytes / single run: {ratios}"
    assert_resumes(got)
    assert_exports(got)
    assert_nonfinite_skipped(got)


@pytest.mark.dist
def test_zero3_bf16_autocast_matches_single_process(tmp_path: Path) -> None:
    ref = run_single(tmp_path / "single", "--precision", "bf16")
    got = run_worker(tmp_path, "--backend", "deepspeed", "--stage", "3", "--precision", "bf16")
    assert_matches_single(ref, got, loss_rtol=1e-3, norm_rtol=5e-3, feat_atol=3e-2)


@pytest.mark.dist
def test_train_command_zero3_end_to_end(tmp_path: Path) -> None:
    """`torchrun -m vjepa train` with ZeRO-3 on the quickstart config, then `vjepa export` of the run."""
    run_dir = tmp_path / "run"
    proc = run_torchrun(
        [
            "-m",
            "vjepa",
            "train",
            "--config",
            "configs/quickstart.yaml",
            "train.steps=4",
            "model.name=vit_test",
            "dist.backend=deepspeed",
            "dist.zero_stage=3",
            f"train.out_dir={run_dir}",
            "checkpoint.every_steps=2",
            "data.batch_size=2",
            "data.frames_per_clip=4",
            "data.crop_size=32",
            "model.pred_width=32",
            "model.pred_depth=2",
            "log.progress=false",
            "log.tensorboard=false",
        ]
    )
    summaries = json_objects(proc.stdout, '{"start_step"')  # the ranks' lines may interleave
    assert len(summaries) >= 1 and all(s["world_size"] == 2 and s["steps"] == 4 for s in summaries)
    assert all(s["skipped_steps"] == 0 and math.isfinite(s["last_loss"]) for s in summaries)
    step_dir = run_dir / "checkpoints" / "step_00000004"
    assert (step_dir / "COMPLETE").is_file() and (step_dir / "deepspeed").is_dir()
    assert {p.name for p in step_dir.glob("target_rank*.pt")} == {"target_rank0.pt", "target_rank1.pt"}

    from vjepa.cli import main

    out = tmp_path / "export.pt"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(out)]) == 0
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state["config"]["dist"]["zero_stage"] == 3
    assert state["encoder"]["blocks.0.attn.qkv.weight"].shape == (3 * 48, 48)
    assert not torch.equal(
        state["encoder"]["blocks.0.attn.qkv.weight"], state["target_encoder"]["blocks.0.attn.qkv.weight"]
    )


# ----------------------------------------------------------------------------- in-process


def deepspeed_config(cfg, world_size: int) -> dict:
    """DeepSpeed's config for the sections of `cfg` that the DeepSpeed engine receives."""
    from vjepa.distributed.deepspeed_config import deepspeed_config as derive

    return derive(
        cfg.dist,
        world_size=world_size,
        micro_batch=cfg.data.batch_size,
        grad_clip=cfg.optim.grad_clip,
        precision=cfg.train.precision,
    )


def test_deepspeed_config_is_derived_from_ours() -> None:
    cfg = worker.make_config(
        "deepspeed",
        3,
        "bf16",
        2,
        ".",
        [
            "data.batch_size=3",
            "optim.grad_clip=1.5",
            "dist.deepspeed.zero_optimization.overlap_comm=false",
            "dist.deepspeed.zero_optimization.stage3_param_persistence_threshold=0",
        ],
    )
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["train_batch_size"] == 12
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 1.5
    assert ds["zero_optimization"] == {
        "stage": 3,
        "overlap_comm": False,
        "stage3_param_persistence_threshold": 0,
    }
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in ds
    fp32 = deepspeed_config(worker.make_config("deepspeed", 1, "fp32", 2, ".", []), world_size=2)
    assert "torch_autocast" not in fp32 and fp32["gradient_clipping"] == 0.5


@pytest.mark.parametrize(
    "override, key",
    [
        ("dist.deepspeed.bf16.enabled=true", "bf16"),
        ("dist.deepspeed.fp16.enabled=true", "fp16"),
        ("dist.deepspeed.optimizer.type=AdamW", "optimizer"),
        ("dist.deepspeed.zero_optimization.stage=1", "zero_optimization.stage"),
        ("dist.deepspeed.gradient_accumulation_steps=2", "gradient_accumulation_steps"),
        ("dist.deepspeed.train_micro_batch_size_per_gpu=7", "train_micro_batch_size_per_gpu"),
        ("dist.deepspeed.gradient_clipping=3.0", "gradient_clipping"),
    ],
)
def test_deepspeed_raw_keys_that_contradict_ours_are_errors(override: str, key: str) -> None:

    cfg = worker.make_config("deepspeed", 2, "fp32", 2, ".", [override])
    with pytest.raises(ValueError, match=f"dist.deepspeed.{key}"):
        deepspeed_config(cfg, world_size=2)


def test_single_backend_refuses_several_processes() -> None:
    from vjepa.distributed.env import DistEnv
    from vjepa.train.trainer import make_engine

    cfg = worker.make_config("single", 0, "fp32", 1, ".", [])
    with pytest.raises(ValueError, match="dist.backend=single"):
        make_engine(
            cfg,
            worker.build_models(cfg, torch.device("cpu")),
            torch.device("cpu"),
            DistEnv(rank=0, world_size=2, source="torchrun"),
        )


def test_failed_process_group_start_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 of 2 with no rank 0 listening: an error naming the master, never a silent single process."""
    from datetime import timedelta

    from vjepa.distributed.env import DistEnv
    from vjepa.distributed.process_group import start_process_group

    for key in LAUNCH_VARS:
        monkeypatch.setenv(key, "placeholder")
        monkeypatch.delenv(key)
    env = DistEnv(rank=1, world_size=2, master_addr="127.0.0.1", master_port=free_port(), source="torchrun")
    with pytest.raises(RuntimeError, match="could not start the gloo process group"):
        start_process_group(env, torch.device("cpu"), timeout=timedelta(seconds=2))
    assert not torch.distributed.is_initialized()


def test_an_elastic_group_whose_store_port_is_taken_names_the_port(monkeypatch) -> None:
    from datetime import timedelta

    from vjepa.distributed.env import DistEnv
    from vjepa.distributed.process_group import start_process_group

    port = free_port(span=2)
    for key in LAUNCH_VARS:  # start_process_group exports RANK, WORLD_SIZE, ...: undone at teardown
        monkeypatch.setenv(key, "placeholder")
        monkeypatch.delenv(key)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    env = DistEnv(rank=0, world_size=2, master_addr="127.0.0.1", master_port=port, source="torchrun")
    with socket.socket() as neighbour:
        neighbour.bind(("127.0.0.1", port + 1))
        neighbour.listen()
        with pytest.raises(
            RuntimeError, match=f"MASTER_PORT \\+ 1 = 127.0.0.1:{port + 1}, which could not be served"
        ):
            start_process_group(env, torch.device("cpu"), timeout=timedelta(seconds=2))
    assert not torch.distributed.is_initialized()


def test_ddp_backend_launched_alone_runs_in_a_group_of_one(tmp_path: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from vjepa.distributed.env import DistEnv
    from vjepa.distributed.process_group import start_process_group, stop_process_group
    from vjepa.train.trainer import make_engine

    cfg = worker.make_config("ddp", 0, "fp32", 1, str(tmp_path), [])
    try:
        with pytest.raises(RuntimeError, match="needs a started process group"):
            make_engine(cfg, worker.build_models(cfg, torch.device("cpu")), torch.device("cpu"), DistEnv())
        start_process_group(DistEnv(), torch.device("cpu"))
        engine = make_engine(
            cfg, worker.build_models(cfg, torch.device("cpu")), torch.device("cpu"), DistEnv()
        )
        assert isinstance(engine.model, DistributedDataParallel) and torch.distributed.get_world_size() == 1
        records = worker.run_steps(engine, cfg, range(2), rank=0, world=1)
        assert all(r["applied"] and math.isfinite(r["loss"]) for r in records)
    finally:
        stop_process_group()


def test_export_repacks_a_single_process_checkpoint(tmp_path: Path) -> None:
    from vjepa.checkpoint import CheckpointManager, resolve_checkpoint
    from vjepa.config import save_config
    from vjepa.distributed.env import DistEnv
    from vjepa.distributed.export import export_checkpoint
    from vjepa.train.trainer import make_engine

    cfg = worker.make_config("single", 0, "fp32", 1, str(tmp_path), [])
    engine = make_engine(cfg, worker.build_models(cfg, torch.device("cpu")), torch.device("cpu"), DistEnv())

    def write(folder: Path) -> None:
        engine.save(folder)
        save_config(cfg, folder / "config.yaml")

    folder = CheckpointManager(tmp_path / "checkpoints").save(3, write)
    assert resolve_checkpoint(tmp_path) == folder == resolve_checkpoint(tmp_path / "checkpoints")
    state = torch.load(export_checkpoint(tmp_path, tmp_path / "out.pt"), weights_only=True)
    assert set(state) == {"encoder", "predictor", "target_encoder", "config"}
    for key, module in (
        ("encoder", engine.module.encoder),
        ("predictor", engine.module.predictor),
        ("target_encoder", engine.target.module),
    ):
        live = module.state_dict()
        assert state[key].keys() == live.keys() and all(torch.equal(state[key][k], live[k]) for k in live)
    assert state["config"]["model"]["name"] == "vit_test"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
