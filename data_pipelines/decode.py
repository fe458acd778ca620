"""Decoding chosen frames of a video held in memory: decord (fast seeks), PyAV as the fallback.

Shape legend: I the shape of the picked indices (e.g. C clips x T frames), K distinct frames among them,
H/W pixels; frames come back as [*I, H, W, 3] uint8 RGB.

The caller passes `pick(num_frames, fps) -> indices` because which frames to read depends on the video's
length and rate, known only once it is open. The indices may have any shape and repeat: the decoder reads
their sorted union once (seeks only move forward) and hands back a `DecodedVideo` holding the frames at
exactly those indices, together with the indices: what the caller needs comes back as the decode's
return value (through the runner's result), not through a list that `pick` fills on the decode thread.

Time bound: decord can hang on damaged files, inside C code, so each decode runs through a
`timeout.TimeoutRunner` (a long-lived helper thread, waited on with a timeout; see there why not a signal
alarm). After a few hung decodes the process refuses to go on rather than pile up stuck threads.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines.bad_samples import BadSampleError, DecodeTimeoutError, HungDecodesError
from data_pipelines.sampling import union_indices
from data_pipelines.timeout import CallTimedOut, TimeoutRunner

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

__all__ = [
    "DecodedVideo",
    "IndexPicker",
    "VideoDecoder",
    "decode_decord",
    "decode_pyav",
    "preload",
    "resolve_decoder",
]

log = logging.getLogger(__name__)

IndexPicker = Callable[[int, float], np.ndarray]  # (num_frames, fps) -> [*I] frame indices
MAX_ABANDONED_THREADS = 4


@dataclass(frozen=True)
class DecodedVideo:
    """The frames a decode produced: `frames[i]` is source frame `indices[i]` for every index position i."""

    frames: np.ndarray  # [*I, H, W, 3] uint8 RGB
    indices: np.ndarray  # [*I] int64, as `pick` returned them
    num_frames: int  # the video's frame count, as the decoder reported it
    fps: float  # its average frame rate


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


def preload(name: str) -> None:
    """Imports the library that decoder `name` resolves to, in this process, so that DataLoader workers
    forked afterwards find it loaded: otherwise every worker of every loader iteration imports it at its
    first decode (PyAV took about 60 ms to import, on a loader pass of about 1 s on the development VM)."""
    if resolve_decoder(name) != "pyav":  # (resolving "auto" or "decord" imported decord)
        return
    try:
        import av  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"data.decoder: 'pyav' is selected but cannot be imported ({err}); pip install av"
        ) from err


def _checked(indices: np.ndarray, num_frames: int) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim < 1 or indices.size == 0:
        raise ValueError(f"pick must return a non-empty index array, got shape {indices.shape}")
    if indices.min() < 0 or indices.max() >= num_frames:
        raise ValueError(f"frame indices must be in [0, {num_frames}), got {indices.tolist()}")
    return indices


def _gather(unique_frames: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Frames [K, H, W, 3] of the distinct indices -> [*I, H, W, 3] at `positions` [*I] into them; a view
    (no copy) when every distinct frame is used once, in order."""
    if positions.size == len(unique_frames) and np.array_equal(positions.ravel(), np.arange(positions.size)):
        return unique_frames.reshape(*positions.shape, *unique_frames.shape[1:])
    return unique_frames[positions]


def decode_decord(data: bytes, pick: IndexPicker) -> DecodedVideo:
    """The frames at the picked indices, decoded by decord from the bytes."""
    import decord

    # decord reports bad input as DECORDError, or RuntimeError (no handle), AssertionError (no frames),
    # IndexError (frame count overstated) from its Python wrapper
    failures = (decord.DECORDError, RuntimeError, AssertionError, IndexError)
    reader = None
    try:
        try:
            reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
            num_frames, fps = len(reader), float(reader.get_avg_fps())
        except failures as err:
            raise BadSampleError(f"decord cannot open the video: {_first_line(err)}") from err
        indices = _checked(pick(num_frames, fps), num_frames)  # [*I]
        unique, positions = union_indices(indices)  # [K], [*I]
        try:
            frames = reader.get_batch(unique.tolist()).asnumpy()  # [K, H, W, 3]
            reader.seek(0)  # works around decord's memory growth after get_batch
        except failures as err:
            if "DECORDArrayCopyFromTo" in str(err):  # decord bug on some frame widths (16, 24, 48, 72, ...)
                raise DecordLayoutError(
                    f"decord cannot copy out frames of this size: {_first_line(err)}"
                ) from err
            raise BadSampleError(f"decord failed to decode frames: {_first_line(err)}") from err
        return DecodedVideo(_gather(frames, positions), indices, num_frames, fps)
    finally:
        # Free decord's handle now, in this process. A reader left to the cyclic garbage collector can be
        # collected in a forked DataLoader worker, where freeing it joins a thread that does not exist
        # there and aborts the worker (std::system_error).
        del reader


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class DecordLayoutError(BadSampleError):
    """decord opened the video but cannot hand out its frames (a padded-row copy bug for some widths)."""


def decode_decord_or_pyav(data: bytes, pick: IndexPicker) -> DecodedVideo:
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


