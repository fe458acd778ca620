"""Extraction in parts: a SIGKILLed `vjepa extract` resumes without redoing finished parts and ends with the
uninterrupted run's features; 1 and 2 ranks (under torchrun) give identical features; a folder made with
other settings is refused; bad samples are counted once; dtypes and pooling on disk; the progress bar."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ports import free_port
from tiny import TINY_RUN

from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.cli import main
from vjepa.config import load_config
from vjepa.eval.extract import load_features

REPO = Path(__file__).resolve().parents[1]
VIDEOS = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parts_data")
    write_synthetic_dataset(out, videos=VIDEOS, val_videos=4, classes=4, frames=8, size=32, seed=1, workers=1)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vjepa.train.trainer import train

    out = tmp_path_factory.mktemp("parts_run")
    train(load_config(None, [*TINY_RUN, "train.steps=1", "checkpoint.every_steps=1", f"train.out_dir={out}"]))
    return out


def extract_argv(run: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(run), "--data", str(data), "--out", str(out), "--batch", "3", *extra]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_cli(argv: list[str], *, ranks: int = 1) -> subprocess.CompletedProcess:
    if ranks == 1:
        cmd = [sys.executable, "-m", "vjepa", "extract", *argv]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
        launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        cmd = [*launcher, "-m", "vjepa", "extract", *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def assert_same_features(a: Path, b: Path) -> None:
    fa, fb = load_features(a), load_features(b)
    assert fa.keys == fb.keys and torch.equal(fa.labels, fb.labels)
    assert torch.equal(fa.tokens, fb.tokens)


def test_a_killed_extraction_resumes_without_redoing_parts(run, data, tmp_path):
    reference = tmp_path / "reference"
    run_cli(extract_argv(run, data, reference, "--part-size", "1"))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vjepa", "extract", *extract_argv(run, data, killed, "--part-size", "1")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = killed / "train"
    deadline = time.monotonic() + 120
    while not list(folder.glob("part-*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat() for p in folder.glob("part-*.json")}
    assert done and not (folder / "index.json").exists(), "the kill came too late to test a resume"
    assert len(done) < VIDEOS
    with pytest.raises(ValueError, match="not finished"):
        load_features(folder)
    out = json.loads(run_cli(extract_argv(run, data, killed, "--part-size", "1")).stdout.splitlines()[-1])
    assert out["complete"] == {"train": True, "val": True} and out["videos"]["train"] == VIDEOS
    for path, before in done.items():  # finished parts were not recomputed
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path.name
    for split in ("train", "val"):
        assert_same_features(reference / split, killed / split)


def test_one_and_two_ranks_give_identical_features(run, data, tmp_path):
    run_cli(extract_argv(run, data, tmp_path / "one", "--part-size", "7"))
    proc = run_cli(extract_argv(run, data, tmp_path / "two", "--part-size", "7"), ranks=2)
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["rank"] for s in summaries) == [0, 1] and {s["world"] for s in summaries} == {2}
    parts = sorted((tmp_path / "two" / "train").glob("part-*.pt"))
    assert len(parts) == 6  # 40 videos in parts of 7, ranks 0 and 1 taking every other part
    for split in ("train", "val"):
        assert_same_features(tmp_path / "one" / split, tmp_path / "two" / split)


def test_a_folder_from_other_settings_is_refused(run, data, tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["extract", *extract_argv(run, data / "val", out, "--part-size", "2")]) == 0
    capsys.readouterr()
    assert main(["extract", *extract_argv(run, data / "val", out, "--part-size", "2", "--frames", "2")]) == 2
    err = capsys.readouterr().err
    assert str(out / "features") in err and "frames: 4 -> 2" in err
    assert main(["extract", *extract_argv(run, data / "val", out, "--part-size", "3")]) == 2
    assert "part_size: 2 -> 3" in capsys.readouterr().err


def test_dtypes_pooling_and_the_progress_bar(run, data, tmp_path, capsys):
    argv = extract_argv(run, data / "val", tmp_path / "bf", "--dtype", "bfloat16", "--pool", "mean")
    assert main(["extract", *argv, "--progress", "on", "extract.part_size=3"]) == 0
    captured = capsys.readouterr()
    assert "videos/s" in captured.err and "extract features 4/4 videos" in captured.err
    summary = json.loads(captured.out.splitlines()[-1])
    assert summary["shape"]["features"] == [4, 1, 1, 48] and summary["dtype"] == "bfloat16"
    pooled = load_features(tmp_path / "bf" / "features")
    assert pooled.tokens.dtype == torch.bfloat16 and pooled.meta["pool"] == "mean"
    assert main(["extract", *extract_argv(run, data / "val", tmp_path / "full"), "--dtype", "float32"]) == 0
    full = load_features(tmp_path / "full" / "features")
    assert full.tokens.dtype == torch.float32
    torch.testing.assert_close(pooled.tokens[:, :, 0].float(), full.tokens.mean(2), atol=2e-2, rtol=0)


def test_bad_samples_are_counted_once_across_a_resume(run, numbered_mp4, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    lines = []
    for i in range(6):
        name = f"v{i}.mp4"
        (videos / name).write_bytes(b"not a video" if i in (1, 4, 5) else numbered_mp4)
        lines.append(f"{name} {i % 2}")
    (videos / "list.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    argv = ["extract", *extract_argv(run, videos / "list.csv", out, "--part-size", "2", "--frames", "4")]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert first["videos"]["features"] == 3 and first["skipped"]["features"] == 3
    (out / "features" / "index.json").unlink()  # as if the last rank died before writing it
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["skipped"] == first["skipped"] and again["videos"] == first["videos"]
    features = load_features(out / "features")
    assert [Path(k).name for k in features.keys] == ["v0.mp4", "v2.mp4", "v3.mp4"]
    assert sorted(Path(k).name for k in features.meta["skipped"]) == ["v1.mp4", "v4.mp4", "v5.mp4"]
