"""Decoding, frame sampling and clip augmentation on tiny real videos."""

from __future__ import annotations

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
from data_pipelines.transforms import augment_clip, crop_box, normalize


@pytest.mark.parametrize("backend", [decode_decord, decode_pyav])
@pytest.mark.parametrize("indices", [[0, 1, 2, 3], [5, 9, 13, 17], [12, 12, 20, 23]])
def test_decoders_return_the_picked_frames(numbered_mp4: bytes, backend, indices: list[int]) -> None:
    seen: list[tuple[int, float]] = []

    def pick(num_frames: int, fps: float) -> np.ndarray:
        seen.append((num_frames, fps))
        return np.array(indices)

    frames = backend(numbered_mp4, pick)
    assert frames.shape == (len(indices), 32, 32, 3) and frames.dtype == np.uint8
    assert frame_numbers(frames).tolist() == indices
    assert seen == [(FRAMES, pytest.approx(24.0))]


def test_pyav_matches_decord(numbered_mp4: bytes) -> None:
    rng = np.random.default_rng(0)
    for _ in range(4):
        indices = np.sort(rng.choice(FRAMES, size=6, replace=False))
        a = decode_decord(numbered_mp4, lambda n, fps, i=indices: i).astype(np.int16)
        b = decode_pyav(numbered_mp4, lambda n, fps, i=indices: i).astype(np.int16)
        assert np.abs(a - b).max() <= 2


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_videos_come_out_upright_from_both_decoders(degrees: int) -> None:
    data = rotated_mp4(degrees)
    a = decode_decord(data, lambda n, fps: np.arange(2)).astype(np.int16)
    b = decode_pyav(data, lambda n, fps: np.arange(2)).astype(np.int16)
    assert a.shape == b.shape == ((2, 64, 32, 3) if degrees % 180 else (2, 32, 64, 3))
    assert np.abs(a - b).mean() < 4


def test_decord_width_bug_falls_back_to_pyav() -> None:
    data = encode_video(numbered_frames(8, height=32, width=48))  # decord cannot copy out width 48
    with pytest.raises(decode.DecordLayoutError):
        decode_decord(data, lambda n, fps: np.arange(4))
    frames = VideoDecoder("decord", timeout_s=10)(data, lambda n, fps: np.arange(4))
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


def test_decode_time_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(data: bytes, pick: object) -> np.ndarray:
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
