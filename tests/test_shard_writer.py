"""ShardWriter (tar layout, rollover, atomic finish) and pack_videos (CSV / folder input, bad files skipped
and reported, optional re-encode)."""

from __future__ import annotations

import io
import json
import tarfile

import av
import numpy as np
import pytest

from data_pipelines.encode import encode_video, probe_video
from data_pipelines.shard_writer import ShardWriter, pack_videos, safe_key


def tiny_video(seed: int, frames: int = 12, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    video = np.full((frames, size, size, 3), rng.integers(30, 220, 3), dtype=np.uint8)
    for t in range(frames):
        video[t, 8:16, t : t + 8] = 255
    return encode_video(video, fps=12)


def tar_members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def samples(out_dir) -> dict[str, dict]:
    """key -> {ext: bytes} over all shards in a folder, read with plain tarfile."""
    result: dict[str, dict] = {}
    for shard in sorted(out_dir.glob("*.tar")):
        for name, data in tar_members(shard):
            key, ext = name.split(".", 1)
            result.setdefault(key, {})[ext] = data
    return result


def test_safe_key_removes_dots_and_odd_characters():
    assert safe_key(3, "my clip.v2 (final)") == "000003_my_clip_v2_final"
    assert safe_key(12, "...") == "000012"


def test_shard_writer_rolls_over_and_finishes_atomically(tmp_path):
    with ShardWriter(tmp_path, shard_size=2, prefix="part") as writer:
        for i in range(5):
            writer.write(f"k{i}", b"x" * i, ext="bin", meta={"label": i % 2})
            assert all(p.suffix == ".tar" for p in writer.shards)  # finished shards are renamed
        assert len(list(tmp_path.glob("*.tmp"))) == 1  # the open shard is still a .tmp
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        "part-000000.tar",
        "part-000001.tar",
        "part-000002.tar",
    ]
    names = [name for name, _ in tar_members(tmp_path / "part-000000.tar")]
    assert names == ["k0.bin", "k0.json", "k0.cls", "k1.bin", "k1.json", "k1.cls"]
    got = samples(tmp_path)
    assert got["k4"]["bin"] == b"xxxx" and json.loads(got["k4"]["json"]) == {"label": 0}


def test_shard_writer_rejects_bad_and_duplicate_keys(tmp_path):
    writer = ShardWriter(tmp_path)
    for bad in ("a.b", "a/b", ""):
        with pytest.raises(ValueError, match="key"):
            writer.write(bad, b"")
    writer.write("a", b"")
    with pytest.raises(ValueError, match="duplicate"):
        writer.write("a", b"")
    writer.close()


def test_shard_writer_refuses_old_shards_unless_overwrite(tmp_path):
    with ShardWriter(tmp_path, shard_size=1) as writer:
        writer.write("a", b"1")
        writer.write("b", b"2")
    with pytest.raises(ValueError, match="already holds 2"):
        ShardWriter(tmp_path)
    with ShardWriter(tmp_path, overwrite=True) as writer:
        writer.write("c", b"3")
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar"] and list(samples(tmp_path)) == ["c"]


def test_shard_writer_leaves_no_partial_shard_on_error(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path) as writer:
        writer.write("a", b"123")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def video_folder(tmp_path):
    root = tmp_path / "videos"
    for rel, seed in (("cat/a.mp4", 0), ("cat/b b.mp4", 1), ("dog/c.v2.mp4", 2)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(tiny_video(seed))
    (root / "dog" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "dog" / "empty.mp4").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not a video")
    return root


def test_pack_folder_labels_by_subfolder_and_skips_bad_files(video_folder, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "shards"
    summary = pack_videos(video_folder, out, shard_size=2, workers=2)
    assert (summary["written"], summary["skipped"], summary["shards"]) == (3, 2, 2)
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in summary["skipped_files"]}
    assert reasons.keys() == {"corrupt.mp4", "empty.mp4"}
    assert "0 bytes" in reasons["empty.mp4"] and reasons["corrupt.mp4"].startswith("ValueError")
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"]
    assert json.loads((out / "summary.json").read_text())["written"] == 3

    metas = {}
    for sample in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False):
        assert "." not in sample["__key__"]
        meta = json.loads(sample["json"])
        assert probe_video(sample["mp4"])["frames"] == meta["frames"] == 12
        metas[meta["source"].split("/")[-1]] = meta
    assert {k: (m["label"], m["class"]) for k, m in metas.items()} == {
        "a.mp4": (0, "cat"),
        "b b.mp4": (0, "cat"),
        "c.v2.mp4": (1, "dog"),
    }


def test_pack_flat_folder_has_no_labels(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.MP4").write_bytes(tiny_video(0))
    summary = pack_videos(tmp_path / "in", tmp_path / "out", workers=1)
    assert summary["written"] == 1 and summary["classes"] == []
    (meta,) = [json.loads(s["json"]) for s in samples(tmp_path / "out").values()]
    assert meta["label"] == -1


def test_pack_csv_resolves_relative_paths_and_spaces(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "one clip.mp4").write_bytes(tiny_video(0))
    (tmp_path / "clips" / "two.mp4").write_bytes(tiny_video(1))
    absolute = tmp_path / "clips" / "two.mp4"
    csv = tmp_path / "list.csv"
    csv.write_text(f"clips/one clip.mp4 3\n{absolute} 5\n\nclips/missing.mp4 1\n")
    summary = pack_videos(csv, tmp_path / "out", workers=1)
    assert (summary["written"], summary["skipped"]) == (2, 1)
    assert summary["skipped_files"][0]["path"].endswith("missing.mp4")
    got = samples(tmp_path / "out")
    assert sorted(got) == ["000000_one_clip", "000001_two"]
    assert [json.loads(got[k]["json"])["label"] for k in sorted(got)] == [3, 5]
    assert got["000000_one_clip"]["cls"] == b"3"


def test_pack_csv_with_a_bad_line_names_file_and_line(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("a.mp4 1\nb.mp4 dog\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        pack_videos(csv, tmp_path / "out")


def test_pack_rejects_missing_input(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        pack_videos(tmp_path / "nope", tmp_path / "out")


def test_pack_reencode_shortens_keyframe_interval_and_resizes(tmp_path):
    (tmp_path / "in").mkdir()
    source = tiny_video(0, frames=24, size=48)
    assert probe_video(source)["keyframes"] == 1
    (tmp_path / "in" / "v.mp4").write_bytes(source)
    summary = pack_videos(tmp_path / "in", tmp_path / "out", reencode=True, gop=4, short_side=16, workers=1)
    assert summary["written"] == 1
    (sample,) = samples(tmp_path / "out").values()
    info = probe_video(sample["mp4"])
    assert (info["frames"], info["keyframes"], info["height"], info["width"]) == (24, 6, 16, 16)
    with av.open(io.BytesIO(sample["mp4"])) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_cli_shards(video_folder, tmp_path, capsys):
    cli = pytest.importorskip("vjepa.cli")
    out = tmp_path / "cli"
    assert cli.main(["shards", "--input", str(video_folder), "--out", str(out), "--workers", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    summary = json.loads(lines[-1])
    assert (summary["written"], summary["skipped"], summary["shards"]) == (3, 2, 1)
