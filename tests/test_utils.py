"""The shared helpers: device resolution, atomic writes, deep merge."""

from __future__ import annotations

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
