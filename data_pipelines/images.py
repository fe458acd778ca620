"""Images as 1-frame clips: an image source's JPEG/PNG/WebP samples decode to the same `DecodedVideo` a video
gives, with every picked index 0, so cropping, batching and masking treat them like clips of one frame.

Shape legend: C clips per sample, H/W pixels.
"""

from __future__ import annotations

import io

import numpy as np

from data_pipelines.bad_samples import BadSampleError
from data_pipelines.decode import DecodedVideo, IndexPicker

__all__ = ["decode_image"]


def decode_image(data: bytes, pick: IndexPicker) -> DecodedVideo:
    """Image bytes -> frames [*I, H, W, 3] uint8 at `pick(1, 0.0)`'s indices (all 0: the one frame);
    BadSampleError when the bytes are not a readable image."""
    from PIL import Image, UnidentifiedImageError  # imported on the first image only

    if not data:
        raise BadSampleError("empty image file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            frame = np.asarray(image.convert("RGB"), dtype=np.uint8)  # [H, W, 3]
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise BadSampleError(f"cannot decode image: {str(err).strip()[:200] or type(err).__name__}") from None
    indices = np.asarray(pick(1, 0.0), dtype=np.int64)  # [*I], zeros
    if indices.size and int(indices.max()) > 0:
        raise BadSampleError(f"an image has one frame, but frames {sorted(set(indices.flat))} were picked")
    frames = np.broadcast_to(frame, (*indices.shape, *frame.shape)).copy()  # [*I, H, W, 3]
    return DecodedVideo(frames=frames, indices=indices, num_frames=1, fps=0.0)
