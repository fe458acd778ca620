"""Decoding chosen frames of a video held in memory: decord (fast seeks), PyAV as the fallback.

Shape legend: K frames asked for, H/W pixels; frames come back as [K, H, W, 3] uint8 RGB.

The caller passes `pick(num_frames, fps) -> indices` (sorted, may repeat) because which frames to read
depends on the video's length and rate, known only once it is open.

Time bound: decord can hang on damaged files, inside C code. A signal-based alarm cannot interrupt that
(Python runs signal handlers only between bytecodes, in the main thread), so each decode runs in a daemon
thread and the caller waits with a join timeout. decord (ctypes calls) and PyAV release the GIL while
decoding, so the waiting thread wakes on time even while the decoder is stuck. A stuck thread cannot be
killed; it is abandoned (a daemon, so it never blocks the worker's exit), and after a few of them the
process refuses to go on rather than pile up stuck decoders. This works in DataLoader worker processes and
in the main process alike.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines.bad_samples import BadSampleError, DecodeTimeoutError

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

__all__ = ["IndexPicker", "VideoDecoder", "decode_decord", "decode_pyav", "resolve_decoder"]

log = logging.getLogger(__name__)

IndexPicker = Callable[[int, float], np.ndarray]  # (num_frames, fps) -> [K] sorted frame indices
MAX_ABANDONED_THREADS = 4


def resolve_decoder(name: str) -> str:
    """'auto' -> 'decord' when it imports, else 'pyav'; 'decord' without decord installed is an error."""
    if name == "pyav":
        return name
    try:
        import decord  # noqa: F401
    except ImportError as err:
        if name == "decord":
            raise ValueError(
                "data.decoder: 'decord' is selected but cannot be imported "
                f"({err}); install decord (x86_64 only) or set data.decoder=pyav"
            ) from err
        return "pyav"
    if name not in ("auto", "decord"):
        raise ValueError(f"data.decoder: unknown decoder {name!r} (auto | decord | pyav)")
    return "decord"


def _checked(indices: np.ndarray, num_frames: int) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"pick must return a non-empty 1-D index array, got shape {indices.shape}")
    if indices.min() < 0 or indices.max() >= num_frames or np.any(np.diff(indices) < 0):
        raise ValueError(f"frame indices must be sorted and in [0, {num_frames}), got {indices.tolist()}")
    return indices


def decode_decord(data: bytes, pick: IndexPicker) -> np.ndarray:
    """[K, H, W, 3] uint8 frames at the picked indices, decoded by decord from the bytes."""
    import decord

    # decord reports bad input as DECORDError, or RuntimeError (no handle), AssertionError (no frames),
    # IndexError (frame count overstated) from its Python wrapper
    failures = (decord.DECORDError, RuntimeError, AssertionError, IndexError)
    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        num_frames, fps = len(reader), float(reader.get_avg_fps())
    except failures as err:
        raise BadSampleError(f"decord cannot open the video: {str(err).splitlines()[0]}") from err
    if num_frames < 1:
        raise BadSampleError("video has no frames")
    indices = _checked(pick(num_frames, fps), num_frames)
    unique, inverse = np.unique(indices, return_inverse=True)
    try:
        frames = reader.get_batch(unique.tolist()).asnumpy()
        reader.seek(0)  # works around decord's memory growth after get_batch
    except failures as err:
        message = str(err).splitlines()[0]
        if "DECORDArrayCopyFromTo" in message:  # decord bug on some frame widths (16, 24, 48, 72, ...)
            raise DecordLayoutError(f"decord cannot copy frames of this size: {message}") from err
        raise BadSampleError(f"decord failed to decode frames: {message}") from err
    return frames[inverse]


class DecordLayoutError(BadSampleError):
    """decord opened the video but cannot hand out its frames (a padded-row copy bug for some widths)."""


def decode_decord_or_pyav(data: bytes, pick: IndexPicker) -> np.ndarray:
    """decord, and PyAV for the videos whose frame size decord cannot copy out (logged)."""
    try:
        return decode_decord(data, pick)
    except DecordLayoutError as err:
        log.info("%s; decoding this video with PyAV", err)
        return decode_pyav(data, pick)


def _pyav_frame_count(stream: VideoStream, container: InputContainer) -> int:
    if stream.frames > 0:
        return int(stream.frames)
    duration = stream.duration * stream.time_base if stream.duration else container.duration / 1e6
    rate = stream.average_rate or stream.guessed_rate
    return int(round(float(duration) * float(rate))) if duration and rate else 0


def decode_pyav(data: bytes, pick: IndexPicker) -> np.ndarray:
    """[K, H, W, 3] uint8 frames at the picked indices, decoded by PyAV (seeks to the keyframe before the
    first one, then decodes forward; frame index = round((pts - start) * time_base * fps))."""
    import av

    if not data:
        raise BadSampleError("empty video data (0 bytes)")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise BadSampleError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            num_frames = _pyav_frame_count(stream, container)
            if num_frames < 1 or fps <= 0:
                raise BadSampleError(f"cannot tell the frame count/rate (frames={num_frames}, fps={fps})")
            indices = _checked(pick(num_frames, fps), num_frames)
            return _pyav_read(container, stream, indices, fps)
    except av.FFmpegError as err:
        raise BadSampleError(f"PyAV cannot decode the video: {err}") from err


def _pyav_read(container: InputContainer, stream: VideoStream, indices: np.ndarray, fps: float) -> np.ndarray:
    start_pts = stream.start_time or 0
    tb = float(stream.time_base)
    if indices[0] > 0:
        container.seek(start_pts + int(indices[0] / fps / tb), stream=stream, backward=True)
    wanted = np.unique(indices)
    got: dict[int, np.ndarray] = {}
    for frame in container.decode(stream):
        index = round((frame.pts - start_pts) * tb * fps) if frame.pts is not None else -1
        if index < wanted[len(got)]:
            continue
        rgb = frame.to_ndarray(format="rgb24")
        while len(got) < len(wanted) and wanted[len(got)] <= index:
            got[int(wanted[len(got)])] = rgb
        if len(got) == len(wanted):
            break
    if not got:
        raise BadSampleError(f"no frame decoded at or after index {int(wanted[0])}")
    # indices past the last decodable frame (a frame count that overstated) repeat the last frame
    last = got[max(got)]
    return np.stack([got.get(int(i), last) for i in indices])


def _call_with_timeout(fn: Callable[[], np.ndarray], timeout_s: float) -> tuple[np.ndarray, bool]:
    """(fn(), False), or (empty, True) when fn did not finish within timeout_s (its thread abandoned)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the waiting thread, re-raised there
            box["error"] = err

    thread = threading.Thread(target=run, name="video-decode", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return np.empty(0, dtype=np.uint8), True
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"], False  # type: ignore[return-value]


_BACKENDS: dict[str, Callable[[bytes, IndexPicker], np.ndarray]] = {
    "decord": decode_decord_or_pyav,
    "pyav": decode_pyav,
}


class VideoDecoder:
    """Decodes picked frames with the configured backend, each video bounded by `timeout_s` (0: no bound)."""

    def __init__(self, decoder: str = "auto", *, timeout_s: float = 30.0) -> None:
        self.backend = resolve_decoder(decoder)
        self.timeout_s = timeout_s
        self.abandoned = 0

    def __call__(self, data: bytes, pick: IndexPicker) -> np.ndarray:
        decode = _BACKENDS[self.backend]
        if self.timeout_s <= 0:
            frames = decode(data, pick)
        else:
            if self.abandoned >= MAX_ABANDONED_THREADS:
                raise RuntimeError(
                    f"{self.abandoned} video decodes hung past data.decode_timeout_s={self.timeout_s}; "
                    "their threads are stuck in the decoder, refusing to start more (check the data)"
                )
            frames, timed_out = _call_with_timeout(lambda: decode(data, pick), self.timeout_s)
            if timed_out:
                self.abandoned += 1
                raise DecodeTimeoutError(f"{self.backend} decode took longer than {self.timeout_s} s")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise BadSampleError(f"decoder returned frames of shape {frames.shape} {frames.dtype}")
        return frames
