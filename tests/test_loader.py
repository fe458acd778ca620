"""The video loader: clip content, rank/worker splitting, exact resume, bad samples, config errors."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import audio_only_mp4, frame_numbers, numbered_frames, rotated_mp4

from data_pipelines import decode
from data_pipelines.bad_samples import TooManyBadSamplesError
from data_pipelines.chain import Chain
from data_pipelines.config import DataConfig, SourceConfig
from data_pipelines.encode import encode_video
from data_pipelines.loader import build_loader
from data_pipelines.masking.generator import MaskGenerator
from data_pipelines.masking.spec import default_mask_specs
from data_pipelines.shard_writer import ShardWriter


def _masks() -> MaskGenerator:
    return MaskGenerator(default_mask_specs(), grid=(2, 2, 2), seed=3)


def _all_keys(shard_dir: Path) -> set[str]:
    return {f"shard-{i // 8:06d}/v{i:03d}" for i in range(32)}


def test_batches_hold_the_sampled_frames(shard_dir: Path, data_config) -> None:
    cfg = data_config(shard_dir, crop_scale=(1.0, 1.0), crop_aspect=(1.0, 1.0), hflip=0.0, frame_step=3)
    loader = build_loader(cfg, mask_generator=_masks(), seed=0)
    assert len(loader) == 8
    batch = next(iter(loader))
    assert batch.clips.shape == (4, 3, 4, 16, 16) and batch.clips.dtype == torch.uint8
    assert batch.labels.dtype == torch.int64
    assert batch.labels.tolist() == [int(k[-3:]) % 4 for k in batch.keys]
    assert len(batch.masks) == 2 and all(m.batch_size == 4 for m in batch.masks)
    numbers = frame_numbers(batch.clips.permute(0, 2, 3, 4, 1).numpy())  # [B, T]: the source frame indices
    assert np.all(np.diff(numbers, axis=1) == 3) and numbers.min() >= 0 and numbers.max() < 24


def test_several_clips_per_video_are_consecutive_rows(shard_dir: Path, data_config) -> None:
    cfg = data_config(shard_dir, num_clips=2, crop_scale=(1.0, 1.0), crop_aspect=(1.0, 1.0))
    batch = next(iter(build_loader(cfg, mask_generator=None, seed=0)))
    assert (
        batch.keys[0] == batch.keys[1] and batch.keys[2] == batch.keys[3] and batch.keys[0] != batch.keys[2]
    )
    numbers = frame_numbers(batch.clips.permute(0, 2, 3, 4, 1).numpy())
    assert numbers[0, 0] <= numbers[1, 0] and numbers[2, 0] <= numbers[3, 0]


def test_several_clips_from_a_video_decord_hands_to_pyav(tmp_path: Path, data_config) -> None:
    """Width 48 makes decord give up after picking; PyAV picks again. The clips must be cut from the
    frames PyAV decoded (a bug once gathered them with the positions of decord's pick)."""
    with ShardWriter(tmp_path, shard_size=8) as writer:
        for i in range(4):
            writer.write(f"w{i}", encode_video(numbered_frames(28, height=32, width=48)), meta={"label": 0})
    cfg = data_config(tmp_path, num_clips=2, frame_step=3, crop_scale=(1.0, 1.0), crop_aspect=(1.5, 1.5))
    batches = list(build_loader(cfg, mask_generator=None, seed=0))
    assert len(batches) == 2 and all(b.clips.shape == (4, 3, 4, 16, 16) for b in batches)
    for batch in batches:
        numbers = frame_numbers(batch.clips.permute(0, 2, 3, 4, 1).numpy())  # [B, T]
        assert np.all(np.diff(numbers, axis=1) == 3) and numbers.max() < 28
        assert numbers[0, 0] <= numbers[1, 0] and numbers[2, 0] <= numbers[3, 0]


def test_ranks_and_workers_split_each_epoch_exactly(shard_dir: Path, data_config) -> None:
    for pattern, batch_size in (("shard-*.tar", 4), ("shard-000000.tar", 2)):  # 4 shards; 1 shard < 4 slots
        per_rank = []
        for rank in range(2):
            cfg = data_config(shard_dir / pattern, batch_size=batch_size, num_workers=2)
            per_rank.append(
                [b.keys for b in build_loader(cfg, mask_generator=None, seed=5, rank=rank, world_size=2)]
            )
        assert len(per_rank[0]) == len(per_rank[1]) > 0
        keys = Counter(k for rank in per_rank for batch in rank for k in batch)
        expected = (
            _all_keys(shard_dir) if pattern == "shard-*.tar" else {f"shard-000000/v{i:03d}" for i in range(8)}
        )
        assert set(keys) == expected and set(keys.values()) == {1}


def test_uneven_data_gives_equal_batch_counts(shard_dir: Path, data_config) -> None:
    counts = []
    for rank in range(3):
        cfg = data_config(shard_dir / "shard-00000{0..2}.tar", batch_size=3)  # 24 samples, 3 ranks
        counts.append(len(build_loader(cfg, mask_generator=None, seed=0, rank=rank, world_size=3)))
    assert counts == [2, 2, 2]  # 8 samples per rank -> 2 full batches of 3 each


def test_resume_continues_exactly(shard_dir: Path, data_config, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = data_config(shard_dir, num_workers=2, resampled=True)  # 8 batches per epoch
    reference = list(islice(build_loader(cfg, mask_generator=_masks(), seed=1), 12))
    first = build_loader(cfg, mask_generator=_masks(), seed=1)
    assert [b.keys for b in islice(first, 5)] == [b.keys for b in reference[:5]]
    state = first.state_dict()
    assert (state["epoch"], state["batch"], state["step"]) == (0, 5, 5)
    resumed = list(islice(build_loader(cfg, mask_generator=_masks(), seed=1, state=state), 7))  # into epoch 1
    for got, want in zip(resumed, reference[5:], strict=True):
        assert got.keys == want.keys and torch.equal(got.clips, want.clips)
        assert all(torch.equal(a.context_idx, b.context_idx) for a, b in zip(got.masks, want.masks))
    # a resumed loader decodes only what it delivers, plus the one sample it decodes ahead; none of the 20
    # samples of the 5 batches before the saved position (here in-process, with another worker count)
    calls = []
    real = decode._BACKENDS["decord"]
    monkeypatch.setitem(decode._BACKENDS, "decord", lambda data, pick: calls.append(1) or real(data, pick))
    cfg0 = data_config(shard_dir, num_workers=0, resampled=True)
    batch = next(iter(build_loader(cfg0, mask_generator=_masks(), seed=1, state=state)))
    assert (
        batch.keys == reference[5].keys
        and torch.equal(batch.clips, reference[5].clips)
        and len(calls) == 4 + 1
    )


def test_epochs_cover_all_samples_and_reshuffle(shard_dir: Path, data_config) -> None:
    loader = build_loader(data_config(shard_dir), mask_generator=None, seed=0)
    epoch0 = [k for b in loader for k in b.keys]
    assert loader.epoch == 1 and loader.state_dict()["batch"] == 0
    epoch1 = [k for b in loader for k in b.keys]
    assert set(epoch0) == set(epoch1) == _all_keys(shard_dir) and epoch0 != epoch1
    assert loader.stats()["clips"] == 64


def _bad_shard(folder: Path, good_mp4: bytes) -> tuple[Path, set[str], set[str]]:
    """A shard mixing good videos with every kind of bad member; returns (shard, good keys, bad keys)."""
    good = {f"good{i}": good_mp4 for i in range(6)}
    good["odd48"] = encode_video(numbered_frames(height=32, width=48))  # decord's width bug: PyAV reads it
    good["odd50"] = encode_video(numbered_frames(height=34, width=50))
    good["rotated"] = rotated_mp4(90, frames=8)
    bad = {
        "zero": (b"", "mp4"),
        "random": (np.random.default_rng(0).bytes(3000), "mp4"),
        "truncated": (good_mp4[: len(good_mp4) // 2], "mp4"),
        "novideo": (audio_only_mp4(), "mp4"),
        "textfile": (good_mp4, "txt"),  # no member with a video extension
        "short": (encode_video(numbered_frames(frames=3)), "mp4"),  # 3 frames, padding off
    }
    with ShardWriter(folder, shard_size=100, prefix="mixed") as writer:
        for i, (key, (data, ext)) in enumerate(bad.items()):
            writer.write(f"{key}", data, ext=ext, meta={"label": i})
            writer.write(list(good)[i], good[list(good)[i]], meta={"label": 0})
        for key in list(good)[len(bad) :]:
            writer.write(key, good[key], meta={"label": 0})
    return (
        folder / "mixed-000000.tar",
        {f"mixed-000000/{k}" for k in good},
        {f"mixed-000000/{k}" for k in bad},
    )


def test_bad_members_are_skipped_counted_and_logged(
    tmp_path: Path, numbered_mp4: bytes, data_config, caplog: pytest.LogCaptureFixture
) -> None:
    shard, good, bad = _bad_shard(tmp_path, numbered_mp4)
    cfg = data_config(shard, batch_size=2, pad_short=False, max_skip_fraction=1.0, drop_last=False)
    loader = build_loader(cfg, mask_generator=None, seed=0)
    with caplog.at_level(logging.WARNING, logger="data_pipelines.loader"):
        keys = [k for b in loader for k in b.keys]
    assert sorted(keys) == sorted(good)  # each good one once (not 14 clips: good ones came twice)
    stats = loader.stats()
    assert stats["skipped"] == len(bad) and stats["clips"] == len(good) and stats["samples_seen"] == 15
    assert set(stats["skipped_by_shard"][str(shard)]["keys"]) == bad
    assert all(k.split("/")[1] in caplog.text for k in bad) and str(shard) in caplog.text


@pytest.fixture(scope="module")
def shard_with_bad_members(tmp_path_factory: pytest.TempPathFactory, numbered_mp4: bytes) -> Path:
    """One shard of 23 members: `good00`..`good16` and 6 undecodable `bad0`..`bad5` spread among them."""
    folder = tmp_path_factory.mktemp("bad23")
    rng = np.random.default_rng(0)
    with ShardWriter(folder, shard_size=100, prefix="m") as writer:
        for i in range(23):
            key, data = (f"bad{i // 4}", rng.bytes(2000)) if i % 4 == 1 else (f"good{i:02d}", numbered_mp4)
            writer.write(key, data, meta={"label": 0})
    return folder / "m-000000.tar"


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_delivers_each_good_sample_once_and_counts_each_bad_one_once(
    shard_with_bad_members: Path, data_config, workers: int
) -> None:
    """A failed sample used to be replaced from the next batch, which then tried and counted it again and
    delivered the replacement a second time: skipped was 10, 7, 6 at batch 4, 8, 16."""
    good = {f"m-000000/good{i:02d}" for i in range(23) if i % 4 != 1}
    for batch_size in (4, 8, 16):
        cfg = data_config(
            shard_with_bad_members,
            batch_size=batch_size,
            num_workers=workers,
            drop_last=False,
            max_skip_fraction=1.0,
        )
        loader = build_loader(cfg, mask_generator=_masks(), seed=0)
        batches = list(loader)
        keys = Counter(k for b in batches for k in b.keys)
        assert set(keys) == good and set(keys.values()) == {1}, (batch_size, keys)
        assert all(m.batch_size == b.clips.shape[0] for b in batches for m in b.masks)
        stats = loader.stats()
        assert (stats["skipped"], stats["samples_seen"], stats["clips"]) == (6, 23, 17), batch_size
        full, rest = divmod(17, batch_size)  # every batch full but the last, the remainder
        assert [b.clips.shape[0] for b in batches] == [batch_size] * full + [rest] * (rest > 0)


def test_bad_samples_shorten_one_ranks_epoch_and_keep_several_ranks_equal(
    shard_with_bad_members: Path, data_config
) -> None:
    """Batch size 1: one rank yields one batch per good sample; two ranks each yield their planned 12
    (repeating samples where bad ones left a rank short), so that neither waits for the other."""
    cfg = data_config(shard_with_bad_members, batch_size=1, drop_last=False, max_skip_fraction=1.0)
    loader = build_loader(cfg, mask_generator=None, seed=0)
    assert len(list(loader)) == 17 and loader.stats()["skipped"] == 6 and len(loader) == 23
    counts, skipped = [], 0
    for rank in range(2):
        loader = build_loader(cfg, mask_generator=None, seed=0, rank=rank, world_size=2)
        batches = list(loader)
        counts.append(len(batches))
        skipped += loader.stats()["skipped"]
        assert all(b.clips.shape[0] == 1 for b in batches) and len(loader) == 12
    assert counts == [12, 12] and skipped >= 6  # 23 samples -> 12 per rank (one read by both)
    cfg = data_config(shard_with_bad_members, batch_size=4, max_skip_fraction=1.0)  # drop_last
    per_rank = [
        [b.keys for b in build_loader(cfg, mask_generator=None, seed=1, rank=r, world_size=2)]
        for r in range(2)
    ]
    assert [len(p) for p in per_rank] == [2, 2]  # 11 samples per rank: 2 batches of 4, full
    assert all(len(keys) == 4 for p in per_rank for keys in p)


def test_with_bad_samples_batches_do_not_depend_on_workers_and_resume_exactly(
    shard_with_bad_members: Path, data_config
) -> None:
    """Batch boundaries move past bad samples (positions are sample cursors); the worker that builds the
    next batch learns where it starts from the one before, so the batches are the same for any worker
    count, and a saved cursor resumes them exactly."""

    def run(workers: int, n: int, state: dict | None = None) -> list:
        cfg = data_config(shard_with_bad_members, num_workers=workers, resampled=True, max_skip_fraction=1.0)
        return list(islice(build_loader(cfg, mask_generator=_masks(), seed=2, state=state), n))

    reference = run(0, 14)  # 17 good samples: 4 full batches per epoch (drop_last), over 4 epochs
    assert all(b.clips.shape[0] == 4 for b in reference)
    assert all(len(set(k for b in reference[e : e + 4] for k in b.keys)) == 16 for e in (0, 4, 8))
    for workers in (1, 2):
        got = run(workers, 14)
        assert [b.keys for b in got] == [b.keys for b in reference]
        assert all(torch.equal(a.clips, b.clips) for a, b in zip(got, reference))
    cfg = data_config(shard_with_bad_members, num_workers=2, resampled=True, max_skip_fraction=1.0)
    first = build_loader(cfg, mask_generator=_masks(), seed=2)
    assert [b.keys for b in islice(first, 7)] == [b.keys for b in reference[:7]]
    state = first.state_dict()
    # epoch 0: 4 batches and the remainder (tried, not delivered) as step 4; epoch 1: 3 batches
    assert (state["epoch"], state["batch"], state["step"]) == (1, 3, 8) and state["cursor"] >= 12
    for workers in (0, 2):
        resumed = run(workers, 7, state)
        assert [b.keys for b in resumed] == [b.keys for b in reference[7:]]
        assert all(torch.equal(a.clips, b.clips) for a, b in zip(resumed, reference[7:]))
        assert all(
            torch.equal(x.context_idx, y.context_idx)
            for a, b in zip(resumed, reference[7:])
            for x, y in zip(a.masks, b.masks)
        )


def test_a_worker_waiting_for_a_batch_start_stops_with_the_loader() -> None:
    """At shutdown DataLoader workers drop their queued batches, so the batch a worker waits for may never
    be built; the loader's stop ends the wait (else DataLoader's join waits 5 s per such worker)."""
    chain = Chain()
    chain.publish(0, (0, 0, 4))
    assert chain.get(0) == (0, 0, 4) and chain.get(1) is False and chain.latest(before=5) == (0, (0, 0, 4))
    threading.Timer(0.2, chain.stop).start()
    start = time.perf_counter()
    assert chain.wait(1) is None and time.perf_counter() - start < 2


def test_too_many_bad_samples_stop_with_the_worst_shard(tmp_path: Path, shard_dir: Path, data_config) -> None:
    with ShardWriter(tmp_path, shard_size=100, prefix="broken") as writer:
        for i in range(8):
            writer.write(f"b{i}", np.random.default_rng(i).bytes(500), meta={"label": 0})
    sources = [SourceConfig(path=str(shard_dir / "shard-000000.tar")), SourceConfig(path=str(tmp_path))]
    cfg = data_config(num_workers=2, max_skip_fraction=0.2, skip_check_min_samples=4, sources=sources)
    with pytest.raises(TooManyBadSamplesError, match=r"broken-000000\.tar: \d+/\d+ skipped"):
        list(build_loader(cfg, mask_generator=None, seed=0))


def test_hung_decode_in_a_worker_is_skipped(
    shard_dir: Path, data_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode._BACKENDS["decord"]
    hung = {"yet": False}  # the forked worker flips its own copy: its first decode hangs, later ones run

    def sometimes_hang(data: bytes, pick: decode.IndexPicker) -> np.ndarray:
        if not hung["yet"]:
            hung["yet"] = True
            time.sleep(60)
        return real(data, pick)

    monkeypatch.setitem(decode._BACKENDS, "decord", sometimes_hang)
    cfg = data_config(  # 8 samples, one hangs: 7 make a batch of 4 and the shorter last one
        shard_dir / "shard-000000.tar",
        num_workers=1,
        decode_timeout_s=0.5,
        max_skip_fraction=1.0,
        drop_last=False,
    )
    loader = build_loader(cfg, mask_generator=None, seed=0)
    start = time.perf_counter()
    batches = list(loader)
    assert len(batches) == 2 and time.perf_counter() - start < 20
    assert loader.stats()["skipped"] == 1


def test_config_errors_name_the_key(shard_dir: Path, data_config) -> None:
    cases = {
        "data.crop_scale": dict(crop_scale=(0.5, 0.2)),
        "data.batch_size": dict(num_clips=3),
        "data.sources.0.kind": dict(sources=[SourceConfig(path="x", kind="zip")]),
        "data.decoder": dict(decoder="ffmpeg"),
        "data.hflip": dict(hflip=1.5),
    }
    for key, overrides in cases.items():
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            data_config(shard_dir, **overrides).validate("data")
    with pytest.raises(ValueError, match=r"data\.dataset"):
        build_loader(DataConfig(), mask_generator=None, seed=0)
    with pytest.raises(ValueError, match=r"data\.batch_size"):
        build_loader(data_config(shard_dir / "shard-000000.tar", batch_size=16), mask_generator=None, seed=0)


def test_loader_benchmark_fits_its_batch_to_a_small_data_set(
    tmp_path: Path, numbered_mp4: bytes, capsys: pytest.CaptureFixture
) -> None:
    """`vjepa bench loader` on 4 videos refused at its default batch of 8."""
    from benchmarks import loader as bench

    with ShardWriter(tmp_path, shard_size=8) as writer:
        for i in range(4):
            writer.write(f"v{i}", numbered_mp4, meta={"label": 0})
    result = bench.main(["--data", str(tmp_path), "--json", "--workers", "0", "--no-masks"])
    assert (result["batch"], result["batch_asked"], result["clips"], result["skipped"]) == (4, 8, 4, 0)
    assert result["cpu_ms_per_clip"] > 0 and result["bare_cpu_ms_per_clip"] > 0
    assert result["steady_ratio"] is None  # one batch per pass: nothing after the first
    assert "fewer than --batch 8: measuring with batches of 4" in capsys.readouterr().err


def test_too_few_samples_for_one_batch_says_what_to_set(shard_dir: Path, data_config) -> None:
    cfg = data_config(shard_dir / "shard-000000.tar", batch_size=16)  # 8 samples
    with pytest.raises(ValueError, match=r"data\.drop_last=false .* smaller data\.batch_size \(at most 8"):
        build_loader(cfg, mask_generator=None, seed=0)
    assert (
        len(
            list(
                build_loader(
                    data_config(shard_dir / "shard-000000.tar", batch_size=16, drop_last=False),
                    mask_generator=None,
                    seed=0,
                )
            )
        )
        == 1
    )


def test_batches_from_a_worker_equal_the_in_process_ones_and_carry_small_tensors_inline(
    shard_dir: Path, data_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker sends the labels and masks inside the pickled message (numpy arrays, see batch.py) and only
    the clips through shared memory; the main process gets tensors back, equal to an in-process loader's."""
    from data_pipelines import batch as batch_module
    from data_pipelines.batch import for_transport, from_transport

    want = next(iter(build_loader(data_config(shard_dir, num_workers=0), mask_generator=_masks(), seed=2)))
    got = next(iter(build_loader(data_config(shard_dir, num_workers=1), mask_generator=_masks(), seed=2)))
    assert (
        got.keys == want.keys and torch.equal(got.clips, want.clips) and torch.equal(got.labels, want.labels)
    )
    for a, b in zip(got.masks, want.masks, strict=True):
        for name in ("context_idx", "context_valid", "target_idx", "target_valid"):
            assert isinstance(getattr(a, name), torch.Tensor) and torch.equal(
                getattr(a, name), getattr(b, name)
            )
    monkeypatch.setattr(batch_module, "INLINE_BYTES", want.clips.numel() - 1)  # these test clips are small
    sent = for_transport(want)
    assert isinstance(sent.clips, torch.Tensor)  # over the limit: one shared-memory tensor
    assert isinstance(sent.labels, np.ndarray) and isinstance(sent.masks[0].target_idx, np.ndarray)
    back = from_transport(sent)
    assert torch.equal(back.masks[1].context_valid, want.masks[1].context_valid)
    assert back.masks[1].context_valid.dtype == torch.bool


def test_batch_clips_are_channels_last_in_memory_and_normalize_to_contiguous(
    shard_dir: Path, data_config
) -> None:
    """The batch keeps the decoded [T, H, W, 3] order in memory (stacking is then a plain copy per clip);
    `normalize` gives the model the same contiguous float tensor it would get from a contiguous batch."""
    from data_pipelines.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

    batch = next(iter(build_loader(data_config(shard_dir, num_workers=0), mask_generator=None, seed=0)))
    b, c, t, h, w = batch.clips.shape
    assert batch.clips.stride() == (t * h * w * c, 1, h * w * c, w * c, c)
    x = normalize(batch.clips)
    assert x.is_contiguous() and x.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255.0
    torch.testing.assert_close(x, (batch.clips.contiguous().float() - mean) / std)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_loader_with_workers_imports_its_decoder_before_they_fork_and_exits_with_an_open_iteration(
    shard_dir: Path, streamed: bool
) -> None:
    """Each iteration forks new workers; a decoder library the main process had not imported was imported
    again by every one of them at its first decode (PyAV: about 60 ms each). And a process that ended with
    an iteration still open (held in a global) never exited: multiprocessing's exit handler sent the
    workers SIGTERM, which they ignore, and waited for them."""
    path = f"pipe:cat {shard_dir}/shard-{{000000..000003}}.tar" if streamed else str(shard_dir)
    code = f"""
import sys
from data_pipelines.config import DataConfig, SourceConfig
from data_pipelines.loader import build_loader
cfg = DataConfig(dataset="files", sources=[SourceConfig(path={path!r})], frames_per_clip=4,
                 frame_step=2, crop_size=16, batch_size=4, num_workers=1, decoder="pyav")
loader = build_loader(cfg, mask_generator=None, seed=0)
assert "av" not in sys.modules, "imported before any iteration"
batches = iter(loader)
assert next(batches).clips.shape == (4, 3, 4, 16, 16)
assert "av" in sys.modules, "not imported in the main process"
print("done", flush=True)
"""
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the process did not exit within 60 s; its output: {err.stdout!r}")
    assert run.returncode == 0 and run.stdout == "done\n", run.stderr[-2000:]
