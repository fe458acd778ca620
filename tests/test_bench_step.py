"""The step benchmark's FLOP count and its JSON output (no timing is asserted)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_pipelines.batch import MaskBatch
from vjepa.cli import main
from vjepa.models import build_encoder, build_predictor
from vjepa.train.flops import step_flops

STEP = runpy.run_path(
    str(Path(__file__).resolve().parents[1] / "benchmarks" / "step.py"), run_name="step_bench"
)


def test_vit_large_forward_flops_match_the_published_figure():
    # REFERENCE.md: ViT-L/16 at 16x224 (1568 tokens) costs ~1.19 TFLOP forward per clip.
    flops = STEP["block_flops"](torch.tensor([1568]), 1024, 4096, 24)
    assert flops / 1e12 == pytest.approx(1.19, rel=0.01)


def test_step_flops_match_a_hand_count_on_a_tiny_model():
    # vit_test (width 48, depth 2, MLP 192, patch 16, tubelet 2) and a 32-wide, 1-block predictor (MLP 128).
    enc = build_encoder("vit_test", frames=4, crop=32, device="meta")  # 2 x 2 x 2 = 8 grid tokens
    pred = build_predictor(embed_dim=48, frames=4, crop=32, width=32, depth=1, heads=2, device="meta")
    flops = step_flops(
        enc,
        pred,
        batch=1,
        grid_tokens=8,
        context_lengths=torch.tensor([2, 3]),  # two sequences: one clip under two mask configurations
        target_lengths=torch.tensor([4, 1]),
    )
    enc_token = 2 * (4 * 48 * 48 + 2 * 48 * 192)  # qkv, proj, fc1, fc2 per token and block
    embed = 2 * 8 * (3 * 2 * 16 * 16) * 48  # the tubelet embedding of the 8 grid tokens
    target = embed + 2 * (8 * enc_token + 4 * 8 * 8 * 48)
    encoder = embed + 2 * ((2 + 3) * enc_token + 4 * (2 * 2 + 3 * 3) * 48)
    pred_token = 2 * (4 * 32 * 32 + 2 * 32 * 128)
    predictor = 2 * 48 * 32 * (5 + 5) + (6 + 4) * pred_token + 4 * (6 * 6 + 4 * 4) * 32
    assert (flops.target_forward, flops.encoder_forward, flops.predictor_forward) == (
        target,
        encoder,
        predictor,
    )
    assert flops.total == target + 3 * (encoder + predictor) == 8_151_168


def test_padded_layout_rows_count_the_padding_of_the_batch_maximum():
    m = MaskBatch.from_lists(
        [torch.tensor([0, 1]), torch.tensor([2, 3, 4])], [torch.tensor([5, 6, 7, 8]), torch.tensor([9])]
    )
    # Kc = 3, Kt = 4 for B = 2: encoder 2 x 3 rows, predictor 2 x (3 + 4); real: 5 context, 5 target.
    assert STEP["padded_layout_rows"]([m, m]) == (2 * (2 * 3 + 2 * 7), 2 * (2 * 5 + 5))


def test_bench_step_prints_one_json_line(capsys):
    argv = ["bench", "step", "--model", "vit_test", "--frames", "4", "--crop", "32", "--batch", "2"]
    argv += [
        "--pred-width",
        "32",
        "--pred-depth",
        "1",
        "--pred-heads",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["tokens_per_clip"] == 2 * 2 * 2 and row["batch"] == 2
    assert row["ms_per_step"] > 0 and row["flop_per_step"] > 0 and row["mfu"] is None  # no GPU peak on CPU
    assert len(row["context_tokens_per_batch"]) == 2  # one entry per default mask configuration
    assert row["padding_fraction"] == 0.0 and 0.0 <= row["padded_layout_padding_fraction"] < 1.0
    assert row["dense_tflops"] > 0 and row["dense_flop"] > 0 and row["efficiency"] > 0


def test_step_pair_runs_two_checkouts_in_turn(capsys):
    root = str(Path(__file__).resolve().parents[1])
    argv = ["--before", root, "--after", root, "--model", "vit_test", "--frames", "4", "--crop", "32"]
    argv += ["--batch", "2", "--rounds", "2", "--warmup", "0", "--json"]
    runpy.run_path(str(Path(root) / "benchmarks" / "step_pair.py"), run_name="pair")["main"](argv)
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["before_ms"] > 0 and row["after_ms"] > 0 and len(row["round_speedups"]) == 2
    assert row["speedup"] == pytest.approx(row["before_ms"] / row["after_ms"], rel=1e-2)
    assert row["before_page_faults"] >= 0 and row["after_page_faults"] >= 0


def test_step_pair_gives_each_side_its_overrides():
    """--before-set / --after-set reach only their side's config: a bad value stops that worker (the before
    side, with none, started: its "ready" came first)."""
    root = str(Path(__file__).resolve().parents[1])
    pair = runpy.run_path(str(Path(root) / "benchmarks" / "step_pair.py"), run_name="pair")["main"]
    argv = ["--before", root, "--after", root, "--model", "vit_test", "--frames", "4", "--crop", "32"]
    argv += ["--batch", "2", "--rounds", "1", "--warmup", "0", "--json"]
    with pytest.raises(RuntimeError, match="did not start"):
        pair([*argv, "--before-set", "train.host_memory=release", "--after-set", "train.host_memory=hold"])


def test_bench_step_with_lengths_compares_a_mixed_batch_with_one_length(capsys):
    """`vjepa bench step --lengths ...` runs the mixed-length comparison: both batches hold the same grid
    tokens, and the FLOP rates and their ratio are reported (no timing is asserted)."""
    args = "--model vit_test --frames 4 --crop 64 --lengths 4,2,1 --counts 2,2,4 --pred-width 32"
    args += " --pred-depth 1 --pred-heads 2 --steps 1 --warmup 0 --json"
    assert main(["bench", "step", *args.split()]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bench"] == "step_mixed" and out["mixed_grid_tokens"] == out["single_grid_tokens"] == 160
    assert out["mixed_tflops"] > 0 and out["single_tflops"] > 0 and out["mixed_vs_single"] > 0


@pytest.mark.slow
def test_gpu_check_script_runs_its_steps_in_dry_mode(tmp_path):
    """benchmarks/gpu_check.sh with GPU_CHECK_DRY=1 (a tiny model, on this machine) writes its three files:
    one summary line per run, the step runs holding the bench's own figures, the xformers runs saying why
    they were skipped where xformers is missing."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, GPU_CHECK_DRY="1", OUT=str(tmp_path), PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh")], env=env, check=True, capture_output=True
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.txt", "gpu_tests.txt", "summary.jsonl"]
    rows = {r["run"]: r for r in map(json.loads, (tmp_path / "summary.jsonl").read_text().splitlines())}
    assert rows["gpu_tests"]["rc"] == "0"
    for ckpt in ("off", "on"):
        sdpa = rows[f"step_sdpa_ckpt_{ckpt}"]
        assert sdpa["ms_per_step"] > 0 and sdpa["attention"] == "sdpa" and sdpa["grad_ckpt"] == (ckpt == "on")
        xformers = rows[f"step_xformers_ckpt_{ckpt}"]
        assert "ms_per_step" in xformers or "skipped" in xformers
