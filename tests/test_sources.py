"""Enumerating samples: shard folders/globs/brace patterns, GNU tar shards, CSV lists, video folders."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import write_sample_folder

from data_pipelines import sources
from data_pipelines.bad_samples import BadSampleError
from data_pipelines.config import SourceConfig
from data_pipelines.loader import build_loader
from data_pipelines.plan import EpochPlan
from data_pipelines.sources import Member, expand_braces, load_source, shard_paths


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


def test_a_named_pipe_in_a_csv_list_is_skipped_not_waited_for(
    tmp_path: Path, numbered_mp4: bytes, data_config, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading a FIFO blocks until a writer opens it; it used to hang the worker forever."""
    for i in range(3):
        (tmp_path / f"a{i}.mp4").write_bytes(numbered_mp4)
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "list.csv").write_text("a0.mp4 0\npipe.mp4 1\na1.mp4 2\na2.mp4 3\n")
    cfg = data_config(tmp_path / "list.csv", batch_size=2, drop_last=False, max_skip_fraction=1.0)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="data_pipelines.dataset"):
        loader = build_loader(cfg, mask_generator=None, seed=0)
        keys = sorted(k for b in loader for k in b.keys)
    assert time.perf_counter() - start < 10
    assert keys == [str(tmp_path / f"a{i}.mp4") for i in range(3)]
    assert loader.stats()["skipped"] == 1 and "named pipe" in caplog.text


def test_a_read_that_stalls_is_given_up_after_the_bound(
    tmp_path: Path, numbered_mp4: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled mount: the read (not only the decode) is bounded, and a stuck read's shard is reopened."""
    (tmp_path / "a.mp4").write_bytes(numbered_mp4)
    (tmp_path / "list.csv").write_text("a.mp4 0\n")
    source = load_source(SourceConfig(path=str(tmp_path / "list.csv")), "s")
    unit, entry = source.units[0], source.units[0].samples[0]
    stall = threading.Event()
    real = sources._read_file
    monkeypatch.setattr(sources, "_read_file", lambda path: stall.wait(20) and real(path))
    reader = sources.SampleReader(timeout_s=0.3)
    start = time.perf_counter()
    with pytest.raises(sources.ReadTimeoutError, match="longer than 0.3 s"):
        reader.read(unit, entry)
    assert time.perf_counter() - start < 5
    stall.set()  # the stuck thread finishes; the reader reads on with a fresh one
    assert reader.read(unit, entry).data == numbered_mp4


def test_a_zero_byte_shard_among_good_ones_is_skipped_with_a_warning(
    shard_dir: Path, tmp_path: Path, data_config, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("shard-000000.tar", "shard-000001.tar"):
        shutil.copy(shard_dir / name, tmp_path / name)
    (tmp_path / "shard-000002.tar").write_bytes(b"")  # a killed writer's leftover
    with caplog.at_level(logging.WARNING, logger="data_pipelines.sources"):
        source = load_source(SourceConfig(path=str(tmp_path)), "data.sources.0")
    assert [Path(u.shard).name for u in source.units] == ["shard-000000.tar", "shard-000001.tar"]
    assert "shard-000002.tar" in caplog.text and "skipping" in caplog.text
    loader = build_loader(data_config(tmp_path), mask_generator=None, seed=0)
    assert len({k for b in loader for k in b.keys}) == 16
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    (tmp_path / "shard-000001.tar").write_bytes(b"")
    with pytest.raises(ValueError, match=r"data\.sources\.0\.path: no samples found"):
        load_source(SourceConfig(path=str(tmp_path)), "data.sources.0")


def test_a_member_cut_off_by_truncation_is_reported_as_cut_off(shard_dir: Path, tmp_path: Path) -> None:
    data = (shard_dir / "shard-000000.tar").read_bytes()
    source = load_source(SourceConfig(path=str(shard_dir / "shard-000000.tar")), "s")
    last = source.units[0].samples[-1].video
    assert isinstance(last, Member)
    (tmp_path / "cut.tar").write_bytes(data[: last.offset + last.size // 2])  # in the last video's data
    unit = load_source(SourceConfig(path=str(tmp_path / "cut.tar")), "s").units[0]
    assert len(unit.samples) == 8
    reader = sources.SampleReader()
    with pytest.raises(BadSampleError, match=r"cut off by the shard's truncation: \d+ of \d+ bytes"):
        reader.read(unit, unit.samples[-1])
    assert len(reader.read(unit, unit.samples[0]).data) > 0


def test_a_video_file_given_as_a_source(tmp_path: Path, numbered_mp4: bytes, data_config) -> None:
    """It was read as a CSV list and failed as undecodable UTF-8."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(numbered_mp4)
    loader = build_loader(data_config(video, batch_size=1), mask_generator=None, seed=0)
    assert [b.keys for b in loader] == [[str(video)]]
    with pytest.raises(
        ValueError, match=r"data\.sources\.0\.path: .*clip\.mp4: a video file, not a CSV list"
    ):
        load_source(SourceConfig(path=str(video), kind="csv"), "data.sources.0")
    (tmp_path / "list.csv").write_bytes(numbered_mp4)  # binary data under a CSV name
    with pytest.raises(ValueError, match=r"data\.sources\.0\.path: .*list\.csv: not a text CSV list"):
        load_source(SourceConfig(path=str(tmp_path / "list.csv")), "data.sources.0")
