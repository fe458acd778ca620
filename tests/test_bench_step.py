"""The step benchmark's FLOP count and its JSON output (no timing is asserted)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from vjepa.cli import main

STEP = runpy.run_path(
    str(Path(__file__).resolve().parents[1] / "benchmarks" / "step.py"), run_name="step_bench"
)


def test_vit_large_forward_flops_match_the_published_figure():
    # REFERENCE.md: ViT-L/16 at 16x224 (1568 tokens) costs ~1.19 TFLOP forward per clip.
    flops = STEP["block_flops"](torch.tensor([1568]), 1024, 4096, 24)
    assert flops / 1e12 == pytest.approx(1.19, rel=0.01)


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
