"""One epoch over a corpus of good and bad videos, as GNU-tar shards and as a CSV list, at several batch
sizes and worker counts: every good video is delivered exactly once and every bad one counted once."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import audio_only_mp4, numbered_frames, rotated_mp4

from data_pipelines.config import DataConfig, SourceConfig
from data_pipelines.encode import encode_video
from data_pipelines.loader import build_loader
from data_pipelines.sources import Member, index_tar


def _encode(
    frames: np.ndarray, codec: str, container: str, *, pix_fmt: str = "yuv420p", pts: list[int] | None = None
) -> bytes:
    """Frames [T, H, W, 3] in any codec/container/pixel format PyAV writes, at 24 fps (or at `pts`)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i if pts is None else pts[i]
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _corpus() -> tuple[dict[str, tuple[bytes, str]], dict[str, tuple[bytes, str]]]:
    """(good, bad): name -> (file bytes, extension)."""
    h264 = encode_video(numbered_frames(), fps=24.0, gop=8)
    vfr_pts = np.cumsum([0] + [1 + (i % 3 == 0) for i in range(23)]).tolist()  # gaps of 1 and 2 frames
    good = {
        "h264a": (h264, "mp4"),
        "h264b": (h264, "mp4"),
        "h264c": (h264, "mp4"),
        "mpeg4": (_encode(numbered_frames(), "mpeg4", "avi"), "avi"),
        "vp9": (_encode(numbered_frames(), "libvpx-vp9", "matroska"), "mkv"),
        "mjpeg": (_encode(numbered_frames(), "mjpeg", "matroska", pix_fmt="yuvj420p"), "mkv"),
        "odd33x47": (
            _encode(numbered_frames(height=33, width=47), "libx264", "mp4", pix_fmt="yuv444p"),
            "mp4",
        ),
        "w50": (
            encode_video(numbered_frames(height=34, width=50)),
            "mp4",
        ),  # decord's width bug: PyAV reads it
        "oneframe": (encode_video(numbered_frames(frames=1)), "mp4"),  # padded (data.pad_short)
        "rotated": (rotated_mp4(90, frames=8), "mp4"),
        "vfr": (_encode(numbered_frames(), "libx264", "mp4", pts=vfr_pts), "mp4"),
    }
    bad = {
        "zero": (b"", "mp4"),
        "random": (np.random.default_rng(0).bytes(3000), "mp4"),
        "truncated": (h264[: len(h264) // 2], "mp4"),
        "text": (b"this is not a video\n" * 20, "mp4"),
        "audio": (audio_only_mp4(), "mp4"),
    }
    return good, bad


def _write(folder: Path, items: dict[str, tuple[bytes, str]]) -> Path:
    folder.mkdir(parents=True)
    for i, (name, (data, ext)) in enumerate(items.items()):
        (folder / f"{name}.{ext}").write_bytes(data)
        (folder / f"{name}.json").write_text(json.dumps({"label": i % 3}))
    return folder


def _gnu_tar(shard: Path, folder: Path) -> Path:
    subprocess.run(["tar", "--format=gnu", "-cf", str(shard), "-C", str(folder), "."], check=True)
    return shard


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, set[str], set[str]]]:
    """source kind -> (path, good keys, bad keys)."""
    root = tmp_path_factory.mktemp("mixed")
    good, bad = _corpus()
    # shards: the corpus split over two GNU-tar shards, a 0-byte shard, and a shard cut inside its last video
    shards = root / "shards"
    shards.mkdir()
    names = list({**good, **bad})
    halves = (names[::2], names[1::2])
    for i, half in enumerate(halves):
        items = {n: good.get(n) or bad[n] for n in half}
        _gnu_tar(shards / f"part{i}.tar", _write(root / f"part{i}", items))
    (shards / "part2.tar").write_bytes(b"")
    whole = _gnu_tar(
        root / "part3.tar", _write(root / "part3", {f"extra{i}": good["h264a"] for i in range(3)})
    )
    last = max((e for e in index_tar(str(whole), "k").samples), key=lambda e: e.video.offset)  # type: ignore[union-attr]
    assert isinstance(last.video, Member)
    (shards / "part3.tar").write_bytes(whole.read_bytes()[: last.video.offset + last.video.size // 2])
    shard_good = {f"part{i}/{n}" for i, half in enumerate(halves) for n in half if n in good}
    shard_good |= {f"part3/extra{i}" for i in range(3)} - {last.key}
    shard_bad = {f"part{i}/{n}" for i, half in enumerate(halves) for n in half if n in bad}
    shard_bad.add(last.key)
    # a CSV list of the same files, plus a named pipe and a missing file
    files = _write(root / "files", {**good, **bad})
    os.mkfifo(files / "pipe.mp4")
    lines = [f"{n}.{ext} {i % 3}" for i, (n, (_, ext)) in enumerate({**good, **bad}.items())]
    (files / "list.csv").write_text("\n".join([*lines, "pipe.mp4 0", "missing.mp4 0"]) + "\n")
    csv_good = {str(files / f"{n}.{ext}") for n, (_, ext) in good.items()}
    csv_bad = {str(files / f"{n}.{ext}") for n, (_, ext) in bad.items()} | {
        str(files / "pipe.mp4"),
        str(files / "missing.mp4"),
    }
    return {"shards": (shards, shard_good, shard_bad), "csv": (files / "list.csv", csv_good, csv_bad)}


def _skipped_keys(stats: dict) -> Counter:
    return Counter(k for shard in stats["skipped_by_shard"].values() for k in shard["keys"])


@pytest.mark.parametrize("kind", ["shards", "csv"])
@pytest.mark.parametrize("workers", [0, 2])
def test_one_epoch_delivers_every_good_video_once_and_counts_every_bad_one_once(
    mixed: dict, kind: str, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    path, good, bad = mixed[kind]
    for batch_size in (1, 3, 8):
        cfg = DataConfig(
            dataset="files",
            sources=[SourceConfig(path=str(path))],
            frames_per_clip=4,
            frame_step=2,
            crop_size=16,
            batch_size=batch_size,
            num_workers=workers,
            drop_last=False,
            decode_timeout_s=20.0,
            max_skip_fraction=1.0,
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            loader = build_loader(cfg, mask_generator=None, seed=0)
            batches = list(loader)
        assert kind != "shards" or "part2.tar holds 0 bytes" in caplog.text  # the 0-byte shard, named
        if workers == 0:  # (workers log in their own processes)
            reason = "cut off by the shard's truncation" if kind == "shards" else "pipe.mp4 is a named pipe"
            assert reason in caplog.text
        delivered = Counter(k for b in batches for k in b.keys)
        stats = loader.stats()
        where = f"{kind}, {workers} workers, batch {batch_size}"
        assert delivered == Counter(good), where
        assert (stats["skipped"], stats["samples_seen"]) == (len(bad), len(good) + len(bad)), where
        assert _skipped_keys(stats) == Counter(bad), where
        assert all(0 < b.clips.shape[0] <= batch_size for b in batches), where