def decode_pyav(data: bytes, pick: IndexPicker, *, threads: int = 1) -> DecodedVideo:
    """The frames at the picked indices, decoded by PyAV (seeks to the keyframe before the first one, then
    decodes forward; frame index = round((pts - start) * time_base * fps)).

    `threads`: FFmpeg threads for the decode and for each frame's colour conversion; 1 (on the calling
    thread, see `_rgb24`), or 0 for FFmpeg's automatic count (`benchmarks/decode.py` compares them)."""
    import av

    if not data:
        raise BadSampleError("empty video data (0 bytes)")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise BadSampleError("no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = threads
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            num_frames = _pyav_frame_count(stream, container)
            if num_frames < 1 or fps <= 0:
                raise BadSampleError(f"cannot tell the frame count/rate (frames={num_frames}, fps={fps})")
            indices = _checked(pick(num_frames, fps), num_frames)  # [*I]
            unique, positions = union_indices(indices)  # [K], [*I]
            frames = _pyav_read(container, stream, unique, fps, threads)  # [K, H, W, 3]
            return DecodedVideo(_gather(frames, positions), indices, num_frames, fps)
    except av.FFmpegError as err:
        raise BadSampleError(f"PyAV cannot decode the video: {err}") from err


@functools.cache
def reformat_threads(threads: int) -> dict[str, int]:
    """Keyword arguments for PyAV's `reformat` / `to_ndarray` that convert with `threads` FFmpeg threads.
    PyAV 17 threads the conversion, by default with FFmpeg's automatic count; earlier versions take no
    such argument and convert on the calling thread."""
    import av

    return {"threads": threads} if int(av.__version__.split(".")[0]) >= 17 else {}


def _rgb24(frame: VideoFrame, threads: int) -> np.ndarray:
    """The frame as [H, W, 3] uint8 RGB, converted by `threads` FFmpeg threads (1: on this thread).

    PyAV's defaults thread both steps: the H.264 decoder with a pool of (cores + 1) slice threads, and (from
    PyAV 17) the colour conversion with a pool made for each frame. A clip's frames are small, so the
    hand-offs cost more than they save: on the 2-vCPU development VM a 16-frame clip of 128 x 128 took
    17-20 ms of CPU (7-9 ms of it in the kernel, about 270 context switches) with them and 7-9.5 ms without.
    The loader's parallelism is its workers, one decode each."""
    return frame.to_ndarray(format="rgb24", **reformat_threads(threads))


def _pyav_read(
    container: InputContainer, stream: VideoStream, wanted: np.ndarray, fps: float, threads: int
) -> np.ndarray:
    """Frames [K, H, W, 3] at the sorted distinct indices `wanted` [K]."""
    start_pts = stream.start_time or 0
    tb = float(stream.time_base)
    if wanted[0] > 0:
        container.seek(start_pts + int(wanted[0] / fps / tb), stream=stream, backward=True)
    got: dict[int, np.ndarray] = {}
    for frame in container.decode(stream):
        index = round((frame.pts - start_pts) * tb * fps) if frame.pts is not None else -1
        if index < wanted[len(got)]:
            continue
        rgb = _rgb24(frame, threads)
        rotation = getattr(frame, "rotation", 0)  # display matrix, degrees counter-clockwise (PyAV >= 14)
        if rotation:  # decord applies it; do the same so that both give upright frames
            rgb = np.ascontiguousarray(np.rot90(rgb, (rotation // 90) % 4))
        while len(got) < len(wanted) and wanted[len(got)] <= index:
            got[int(wanted[len(got)])] = rgb
        if len(got) == len(wanted):
            break
    if not got:
        raise BadSampleError(f"no frame decoded at or after index {int(wanted[0])}")
    # indices past the last decodable frame (a frame count that overstated) repeat the last frame
    last = got[max(got)]
    return np.stack([got.get(int(i), last) for i in wanted])


_BACKENDS: dict[str, Callable[[bytes, IndexPicker], DecodedVideo]] = {
    "decord": decode_decord_or_pyav,
    "pyav": decode_pyav,
}


class VideoDecoder:
    """Decodes picked frames with the configured backend on a helper thread, each video bounded by
    `timeout_s` (0: no bound). `submit` lets the caller work while the next video decodes."""

    def __init__(self, decoder: str = "auto", *, timeout_s: float = 30.0) -> None:
        self.backend = resolve_decoder(decoder)
        self.timeout_s = timeout_s
        self._runner = TimeoutRunner("video-decode")

    @property
    def abandoned(self) -> int:
        """Decodes that hung past the bound (their threads are stuck)."""
        return self._runner.abandoned

    def submit(self, data: bytes, pick: IndexPicker, *, image: bool = False) -> Callable[[], DecodedVideo]:
        """Queues the decode (of an image file with `image`) on the helper thread and returns a function
        that waits for its result (raising BadSampleError, or DecodeTimeoutError past the bound)."""
        if self.abandoned >= MAX_ABANDONED_THREADS:
            raise HungDecodesError(
                f"{self.abandoned} video decodes hung past data.decode_timeout_s={self.timeout_s}; "
                "their threads are stuck in the decoder, refusing to start more (check the data)"
            )
        if image:
            from data_pipelines.images import decode_image as decode
        else:
            decode = _BACKENDS[self.backend]
        job = self._runner.submit(lambda: decode(data, pick))

        def wait() -> DecodedVideo:
            try:
                video = self._runner.result(job, self.timeout_s)
            except CallTimedOut:
                raise DecodeTimeoutError(
                    f"{self.backend} decode took longer than {self.timeout_s} s"
                ) from None
            frames = video.frames
            if (
                frames.shape[:-3] != video.indices.shape
                or frames.ndim != video.indices.ndim + 3
                or frames.shape[-1] != 3
                or frames.dtype != np.uint8
            ):
                raise BadSampleError(
                    f"decoder returned frames of shape {frames.shape} {frames.dtype} "
                    f"for indices of shape {video.indices.shape}"
                )
            return video

        return wait

    def __call__(self, data: bytes, pick: IndexPicker) -> DecodedVideo:
        return self.submit(data, pick)()
