"""Enumerating samples: shard folders/globs/brace patterns, GNU tar shards, CSV lists, video folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_sample_folder

from data_pipelines.config import SourceConfig
from data_pipelines.loader import build_loader
from data_pipelines.plan import EpochPlan
from data_pipelines.sources import expand_braces, load_source, shard_paths


def _keys_and_labels(loader) -> dict[str, int]:
    out: dict[str, int] = {}
    for batch in loader:
        out.update(zip(batch.keys, batch.labels.tolist()))
    return out


def test_brace_expansion() -> None:
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/x-{8..9}") == ["a/x-8", "a/x-9", "b/x-8", "b/x-9"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_shard_folder_glob_and_braces_name_the_same_shards(shard_dir: Path) -> None:
    by_folder = shard_paths(str(shard_dir), "k")
    assert len(by_folder) == 4
    assert shard_paths(str(shard_dir / "shard-*.tar"), "k") == by_folder
    assert shard_paths(str(shard_dir / "shard-{000000..000003}.tar"), "k") == by_folder
    with pytest.raises(ValueError, match=r"data\.sources\.0\.path.*shard-000008"):
        load_source(SourceConfig(path=str(shard_dir / "shard-{000008..000009}.tar")), "data.sources.0")


def test_gnu_tar_shards_read(tmp_path: Path, numbered_mp4: bytes, data_config) -> None:
    keys = [f"clip{i}" for i in range(6)]
    folder = write_sample_folder(
        tmp_path / "src", dict.fromkeys(keys, numbered_mp4), {k: i for i, k in enumerate(keys)}
    )
    (tmp_path / "shards").mkdir()
    subprocess.run(["tar", "-cf", str(tmp_path / "shards" / "gnu.tar"), "-C", str(folder), "."], check=True)
    source = load_source(SourceConfig(path=str(tmp_path / "shards")), "s")
    assert sorted(e.key for e in source.units[0].samples) == [f"gnu/{k}" for k in keys]
    loader = build_loader(data_config(tmp_path / "shards", batch_size=2), mask_generator=None, seed=0)
    assert _keys_and_labels(loader) == {f"gnu/{k}": i for i, k in enumerate(keys)}


def test_csv_list_reads(tmp_path: Path, numbered_mp4: bytes, data_config) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    lines = []
    for i in range(4):
        (videos / f"a{i}.mp4").write_bytes(numbered_mp4)
        lines.append(f"videos/a{i}.mp4 {10 + i}")  # relative to the CSV's folder
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    loader = build_loader(data_config(tmp_path / "list.csv", batch_size=2), mask_generator=None, seed=0)
    assert _keys_and_labels(loader) == {str(videos / f"a{i}.mp4"): 10 + i for i in range(4)}


def test_video_folder_reads_with_class_labels(tmp_path: Path, numbered_mp4: bytes, data_config) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / "root" / cls).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "root" / cls / f"{i}.mp4").write_bytes(numbered_mp4)
    loader = build_loader(data_config(tmp_path / "root", batch_size=2), mask_generator=None, seed=0)
    assert _keys_and_labels(loader) == {"cat/0.mp4": 0, "cat/1.mp4": 0, "dog/0.mp4": 1, "dog/1.mp4": 1}


def test_source_weights_scale_an_epoch(shard_dir: Path) -> None:
    heavy = load_source(SourceConfig(path=str(shard_dir / "shard-00000{0,1}.tar"), weight=2.0), "a")
    light = load_source(SourceConfig(path=str(shard_dir / "shard-00000{2,3}.tar"), weight=0.5), "b")
    chosen = set()
    for epoch in range(6):
        plan = EpochPlan(
            [heavy, light],
            epoch=epoch,
            seed=0,
            rank=0,
            world_size=1,
            videos_per_batch=4,
            shuffle=True,
            shuffle_buffer=4,
            drop_last=True,
        )
        assert plan.num_samples == 2 * 16 + 8  # each heavy shard twice, one of the two light shards
        shards = [plan.lookup(int(p))[0].shard for p in plan.rank_order]
        assert sum(s.endswith(("0.tar", "1.tar")) for s in shards) == 32
        chosen.add(next(s for s in shards if s.endswith(("2.tar", "3.tar"))))
    assert len(chosen) == 2  # the light source's half changes between epochs


@pytest.mark.parametrize(
    "code",
    [
        "import data_pipelines.sources",
        "import data_pipelines.shard_writer, data_pipelines.synthetic",
        "import vjepa.cli; vjepa.cli.build_parser()",  # what `vjepa --help` runs
    ],
)
def test_reading_sources_and_the_cli_do_not_load_pyav(code: str) -> None:
    check = f"{code}\nimport sys\nassert 'av' not in sys.modules, 'PyAV was imported'"
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
