"""The shared helpers: device resolution, atomic writes, deep merge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vjepa.utils import atomic_write, deep_merge, resolve_device


def test_resolve_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match=r"train\.device: must be one of"):
        resolve_device("tpu", key="train.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_resolve_device_cuda_without_a_device_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"--device=cuda but no CUDA device"):
        resolve_device("cuda", key="--device")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.txt"
    with atomic_write(path) as tmp:
        tmp.write_text("first")
        assert not path.exists()  # nothing visible until the block ends
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "first" and not list(path.parent.glob("*.tmp"))


def test_deep_merge() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "raw": {}}
    merged = deep_merge(base, {"a": {"c": [3]}, "raw": {"x": {"y": 1}}}, strict=True, open_keys=("raw",))
    assert merged == {"a": {"b": 1, "c": [3]}, "raw": {"x": {"y": 1}}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "raw": {}}  # inputs untouched
    with pytest.raises(ValueError, match=r"'a\.d'"):
        deep_merge(base, {"a": {"d": 1}}, strict=True)
    assert deep_merge(base, {"new": 1})["new"] == 1  # not strict: new keys are added


def test_atomic_writes_of_one_file_by_two_processes_do_not_collide(tmp_path: Path) -> None:
    # Two ranks finishing a feature extraction together both write its index.json: each writer needs its own
    # temporary file, or one renames the other's away and fails on a file that vanished.
    path, go = tmp_path / "index.json", tmp_path / "go"
    script = (
        "import pathlib, sys, time\nfrom vjepa.utils import atomic_write\n"
        "print(flush=True)\n"  # imported: ready
        "while not pathlib.Path(sys.argv[3]).exists():\n    time.sleep(0.001)\n"
        "for i in range(500):\n"
        "    with atomic_write(sys.argv[1], fsync=False) as tmp:\n"
        "        tmp.write_text(sys.argv[2] * 1000)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), c, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for c in "ab"
    ]
    for p in procs:
        p.stdout.readline()
    go.touch()  # both start writing together
    errors = [p.communicate()[1].decode()[-300:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert path.read_text() in ("a" * 1000, "b" * 1000) and not list(tmp_path.glob("*.tmp"))
