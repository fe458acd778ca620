"""What the probe sees of a video: each eval clip as its own view, or (attend_across_segments, as the
published K400/SSv2 probes do) the tokens of all temporal segments of one spatial view together.

Shape legend: M videos, S temporal segments, V spatial views, N tokens per clip, D width. The eval clips of
a video are ordered segment-major: clip index = s * V + v.
"""

from __future__ import annotations

import torch

from vjepa.eval.extract import FeatureSet

__all__ = ["join_segments", "segment_views"]


def segment_views(tokens: torch.Tensor, segments: int, attend_across_segments: bool) -> torch.Tensor:
    """Tokens [M, S*V, N, D] -> [M, V, S*N, D] (segment-major within a view) when attend_across_segments,
    else unchanged (every clip a view)."""
    if not attend_across_segments:
        return tokens
    m, clips, n, d = tokens.shape
    if segments < 1 or clips % segments:
        raise ValueError(
            f"attend_across_segments: {clips} clips per video is not a multiple of {segments} segments"
        )
    views = clips // segments
    x = tokens.view(m, segments, views, n, d).transpose(1, 2)  # [M, V, S, N, D]
    return x.reshape(m, views, segments * n, d)  # [M, V, S*N, D]


def join_segments(features: FeatureSet) -> FeatureSet:
    """The features with the segments of every spatial view joined into one view (meta "segments" and
    "spatial_views" from the extraction); a token grid (T, H, W) in meta becomes (S*T, H, W)."""
    meta = features.meta
    for key in ("segments", "spatial_views"):
        if not isinstance(meta.get(key), int):
            raise ValueError(f"attend_across_segments: the features' meta has no integer {key!r}")
    segments, spatial = meta["segments"], meta["spatial_views"]
    if features.tokens.shape[1] != segments * spatial:
        raise ValueError(
            f"attend_across_segments: {features.tokens.shape[1]} clips per video, but meta says "
            f"{segments} segments x {spatial} spatial views"
        )
    tokens = segment_views(features.tokens, segments, True)
    joined = {**meta, "segments": 1, "joined_segments": segments}
    if meta.get("grid") is not None:
        t, h, w = meta["grid"]
        joined["grid"] = (segments * t, h, w)
    return FeatureSet(tokens, features.labels, features.keys, joined)
