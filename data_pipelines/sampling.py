"""Which frames of a video make a clip, for training and evaluation alike: frame step or target fps,
several clips per video, short videos.

Shape legend: C clips per video, T frames per clip.

With C clips, the range of valid clip starts is cut into C equal parts and one start is taken in each, so
the clips cover the video in order: drawn uniformly within the part for training, its middle for
evaluation (the deterministic temporal segments; one centred clip when C = 1). The decoder reads the
sorted union of all clips' indices once (its seeks only move forward) and the clips are gathered from it.
A video shorter than one clip gets start 0 and its last frame repeated (or is rejected when padding is
off).
"""

from __future__ import annotations

import numpy as np

from data_pipelines.bad_samples import BadSampleError

__all__ = ["clip_indices", "union_indices"]


def clip_indices(
    num_frames: int,
    video_fps: float,
    *,
    frames: int,
    frame_step: int,
    fps: float | None,
    num_clips: int,
    pad: bool,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """[C, T] int64 frame indices; each row is sorted and clip starts never decrease.

    The step between sampled frames is `frame_step` source frames, or video_fps / fps when `fps` is set
    (a fractional step; indices are floored). Clip c starts at a uniform draw from `rng` in its part of
    the start range, or at the middle of the part when `rng` is None. BadSampleError when the video is
    shorter than one clip and `pad` is False, or has no frames.
    """
    if num_frames < 1:
        raise BadSampleError("video has no frames")
    step = float(frame_step)
    if fps is not None:
        if video_fps <= 0:
            raise BadSampleError(f"video reports no frame rate; cannot sample at data.fps={fps}")
        step = video_fps / fps
    offsets = np.arange(frames) * step  # [T] positions relative to the clip start
    span = int(np.floor(offsets[-1])) + 1  # source frames one clip covers
    slack = num_frames - span  # room for the clip start
    if slack < 0 and not pad:
        raise BadSampleError(f"video has {num_frames} frames, a clip needs {span} (data.pad_short is off)")
    slack = max(slack, 0)
    # clip c starts in [c, c + 1) * slack / C, so starts never decrease
    if rng is None:
        starts = (np.arange(num_clips) + 0.5) * slack / num_clips  # [C] the middle of each part
    else:
        starts = (np.arange(num_clips) + rng.random(num_clips)) * (slack / num_clips)  # [C]
    starts = np.minimum(np.floor(starts), slack)
    indices = np.floor(starts[:, None] + offsets[None, :]).astype(np.int64)  # [C, T]
    return np.minimum(indices, num_frames - 1)


def union_indices(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique frame indices [K], positions [C, T] into them) for decoding clips in one pass."""
    unique = np.unique(indices)
    return unique, np.searchsorted(unique, indices)
