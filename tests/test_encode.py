"""In-memory encode / re-encode / probe with PyAV: round trips, keyframe intervals, clear errors."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from data_pipelines import encode as encode_mod
from data_pipelines.encode import encode_video, probe_video, reencode_video, x264_asm_cap


def moving_square(frames: int = 24, height: int = 32, width: int = 48) -> np.ndarray:
    """A smooth gradient with a red square sliding right: compresses well, so pixels survive the codec."""
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, None, :, None]
    video = np.broadcast_to(ramp, (frames, height, width, 3)).astype(np.uint8).copy()
    for t in range(frames):
        x = t % (width - 8)
        video[t, 8:16, x : x + 8] = (230, 20, 20)
    return video


def decode_all(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def keyframe_positions(data: bytes) -> list[int]:
    """Display-order indices of keyframes (packets sorted by pts, since B-frames reorder decode order)."""
    with av.open(io.BytesIO(data)) as container:
        packets = sorted((p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size)
    return [i for i, (_, key) in enumerate(packets) if key]


def test_round_trip_keeps_frames_size_and_pixels():
    video = moving_square()
    data = encode_video(video, fps=12)
    info = probe_video(data)
    assert (info["frames"], info["height"], info["width"]) == (24, 32, 48)
    assert info["fps"] == pytest.approx(12)
    decoded = decode_all(data)
    assert decoded.shape == video.shape
    assert np.abs(decoded.astype(np.int16) - video).mean() < 6


@pytest.mark.parametrize("gop", [4, 8])
def test_gop_is_honoured(gop):
    data = encode_video(moving_square(frames=32), gop=gop)
    assert keyframe_positions(data) == list(range(0, 32, gop))
    assert probe_video(data)["keyframes"] == 32 // gop


def test_default_gop_has_a_single_keyframe_for_a_short_clip():
    assert keyframe_positions(encode_video(moving_square(frames=32))) == [0]


def test_webm_vp9_round_trip():
    data = encode_video(moving_square(frames=8), codec="libvpx-vp9", container="webm", gop=4)
    info = probe_video(data)
    assert (info["frames"], info["codec"], info["keyframes"]) == (8, "vp9", 2)


def test_reencode_shortens_keyframe_interval_and_resizes():
    source = encode_video(moving_square(frames=32))
    out = reencode_video(source, gop=4, short_side=16)
    info = probe_video(out)
    assert (info["frames"], info["height"], info["width"]) == (32, 16, 24)
    assert keyframe_positions(out) == list(range(0, 32, 4))


def test_reencode_with_one_thread_waits_for_no_other_thread():
    """`threads=1` (the shard writer's setting with several processes): the decode, the resize and the
    encode all run on the calling thread. PyAV 17's default made a thread pool for every frame's resize
    (193 waits for this video)."""
    import resource

    source = encode_video(moving_square(frames=48, height=128, width=192), threads=1)
    reencode_video(source, gop=8, short_side=64, threads=1)  # first use
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    out = reencode_video(source, gop=8, short_side=64, threads=1)
    waits = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before
    assert probe_video(out)["height"] == 64
    assert waits < 50, f"{waits} voluntary context switches in one re-encode"


def test_the_same_frames_encode_to_the_same_bytes_every_time():
    """Without the cap, libx264's AVX-512 kernels gave 2-6 different outputs in 40 encodes of two of these four
    videos, on one thread; capped, every encode is the same. (On a CPU without AVX-512 this cannot fail.)"""
    from data_pipelines.synthetic import render_video

    for k in range(4):
        video = render_video(k % 3, frames=32, size=64, rng=np.random.default_rng([1, 0, k]))
        outputs = {encode_video(video, fps=15, gop=16, crf=18, threads=1) for _ in range(40)}
        assert len(outputs) == 1, f"video {k}: {len(outputs)} different encodes of the same frames"


def test_x264_asm_cap_reads_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma bmi2 avx512f avx512bw\n")
    assert x264_asm_cap.__wrapped__(str(cpuinfo)) == "AVX2"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma bmi2\n")
    assert x264_asm_cap.__wrapped__(str(cpuinfo)) is None
    assert x264_asm_cap.__wrapped__(str(tmp_path / "missing")) is None
    assert "x264-params" not in encode_mod._codec_options("libvpx-vp9", gop=4, crf=30, threads=1)


def test_reencode_changes_fps_keeping_duration():
    source = encode_video(moving_square(frames=24), fps=12)
    half = probe_video(reencode_video(source, gop=4, fps=6))
    double = probe_video(reencode_video(source, gop=4, fps=24))
    assert (half["frames"], half["fps"]) == (12, pytest.approx(6))
    assert (double["frames"], double["fps"]) == (48, pytest.approx(24))


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((4, 31, 32, 3), np.uint8), "even"),
        (np.zeros((4, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((0, 32, 32, 3), np.uint8), "zero frames"),
        (np.zeros((4, 32, 32), np.uint8), r"\[T, H, W, 3\]"),
    ],
)
def test_encode_rejects_bad_frames(frames, match):
    with pytest.raises(ValueError, match=match):
        encode_video(frames)


@pytest.mark.parametrize(
    "data", [b"", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))]
)
def test_probe_rejects_non_videos(data):
    with pytest.raises(ValueError):
        probe_video(data)


def test_probe_rejects_truncated_mp4():
    data = encode_video(moving_square())
    with pytest.raises(ValueError):
        probe_video(data[: len(data) // 2])
