"""Cropping clips on uint8 tensors (training augmentation and evaluation views), and the normalisation
the trainer applies on its device.

Shape legend: T frames, C = 3 channels, H/W input pixels, S output pixels (crop_size), V views, B batch.

Both paths cut clips with `crop_clip`; they differ only in where the box lies. Training: one random
resized crop (area fraction and aspect ratio drawn once, `crop_box`) and one flip decision per clip, so
every frame of a clip sees the same geometry. Evaluation (`spatial_views`): no randomness; the short side
is resized to S, then S x S boxes at the centre (V = 1) or at the start, middle and end of the long side
(V = 3). Clips stay uint8 until `normalize`, which the training step runs on its device: 4x fewer bytes
through the worker queues and the host-to-device copy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "augment_clip",
    "crop_box",
    "crop_clip",
    "normalize",
    "spatial_views",
    "view_boxes",
]

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def crop_box(
    height: int,
    width: int,
    *,
    scale: tuple[float, float],
    aspect: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> Box:
    """(top, left, h, w) of a crop covering a `scale` fraction of the frame with width/height in `aspect`
    (log-uniform); after `attempts` misses, the largest centred crop with the aspect clamped to the range."""
    area = height * width
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        target = area * _uniform(scale[0], scale[1], generator)
        ratio = math.exp(_uniform(log_lo, log_hi, generator))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    ratio = min(max(width / height, aspect[0]), aspect[1])
    w, h = (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def view_boxes(height: int, width: int, *, crop: int, views: int) -> list[Box]:
    """The `crop` x `crop` boxes of the evaluation views of a frame whose short side is `crop`: the centre
    (views = 1), or the start, middle and end of the long side (views = 3)."""
    long_side = max(height, width)
    offsets = [(long_side - crop) // 2] if views == 1 else [0, (long_side - crop) // 2, long_side - crop]
    if height >= width:
        return [(offset, (width - crop) // 2, crop, crop) for offset in offsets]
    return [((height - crop) // 2, offset, crop, crop) for offset in offsets]


def _frames_tchw(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Frames [T, H, W, 3] uint8 -> a [T, 3, H, W] view; ValueError for anything else."""
    video = torch.as_tensor(frames)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {tuple(video.shape)} {video.dtype}")
    return video.permute(0, 3, 1, 2)


def crop_clip(video_tchw: torch.Tensor, box: Box, *, size: int, flip: bool = False) -> torch.Tensor:
    """Frames [T, 3, H, W] -> clip [3, T, S, S]: the `box` of every frame resized to S x S (antialiased
    bilinear; a plain cut when the box is S x S already), mirrored left-right when `flip`."""
    top, left, h, w = box
    crop_tchw = TF.resized_crop(
        video_tchw, top, left, h, w, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True
    )  # [T, 3, S, S] uint8
    if flip:
        crop_tchw = crop_tchw.flip(-1)
    return crop_tchw.permute(1, 0, 2, 3)  # [3, T, S, S], a view: stacking the batch makes the copy


def augment_clip(
    frames: np.ndarray | torch.Tensor,
    *,
    size: int,
    scale: tuple[float, float],
    aspect: tuple[float, float],
    hflip: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Frames [T, H, W, 3] uint8 -> clip [3, T, S, S] uint8, one random resized crop and flip for all."""
    video_tchw = _frames_tchw(frames)
    height, width = video_tchw.shape[-2:]
    box = crop_box(height, width, scale=scale, aspect=aspect, generator=generator)
    flip = float(torch.rand((), generator=generator)) < hflip
    return crop_clip(video_tchw, box, size=size, flip=flip)


def spatial_views(frames: np.ndarray | torch.Tensor, *, crop: int, views: int) -> torch.Tensor:
    """Frames [T, H, W, 3] uint8 -> [V, 3, T, c, c] uint8 evaluation views (c = `crop`): short side resized
    to c, then a centre crop (V = 1) or crops at the start, middle and end of the long side (V = 3)."""
    video_tchw = _frames_tchw(frames)
    height, width = video_tchw.shape[-2:]
    if min(height, width) != crop:
        scale = crop / min(height, width)
        size = [max(crop, round(height * scale)), max(crop, round(width * scale))]
        video_tchw = TF.resize(video_tchw, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        height, width = size
    boxes = view_boxes(height, width, crop=crop, views=views)
    return torch.stack([crop_clip(video_tchw, box, size=crop) for box in boxes])  # [V, 3, T, c, c]


def normalize(clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips [..., 3, T, H, W] (e.g. [B, 3, T, H, W]) -> float32 with ImageNet mean/std, same device;
    contiguous whatever the clips' memory layout (the loader's batches are channels-last in memory)."""
    if clips.dtype != torch.uint8 or clips.ndim < 4 or clips.shape[-4] != 3:
        raise ValueError(f"clips must be uint8 [..., 3, T, H, W], got {tuple(clips.shape)} {clips.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, device=clips.device).view(3, 1, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=clips.device).view(3, 1, 1, 1) * 255.0)
    x = clips.to(torch.float32, memory_format=torch.contiguous_format)  # one copy, the transpose with it
    return x.sub_(mean).mul_(inv_std)
