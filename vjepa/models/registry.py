"""Named encoder sizes. Widths, depths and heads of the published V-JEPA sizes, plus tiny test sizes built
by the same factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSize:
    width: int
    depth: int
    heads: int
    mlp_hidden: int


MODEL_SIZES: dict[str, ModelSize] = {}


def register_size(name: str) -> Callable[[Callable[[], ModelSize]], Callable[[], ModelSize]]:
    def wrap(fn: Callable[[], ModelSize]) -> Callable[[], ModelSize]:
        if name in MODEL_SIZES:
            raise ValueError(f"model size {name!r} registered twice")
        MODEL_SIZES[name] = fn()
        return fn

    return wrap


def get_size(name: str) -> ModelSize:
    if name not in MODEL_SIZES:
        raise ValueError(f"model.name: unknown size {name!r} (known: {', '.join(MODEL_SIZES)})")
    return MODEL_SIZES[name]


@register_size("vit_test")
def vit_test() -> ModelSize:  # for unit tests: two blocks, head dim 16
    return ModelSize(width=48, depth=2, heads=3, mlp_hidden=192)


@register_size("vit_micro")
def vit_micro() -> ModelSize:  # CPU quickstart and demo
    return ModelSize(width=96, depth=4, heads=3, mlp_hidden=384)


@register_size("vit_tiny")
def vit_tiny() -> ModelSize:
    return ModelSize(width=192, depth=12, heads=3, mlp_hidden=768)


@register_size("vit_small")
def vit_small() -> ModelSize:
    return ModelSize(width=384, depth=12, heads=6, mlp_hidden=1536)


@register_size("vit_base")
def vit_base() -> ModelSize:
    return ModelSize(width=768, depth=12, heads=12, mlp_hidden=3072)


@register_size("vit_large")
def vit_large() -> ModelSize:
    return ModelSize(width=1024, depth=24, heads=16, mlp_hidden=4096)


@register_size("vit_huge")
def vit_huge() -> ModelSize:
    return ModelSize(width=1280, depth=32, heads=16, mlp_hidden=5120)


@register_size("vit_giant")
def vit_giant() -> ModelSize:  # V-JEPA 2 "ViT-g"
    return ModelSize(width=1408, depth=40, heads=22, mlp_hidden=6144)


# The published vit_gigantic constructors pass a misspelt `mpl_ratio=64/13`, which their ViT swallows in
# **kwargs, so the MLP ratio stays at 4 (hidden 6656, not 8192): checkpoints trained with that code carry 6656.
@register_size("vit_gigantic")
def vit_gigantic() -> ModelSize:
    return ModelSize(width=1664, depth=48, heads=16, mlp_hidden=6656)


@register_size("vit_gigantic_xformers")
def vit_gigantic_xformers() -> ModelSize:  # the same weights' shapes with 26 heads of 64 channels
    return ModelSize(width=1664, depth=48, heads=26, mlp_hidden=6656)


def find_size(*, width: int, depth: int, mlp_hidden: int, heads: int | None = None) -> str:
    """The first registered size with these weight shapes (and `heads`, when given). The head count is not
    visible in the weights (qkv is [3D, D] for any split), so where several sizes share the shapes the first
    registered one wins unless `heads` says otherwise."""
    for name, size in MODEL_SIZES.items():
        shapes = (size.width, size.depth, size.mlp_hidden) == (width, depth, mlp_hidden)
        if shapes and (heads is None or size.heads == heads):
            return name
    known = ", ".join(f"{n} ({s.width}/{s.depth}/{s.heads}/{s.mlp_hidden})" for n, s in MODEL_SIZES.items())
    heads_note = f", {heads} heads" if heads is not None else ""
    raise ValueError(
        f"no registered encoder size has width {width}, depth {depth}, MLP width {mlp_hidden}{heads_note} "
        f"(known width/depth/heads/MLP: {known})"
    )
