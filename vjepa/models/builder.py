"""Builders: models are constructed on the `meta` device (no memory, no init cost), then materialised on
the target device and initialised there. Nothing here calls `.cuda()`."""

from __future__ import annotations

import torch
from torch import nn

from vjepa.models.encoder import VisionTransformer3D
from vjepa.models.predictor import Predictor
from vjepa.models.registry import get_size


def _as_hw(crop: int | tuple[int, int]) -> tuple[int, int]:
    return (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))


def token_grid(*, frames: int, crop: int | tuple[int, int], patch: int, tubelet: int) -> tuple[int, int, int]:
    h, w = _as_hw(crop)
    if frames % tubelet:
        raise ValueError(f"frames={frames} is not divisible by the tubelet size {tubelet}")
    if h % patch or w % patch:
        raise ValueError(f"crop {h}x{w} is not divisible by the patch size {patch}")
    return frames // tubelet, h // patch, w // patch


def materialize(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """Allocates a meta-built model on `device` and initialises it; `device="meta"` keeps it abstract."""
    if device is not None and torch.device(device).type == "meta":
        return model
    model = model.to_empty(device=device or "cpu")
    model.init_weights()
    return model


def build_encoder(
    name: str,
    *,
    frames: int,
    crop: int | tuple[int, int],
    patch: int = 16,
    tubelet: int = 2,
    pos_embed: str = "sincos",
    rope_layout: str = "half",
    attention: str = "sdpa",
    grad_ckpt: bool = False,
    device: torch.device | str | None = None,
) -> VisionTransformer3D:
    """A 3D-patch ViT encoder of a registered size for clips of `frames` x `crop` (int or (h, w))."""
    size = get_size(name)
    grid = token_grid(frames=frames, crop=crop, patch=patch, tubelet=tubelet)
    with torch.device("meta"):
        model = VisionTransformer3D(
            width=size.width,
            depth=size.depth,
            heads=size.heads,
            mlp_hidden=size.mlp_hidden,
            grid=grid,
            patch=patch,
            tubelet=tubelet,
            pos_embed=pos_embed,
            rope_layout=rope_layout,
            attention=attention,
            grad_ckpt=grad_ckpt,
        )
    return materialize(model, device)


def build_predictor(
    *,
    embed_dim: int,
    frames: int,
    crop: int | tuple[int, int],
    patch: int = 16,
    tubelet: int = 2,
    width: int = 384,
    depth: int = 12,
    heads: int = 16,
    num_mask_tokens: int = 2,
    levels: int = 1,
    context_head: bool = False,
    pos_embed: str = "sincos",
    rope_layout: str = "half",
    attention: str = "sdpa",
    grad_ckpt: bool = False,
    device: torch.device | str | None = None,
) -> Predictor:
    """The narrow predictor for an encoder of width `embed_dim`, one mask token per mask configuration;
    `levels` target levels per token and a `context_head` for V-JEPA 2.1's loss (vjepa/dense/)."""
    grid = token_grid(frames=frames, crop=crop, patch=patch, tubelet=tubelet)
    with torch.device("meta"):
        model = Predictor(
            embed_dim=embed_dim,
            width=width,
            depth=depth,
            heads=heads,
            grid=grid,
            num_mask_tokens=num_mask_tokens,
            levels=levels,
            context_head=context_head,
            pos_embed=pos_embed,
            rope_layout=rope_layout,
            attention=attention,
            grad_ckpt=grad_ckpt,
        )
    return materialize(model, device)
