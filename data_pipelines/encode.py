"""In-memory video encoding, re-encoding and probing with PyAV (no ffmpeg binary needed).

Shape legend: T frames, H/W pixels; frame arrays are [T, H, W, 3] uint8 RGB.

The keyframe interval (`gop`) matters for training throughput: a random seek decodes from the previous
keyframe, so shards meant for clip sampling are re-encoded with a short, fixed interval. For libx264 the
interval is pinned with `g` + `keyint_min` and scene-cut detection off, otherwise x264 inserts extra
keyframes and may stretch the interval.

libx264 is held to its AVX2 kernels on CPUs with AVX-512 (`x264_asm_cap`). With its AVX-512 kernels the
same frames and options encoded to different bytes from one call to the next, even on one thread (7 of 10
synthetic 64 x 64 videos gave 2-4 different outputs in 30 encodes each); with AVX2, SSE4.2 or no assembly
every encode of each video was the same. Capped, the bytes also matched the SSE4.2 kernels' for every video
tried, so a machine without AVX-512 writes the same shards.

PyAV is imported when a function first needs it, so that importing the shard writer or the synthetic data
generator (for `vjepa --help`, say) does not load it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines.decode import reformat_threads

if TYPE_CHECKING:
    import av

__all__ = ["encode_video", "probe_video", "reencode_video"]

_PIX_FMT = "yuv420p"


def _rate(fps: float, key: str = "fps") -> Fraction:
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"{key} must be a positive finite number, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


@functools.cache
def x264_asm_cap(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The `asm` setting that keeps libx264 off its AVX-512 kernels: "AVX2" where the CPU has AVX-512 (every
    such CPU has AVX2, FMA3 and BMI2, the other features that name turns on), None elsewhere or when the CPU's
    flags cannot be read (x264 then picks its kernels itself)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return "AVX2" if "avx512f" in flags else None


def _codec_options(codec: str, *, gop: int | None, crf: int, threads: int) -> dict[str, str]:
    """Encoder options that make `crf` and `gop` mean the same thing across the common codecs (and libx264's
    output the same from one encode to the next, see the module docstring)."""
    options: dict[str, str] = {"threads": str(threads)} if threads > 0 else {}
    x264: list[str] = []
    if codec in ("libx264", "libx265"):
        options.update(crf=str(crf), preset="veryfast")
    elif codec.startswith("libvpx"):
        options.update(crf=str(crf), b="0", deadline="realtime", cpu_used="8")
    if gop is not None:
        if gop < 1:
            raise ValueError(f"gop must be >= 1, got {gop}")
        options.update(g=str(gop), keyint_min=str(gop), sc_threshold="0")
        x264 += [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"]
    if codec == "libx264":
        cap = x264_asm_cap()
        if cap:
            x264.append(f"asm={cap}")
        if x264:
            options["x264-params"] = ":".join(x264)
    return options


def _encode_frames(
    frames: Iterable[av.VideoFrame],
    *,
    width: int,
    height: int,
    fps: float,
    gop: int | None,
    codec: str,
    container: str,
    crf: int,
    threads: int,
) -> bytes:
    """Encode a stream of frames (any pixel format; converted to yuv420p) into a container in memory."""
    import av
    from av.video.frame import PictureType

    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got height={height} width={width}")
    rate = _rate(fps)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(
            codec, rate=rate, options=_codec_options(codec, gop=gop, crf=crf, threads=threads)
        )
        stream.width, stream.height, stream.pix_fmt = width, height, _PIX_FMT
        if gop is not None:
            stream.codec_context.gop_size = gop
        time_base = Fraction(1) / rate
        count = 0
        for frame in frames:
            frame.pts, frame.time_base = count, time_base
            # a decoded frame keeps its source picture type; an I would force an extra keyframe
            frame.pict_type = PictureType.NONE
            out.mux(stream.encode(frame))
            count += 1
        if count == 0:
            raise ValueError("cannot encode a video with zero frames")
        out.mux(stream.encode(None))
    return buf.getvalue()


def encode_video(
    frames: np.ndarray,
    *,
    fps: float = 30.0,
    gop: int | None = None,
    codec: str = "libx264",
    container: str = "mp4",
    crf: int = 23,
    threads: int = 0,
) -> bytes:
    """Encode RGB frames [T, H, W, 3] uint8 to a video file's bytes (H and W must be even for yuv420p).

    `threads` = 0 lets the codec choose; 1 is fastest overall when many processes encode side by side.
    """
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be a [T, H, W, 3] array, got {getattr(frames, 'shape', type(frames))}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("frames has zero frames (T=0)")
    if h % 2 or w % 2:
        raise ValueError(f"frames need even height and width for yuv420p, got H={h} W={w}; crop or pad first")
    import av

    rgb = np.ascontiguousarray(frames)
    return _encode_frames(
        (av.VideoFrame.from_ndarray(rgb[i], format="rgb24") for i in range(t)),
        width=w,
        height=h,
        fps=fps,
        gop=gop,
        codec=codec,
        container=container,
        crf=crf,
        threads=threads,
    )


def _open(data: bytes) -> av.container.InputContainer:
    import av

    if not data:
        raise ValueError("empty video data (0 bytes)")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as err:
        raise ValueError(f"not a readable video container: {err}") from err
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream in container")
    return container


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(data: bytes) -> dict:
    """Decode every frame once; return {frames, fps, height, width, keyframes, codec}.

    Raises ValueError with the reason when the data is empty, not a video, or fails to decode.
    """
    import av

    container = _open(data)
    try:
        stream = container.streams.video[0]
        frames = keyframes = 0
        height = width = 0
        for packet in container.demux(stream):
            keyframes += int(packet.is_keyframe and packet.size > 0)
            for frame in packet.decode():
                frames += 1
                height, width = frame.height, frame.width
        fps, codec = _stream_fps(stream), stream.codec_context.name
    except av.FFmpegError as err:
        raise ValueError(f"decode failed after {frames} frames: {err}") from err
    finally:
        container.close()
    if frames == 0:
        raise ValueError("video stream has no decodable frames")
    return {
        "frames": frames,
        "fps": fps,
        "height": height,
        "width": width,
        "keyframes": keyframes,
        "codec": codec,
    }


def _target_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) with the short side scaled to `short_side`, both rounded to even numbers."""
    if short_side is None:
        return height - height % 2, width - width % 2
    if short_side < 2:
        raise ValueError(f"short_side must be >= 2, got {short_side}")
    scale = short_side / min(height, width)
    h, w = round(height * scale), round(width * scale)
    return max(2, h - h % 2), max(2, w - w % 2)


