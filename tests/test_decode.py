"""Decoding, frame sampling (training clips and evaluation segments) and cropping (training augmentation
and evaluation views) on tiny real videos."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch
from conftest import FRAMES, audio_only_mp4, frame_numbers, numbered_frames, rotated_mp4

from data_pipelines import decode
from data_pipelines.bad_samples import BadSampleError, DecodeTimeoutError
from data_pipelines.decode import VideoDecoder, decode_decord, decode_pyav
from data_pipelines.encode import encode_video
from data_pipelines.sampling import clip_indices, union_indices
from data_pipelines.transforms import augment_clip, crop_box, normalize, spatial_views


@pytest.mark.parametrize("backend", [decode_decord, decode_pyav])
@pytest.mark.parametrize("indices", [[0, 1, 2, 3], [5, 9, 13, 17], [12, 12, 20, 23]])
def test_decoders_return_the_picked_frames(numbered_mp4: bytes, backend, indices: list[int]) -> None:
    seen: list[tuple[int, float]] = []

    def pick(num_frames: int, fps: float) -> np.ndarray:
        seen.append((num_frames, fps))
        return np.array(indices)

    video = backend(numbered_mp4, pick)
    frames = video.frames
    assert frames.shape == (len(indices), 32, 32, 3) and frames.dtype == np.uint8
    assert video.indices.tolist() == indices and video.num_frames == FRAMES
    assert frame_numbers(frames).tolist() == indices
    assert seen == [(FRAMES, pytest.approx(24.0))]


def test_pyav_matches_decord(numbered_mp4: bytes) -> None:
    rng = np.random.default_rng(0)
    for _ in range(4):
        indices = np.sort(rng.choice(FRAMES, size=6, replace=False))
        a = decode_decord(numbered_mp4, lambda n, fps, i=indices: i).frames.astype(np.int16)
        b = decode_pyav(numbered_mp4, lambda n, fps, i=indices: i).frames.astype(np.int16)
        assert np.abs(a - b).max() <= 2


def test_pyav_decodes_on_the_calling_thread() -> None:
    """PyAV's defaults hand every frame to slice threads and every colour conversion to a new thread pool;
    the calling thread then blocks on them (about 270 voluntary context switches per 16-frame clip of
    128 x 128 on 2 vCPUs). Decoding on the calling thread, it hardly ever waits. (On a 1-CPU machine
    FFmpeg makes no threads, and this holds either way.)"""
    import resource

    data = encode_video(numbered_frames(64, 128, 128), fps=24.0, gop=16)
    pick = lambda n, fps: np.arange(0, 64, 4)  # noqa: E731
    decode_pyav(data, pick)  # first use: imports, codec tables
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    for _ in range(4):
        assert decode_pyav(data, pick).frames.shape == (16, 128, 128, 3)
    waits = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before
    assert waits < 50, f"{waits} voluntary context switches in 4 decodes"


def test_decode_benchmark_times_every_decoder_on_the_same_clips(shard_dir, capsys) -> None:
    from benchmarks import decode as bench

    args = "--videos 2 --starts 2 --frames 4 --frame-step 2 --rounds 2 --json".split()
    result = bench.main(["--data", str(shard_dir), *args])
    assert result["clips"] == 2 * 2 * 2
    for name in ("decord", "pyav_1_thread", "pyav_auto_threads"):
        assert result[name]["cpu_ms"] > 0 and result[name]["wall_ms"] > 0
    assert result["cpu_ratio_decord"] > 0 and result["cpu_ratio_pyav_auto"] > 0
    assert capsys.readouterr().out.count("\n") == 1  # one JSON line


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_videos_come_out_upright_from_both_decoders(degrees: int) -> None:
    data = rotated_mp4(degrees)
    a = decode_decord(data, lambda n, fps: np.arange(2)).frames.astype(np.int16)
    b = decode_pyav(data, lambda n, fps: np.arange(2)).frames.astype(np.int16)
    assert a.shape == b.shape == ((2, 64, 32, 3) if degrees % 180 else (2, 32, 64, 3))
    assert np.abs(a - b).mean() < 4


def test_decord_width_bug_falls_back_to_pyav() -> None:
    data = encode_video(numbered_frames(8, height=32, width=48))  # decord cannot copy out width 48
    with pytest.raises(decode.DecordLayoutError):
        decode_decord(data, lambda n, fps: np.arange(4))
    frames = VideoDecoder("decord", timeout_s=10)(data, lambda n, fps: np.arange(4)).frames
    assert frames.shape == (4, 32, 48, 3) and frame_numbers(frames).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_undecodable_bytes_raise_bad_sample(numbered_mp4: bytes, backend: str) -> None:
    decoder = VideoDecoder(backend, timeout_s=10)
    bad = {
        "zero bytes": b"",
        "random bytes": np.random.default_rng(0).bytes(4000),
        "json as mp4": b'{"label": 1}',
        "truncated": numbered_mp4[: len(numbered_mp4) // 2],
        "no video stream": audio_only_mp4(),
    }
    for name, data in bad.items():
        with pytest.raises(BadSampleError):
            decoder(data, lambda n, fps: np.arange(2))
            pytest.fail(f"{name} decoded")


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_clip_shaped_picks_come_back_as_clips(numbered_mp4: bytes, backend: str) -> None:
    """A [C, T] pick (overlapping, repeating) is decoded once and returned as [C, T, H, W, 3] frames."""
    clips = np.array([[2, 4, 6, 8], [6, 8, 23, 23]])
    calls: list[tuple[int, float]] = []

    def pick(num_frames: int, fps: float) -> np.ndarray:
        calls.append((num_frames, fps))
        return clips

    video = VideoDecoder(backend, timeout_s=10)(numbered_mp4, pick)
    assert video.frames.shape == (2, 4, 32, 32, 3) and video.indices.tolist() == clips.tolist()
    assert frame_numbers(video.frames).tolist() == clips.tolist()
    assert len(calls) == 1 and video.num_frames == FRAMES and video.fps == pytest.approx(24.0)


def test_decode_time_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(data: bytes, pick: object) -> decode.DecodedVideo:
        time.sleep(30)
        raise AssertionError("unreachable")

    monkeypatch.setitem(decode._BACKENDS, "pyav", hang)
    decoder = VideoDecoder("pyav", timeout_s=0.2)
    start = time.perf_counter()
    with pytest.raises(DecodeTimeoutError):
        decoder(b"x", lambda n, fps: np.arange(1))
    assert time.perf_counter() - start < 2.0
    decoder._runner.abandoned = decode.MAX_ABANDONED_THREADS
    with pytest.raises(RuntimeError, match="hung"):
        decoder(b"x", lambda n, fps: np.arange(1))


def _sample(num_frames: int, **kw: object) -> np.ndarray:
    args = dict(frames=4, frame_step=3, fps=None, num_clips=1, pad=True, rng=np.random.default_rng(0))
    args.update(kw)
    return clip_indices(num_frames, 30.0, **args)


def test_clip_indices_step_fps_and_clips() -> None:
    for seed in range(20):
        idx = _sample(40, rng=np.random.default_rng(seed))
        assert idx.shape == (1, 4) and np.all(np.diff(idx[0]) == 3) and 0 <= idx.min() and idx.max() < 40
        by_fps = _sample(100, fps=10.0, rng=np.random.default_rng(seed))  # 30 fps video -> every 3rd frame
        assert np.all(np.diff(by_fps[0]) == 3)
        clips = _sample(100, num_clips=3, rng=np.random.default_rng(seed))
        assert clips.shape == (3, 4) and np.all(np.diff(clips[:, 0]) >= 0) and clips.max() < 100
        unique, pos = union_indices(clips)
        assert np.all(np.diff(unique) > 0) and np.array_equal(unique[pos], clips)


def test_short_video_is_padded_or_rejected() -> None:
    assert _sample(5).tolist() == [[0, 3, 4, 4]]  # needs 10 frames; last one repeated
    with pytest.raises(BadSampleError, match="pad_short"):
        _sample(5, pad=False)


def segment_indices(num_frames: int, *, frames: int, frame_step: int, segments: int) -> np.ndarray:
    """The evaluation clips: `clip_indices` without a generator takes the middle of each part."""
    args = dict(frames=frames, frame_step=frame_step, fps=None, num_clips=segments, pad=True, rng=None)
    return clip_indices(num_frames, 0.0, **args)


def test_segment_indices_are_centred_and_pad_short_videos():
    one = segment_indices(20, frames=4, frame_step=2, segments=1)  # span 7, slack 13 -> start 6
    np.testing.assert_array_equal(one, [[6, 8, 10, 12]])
    two = segment_indices(20, frames=4, frame_step=2, segments=2)  # starts floor(3.25), floor(9.75)
    np.testing.assert_array_equal(two, [[3, 5, 7, 9], [9, 11, 13, 15]])
    np.testing.assert_array_equal(segment_indices(3, frames=4, frame_step=2, segments=1), [[0, 2, 2, 2]])


def test_spatial_views_cover_the_long_side():
    frames = torch.arange(2 * 32 * 64 * 3, dtype=torch.int64).remainder(251).to(torch.uint8)
    frames = frames.view(2, 32, 64, 3)  # [T, H, W, 3], wide
    three = spatial_views(frames, crop=32, views=3)
    assert three.shape == (3, 3, 2, 32, 32)
    for view, left in zip(three, (0, 16, 32)):
        assert torch.equal(view, frames[:, :, left : left + 32].permute(3, 0, 1, 2))
    center = spatial_views(frames.transpose(1, 2).contiguous(), crop=32, views=1)  # tall: crop in height
    assert torch.equal(center[0], frames.transpose(1, 2)[:, 16:48].permute(3, 0, 1, 2))
    assert spatial_views(frames, crop=16, views=1).shape == (1, 3, 2, 16, 16)  # resized, then cropped


def test_crop_box_respects_scale_and_aspect() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = crop_box(60, 80, scale=(0.3, 1.0), aspect=(0.75, 1.35), generator=g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.3 * 0.9 <= h * w / 4800 <= 1.0 and 0.75 * 0.9 <= w / h <= 1.35 * 1.1


def test_augment_clip_shape_flip_and_determinism() -> None:
    frames = np.zeros((4, 24, 32, 3), np.uint8)
    frames[:, :, 16:] = 200  # right half bright
    kw = dict(size=16, scale=(1.0, 1.0), aspect=(32 / 24, 32 / 24))
    plain = augment_clip(frames, hflip=0.0, generator=torch.Generator().manual_seed(1), **kw)
    flipped = augment_clip(frames, hflip=1.0, generator=torch.Generator().manual_seed(1), **kw)
    assert plain.shape == (3, 4, 16, 16) and plain.dtype == torch.uint8
    assert plain[..., -1].float().mean() > 150 and flipped[..., 0].float().mean() > 150
    random = dict(hflip=0.5, scale=(0.3, 1.0), size=16, aspect=(0.75, 1.35))
    first = augment_clip(frames, generator=torch.Generator().manual_seed(7), **random)
    again = augment_clip(frames, generator=torch.Generator().manual_seed(7), **random)
    assert torch.equal(first, again)


def test_normalize_uses_imagenet_statistics() -> None:
    clips = torch.full((2, 3, 2, 4, 4), 255, dtype=torch.uint8)
    out = normalize(clips)
    assert out.dtype == torch.float32 and out.shape == clips.shape
    assert torch.allclose(
        out[0, :, 0, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )
    with pytest.raises(ValueError):
        normalize(clips.float())


def test_preloading_a_missing_pyav_names_the_key(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(ValueError, match=r"data\.decoder: 'pyav' is selected but cannot be imported"):
        decode.preload("pyav")