def _resampled(frames: Iterator[av.VideoFrame], src_fps: float, dst_fps: float) -> Iterator[av.VideoFrame]:
    """Drop or repeat frames so the clip keeps its duration at `dst_fps` (nearest earlier source frame)."""
    if src_fps <= 0 or abs(src_fps - dst_fps) < 1e-6:
        yield from frames
        return
    out_index = 0
    for src_index, frame in enumerate(frames):
        # output frame j shows source frame floor(j * src / dst); emit every j that maps to this one
        while int(out_index * src_fps / dst_fps + 1e-9) <= src_index:
            yield frame
            out_index += 1


def reencode_video(
    data: bytes,
    *,
    gop: int,
    short_side: int | None = None,
    fps: float | None = None,
    crf: int = 23,
    threads: int = 0,
) -> bytes:
    """Decode `data` and re-encode it as H.264 mp4 with keyframe interval `gop`.

    `short_side` resizes so the shorter edge has that many pixels (aspect kept, sizes rounded to even);
    `fps` changes the frame rate by dropping/repeating frames (duration kept). Frames stream through one
    at a time, so long videos need no more memory than a frame.
    """
    import av

    container = _open(data)
    try:
        stream = container.streams.video[0]
        if threads == 1:  # one process of many: decode on this thread too
            stream.codec_context.thread_count = 1
        else:
            stream.thread_type = "AUTO"
        src_fps = _stream_fps(stream)
        dst_fps = fps if fps is not None else (src_fps or 30.0)
        ctx = stream.codec_context
        if not ctx.height or not ctx.width:
            raise ValueError("video stream reports no frame size")
        height, width = _target_size(ctx.height, ctx.width, short_side)

        def frames() -> Iterator[av.VideoFrame]:
            for frame in container.decode(stream):
                # on this thread: PyAV 17 would make a thread pool for every frame (see decode._rgb24)
                yield frame.reformat(width=width, height=height, format=_PIX_FMT, **reformat_threads(1))

        return _encode_frames(
            _resampled(frames(), src_fps, dst_fps),
            width=width,
            height=height,
            fps=dst_fps,
            gop=gop,
            codec="libx264",
            container="mp4",
            crf=crf,
            threads=threads,
        )
    except av.FFmpegError as err:
        raise ValueError(f"re-encode failed: {err}") from err
    finally:
        container.close()
