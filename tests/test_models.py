"""Encoder and predictor: sizes, checkpoint key names, positions (sin-cos and RoPE), init, and the proof that
a padded variable-length batch gives exactly what each sample gives alone.

Shape legend: B batch, N grid tokens, Kc/Kt context/target tokens, D width, H heads, hd head dim.
"""

from __future__ import annotations

import math

import pytest
import torch

from data_pipelines.batch import MaskBatch
from vjepa.layers.pos_embed import Rope3D, grid_coords, sincos_3d
from vjepa.models import MODEL_SIZES, build_encoder, build_predictor
from vjepa.models.tokens import token_coords
from vjepa.objective import jepa_loss, target_features

# Published encoder sizes at 16 x 224 x 224 (REFERENCE.md). vit_tiny's "~5.5M" is a rounded figure: the
# architecture in the table (D 192, depth 12, MLP 768) plus the tubelet embedding is 5.63M, hence 3 %.
ENCODER_PARAMS = {
    "vit_tiny": (5.5e6, 0.03),
    "vit_small": (22e6, 0.02),
    "vit_base": (86e6, 0.02),
    "vit_large": (303.9e6, 0.005),
    "vit_huge": (631.6e6, 0.005),
    "vit_giant": (1.01e9, 0.01),
}


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _std(t: torch.Tensor) -> float:
    return float(t.detach().std())


def _randomize(*models: torch.nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Large random weights (and mask tokens): with the 0.02 init every attention map is nearly uniform,
    which would hide a padding leak below the test tolerance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * std)


# ----------------------------------------------------------------------------- sizes and key names


@pytest.mark.parametrize("name", sorted(ENCODER_PARAMS))
def test_encoder_parameter_counts_match_published_sizes(name: str) -> None:
    expected, rel = ENCODER_PARAMS[name]
    model = build_encoder(name, frames=16, crop=224, device="meta")
    assert _num_params(model) == pytest.approx(expected, rel=rel)
    assert model.pos_embed.shape == (1, 1568, MODEL_SIZES[name].width)  # a buffer, not a parameter


def test_vit_large_exact_count() -> None:
    model = build_encoder("vit_large", frames=16, crop=224, device="meta")
    d, depth, hidden = 1024, 24, 4096
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (2 * d * hidden + hidden + d) + 4 * d
    assert _num_params(model) == (3 * 2 * 16 * 16 * d + d) + depth * per_block + 2 * d


def test_default_predictor_size() -> None:
    model = build_predictor(embed_dim=1024, frames=16, crop=224, device="meta")
    assert _num_params(model) == pytest.approx(22e6, rel=0.10)
    assert len(model.predictor_blocks) == 12 and model.predictor_blocks[0].attn.heads == 16


def test_all_registered_sizes_build_on_meta() -> None:
    for name, size in MODEL_SIZES.items():
        model = build_encoder(name, frames=4, crop=32, device="meta")
        assert len(model.blocks) == size.depth
        assert all(p.is_meta for p in model.parameters())


def _encoder_keys(depth: int) -> set[str]:
    keys = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    return keys


def test_encoder_state_dict_keys_match_released_checkpoints() -> None:
    model = build_encoder("vit_test", frames=4, crop=32, device="meta")
    sd = model.state_dict()
    assert set(sd) == _encoder_keys(depth=2)
    d = MODEL_SIZES["vit_test"].width
    assert sd["patch_embed.proj.weight"].shape == (d, 3, 2, 16, 16)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * d, d)
    assert sd["pos_embed"].shape == (1, 2 * 2 * 2, d)
    rope = build_encoder("vit_test", frames=4, crop=32, pos_embed="rope", device="meta")
    assert set(rope.state_dict()) == _encoder_keys(depth=2) - {"pos_embed"}  # V-JEPA 2: no table


def test_predictor_state_dict_keys_match_released_checkpoints() -> None:
    model = build_predictor(embed_dim=48, frames=4, crop=32, width=32, depth=2, heads=2, device="meta")
    keys = {
        "predictor_pos_embed", "predictor_embed.weight", "predictor_embed.bias", "mask_tokens.0",
        "mask_tokens.1", "predictor_norm.weight", "predictor_norm.bias", "predictor_proj.weight",
        "predictor_proj.bias",
    }  # fmt: skip
    for i in range(2):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"predictor_blocks.{i}.{part}.weight", f"predictor_blocks.{i}.{part}.bias"}
    sd = model.state_dict()
    assert set(sd) == keys
    assert sd["mask_tokens.0"].shape == (1, 1, 32)
    assert sd["predictor_proj.weight"].shape == (48, 32)


# ----------------------------------------------------------------------------- 3D sin-cos


def _omega(i: int, axis_width: int) -> float:
    return 1.0 / 10000 ** (i / (axis_width / 2))


def test_sincos_3d_square_grid_against_hand_computation() -> None:
    table = sincos_3d(1024, (8, 14, 14))  # 16 frames x 224 crop, tubelet 2, patch 16
    assert table.shape == (1568, 1024) and table.dtype == torch.float32
    a = math.ceil(1024 / 6) * 2  # 344 channels per axis; width keeps 1024 - 2*344 = 336 of its 344
    t, h, w = 3, 5, 7
    n = t * 14 * 14 + h * 14 + w
    expected = {
        0: math.sin(t),  # time block first, sin half first
        1: math.sin(t * _omega(1, a)),
        a // 2: math.cos(t),
        a // 2 + 9: math.cos(t * _omega(9, a)),
        a: math.sin(h),
        a + 2: math.sin(h * _omega(2, a)),
        a + a // 2: math.cos(h),
        2 * a: math.sin(w),
        2 * a + 5: math.sin(w * _omega(5, a)),
        2 * a + a // 2: math.cos(w),
        1023: math.cos(w * _omega(1023 - 2 * a - a // 2, a)),  # the cut falls inside width's cos half
    }
    for channel, value in expected.items():
        assert float(table[n, channel]) == pytest.approx(value, abs=1e-6), channel
    # The first channel is sin(t) for every token, constant within a time step.
    times = grid_coords((8, 14, 14))[:, 0].double()
    torch.testing.assert_close(table[:, 0].double(), times.sin(), atol=1e-6, rtol=0)


def test_sincos_3d_non_square_grid() -> None:
    grid = (8, 14, 10)  # 16 frames, crop (224, 160)
    table = sincos_3d(96, grid)
    assert table.shape == (8 * 14 * 10, 96)
    t, h, w = 7, 13, 9  # the last token
    row = table[-1]
    assert float(row[0]) == pytest.approx(math.sin(t), abs=1e-6)
    assert float(row[32]) == pytest.approx(math.sin(h), abs=1e-6)
    assert float(row[64]) == pytest.approx(math.sin(w), abs=1e-6)
    assert float(row[95]) == pytest.approx(math.cos(w * _omega(15, 32)), abs=1e-6)
    # Height and width are not swapped: token (0, 1, 0) differs from (0, 0, 1) in the height block only.
    torch.testing.assert_close(table[10, 32:64], sincos_3d(96, (1, 14, 1))[1, 32:64])
    torch.testing.assert_close(table[1, 64:], sincos_3d(96, (1, 1, 10))[1, 64:])


@pytest.mark.parametrize("crop", [224, (224, 160)])
def test_encoder_pos_embed_is_the_sincos_table(crop: int | tuple[int, int]) -> None:
    model = build_encoder("vit_test", frames=16, crop=crop, device="cpu")
    grid = (8, 14, 14) if crop == 224 else (8, 14, 10)
    assert model.grid == grid
    torch.testing.assert_close(model.pos_embed, sincos_3d(48, grid)[None])
    assert not model.pos_embed.requires_grad and "pos_embed" not in dict(model.named_parameters())


def test_trilinear_position_interpolation_follows_axes() -> None:
    model = build_encoder("vit_test", frames=4, crop=(32, 48), device="cpu")  # grid 2 x 2 x 3
    built = model.grid
    coords = grid_coords(built).double()  # [N, 3]
    weights = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    # A table linear in (t, h, w): trilinear interpolation reproduces it exactly inside the grid.
    with torch.no_grad():
        model.pos_embed.copy_((coords @ weights).float()[None, :, None].expand(1, -1, 48))
    new = (4, 3, 5)
    table = model.positions(new)
    assert table.shape == (1, 4 * 3 * 5, 48)

    def src(i: torch.Tensor, size_in: int, size_out: int) -> torch.Tensor:  # align_corners=False
        return ((i + 0.5) * size_in / size_out - 0.5).clamp(0, size_in - 1)

    out = grid_coords(new).double()
    expected = sum(weights[a] * src(out[:, a], built[a], new[a]) for a in range(3))
    torch.testing.assert_close(table[0, :, 0].double(), expected, atol=1e-4, rtol=0)
    assert model.positions(built) is model.pos_embed
    # A clip of another size runs through the interpolated table.
    clips = torch.randn(2, 3, 8, 48, 80)
    assert model(clips).shape == (2, 4 * 3 * 5, 48)


# ----------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("grid", [(2, 4, 4), (2, 3, 5)])
def test_rope_shapes_and_norms(grid: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    rope = Rope3D(64)
    assert rope.axis_dim == 20  # 20 + 20 + 20 rotated, 4 left as they are
    n = grid[0] * grid[1] * grid[2]
    coords = grid_coords(grid)[None].expand(2, -1, -1)  # [B, N, 3]
    x = torch.randn(2, 4, n, 64, generator=gen)  # [B, H, N, hd]
    out = rope.apply(x, coords)
    assert out.shape == x.shape
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out[..., 60:], x[..., 60:])
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])  # coordinate (0, 0, 0) is the identity
    assert not torch.allclose(out[:, :, -1], x[:, :, -1])
    # token_coords inverts the time-major token index for square and non-square grids.
    idx = torch.arange(n)[None]
    torch.testing.assert_close(token_coords(idx, grid)[0], grid_coords(grid))


def test_rope_dot_products_depend_only_on_coordinate_differences() -> None:
    gen = torch.Generator().manual_seed(1)
    rope = Rope3D(48)
    q = torch.randn(1, 2, 10, 48, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 10, 48, generator=gen, dtype=torch.float64)
    coords = torch.randint(0, 8, (1, 10, 3), generator=gen)

    def scores(c: torch.Tensor) -> torch.Tensor:
        return rope.apply(q, c) @ rope.apply(k, c).transpose(-2, -1)  # [1, H, 10, 10]

    base = scores(coords)
    shifted = scores(coords + torch.tensor([3, -2, 5]))
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-5)
    moved = coords.clone()
    moved[0, 0] += torch.tensor([0, 0, 1])  # one token moves: its scores change
    assert (scores(moved)[..., 0, 1:] - base[..., 0, 1:]).abs().max() > 1e-2


# ----------------------------------------------------------------------------- forward shapes and init


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
@pytest.mark.parametrize("crop", [32, (32, 48), (64, 32)])
def test_encoder_and_predictor_shapes(pos_embed: str, crop: int | tuple[int, int]) -> None:
    enc = build_encoder("vit_test", frames=4, crop=crop, pos_embed=pos_embed, device="cpu")
    pred = build_predictor(
        embed_dim=48, frames=4, crop=crop, width=32, depth=1, heads=2, pos_embed=pos_embed, device="cpu"
    )
    h, w = (crop, crop) if isinstance(crop, int) else crop
    n = 2 * (h // 16) * (w // 16)
    clips = torch.randn(2, 3, 4, h, w)
    assert enc(clips).shape == (2, n, 48)
    m = MaskBatch.from_lists(
        [torch.tensor([0, 2]), torch.tensor([1])], [torch.tensor([3]), torch.tensor([4, 5])]
    )
    z = enc(clips, m.context_idx, m.context_valid)
    assert z.shape == (2, 2, 48)
    out = pred(
        z, context_idx=m.context_idx, context_valid=m.context_valid, target_idx=m.target_idx,
        target_valid=m.target_valid, mask_index=1,
    )  # fmt: skip
    assert out.shape == (2, 2, 48) and torch.isfinite(out).all()


def test_built_models_have_no_meta_tensors() -> None:
    for pos_embed in ("sincos", "rope"):
        enc = build_encoder("vit_test", frames=4, crop=32, pos_embed=pos_embed, device="cpu")
        pred = build_predictor(
            embed_dim=48, frames=4, crop=32, width=32, depth=2, heads=2, pos_embed=pos_embed
        )
        for model in (enc, pred):
            tensors = list(model.parameters()) + list(model.buffers())
            assert tensors and not any(t.is_meta for t in tensors)
            assert all(torch.isfinite(t).all() for t in tensors)


@torch.no_grad()
def test_init_statistics() -> None:
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", frames=2, crop=16, device="cpu")
    assert _std(enc.patch_embed.proj.weight) == pytest.approx(0.02, rel=0.05)
    for layer, block in enumerate(enc.blocks, start=1):
        assert _std(block.attn.qkv.weight) == pytest.approx(0.02, rel=0.05)
        assert _std(block.mlp.fc1.weight) == pytest.approx(0.02, rel=0.05)
        # Residual output projections: 0.02 / sqrt(2 * layer), as in the reference.
        rescaled = 0.02 / math.sqrt(2.0 * layer)
        assert _std(block.attn.proj.weight) == pytest.approx(rescaled, rel=0.05)
        assert _std(block.mlp.fc2.weight) == pytest.approx(rescaled, rel=0.05)
        assert float(block.norm1.weight.min()) == 1.0 == float(block.norm1.weight.max())
    for name, p in enc.named_parameters():
        if name.endswith("bias"):
            assert float(p.abs().max()) == 0.0, name
    pred = build_predictor(embed_dim=192, frames=2, crop=16, width=96, depth=2, heads=4, device="cpu")
    assert all(float(t.abs().max()) == 0.0 for t in pred.mask_tokens)
    assert _std(pred.predictor_embed.weight) == pytest.approx(0.02, rel=0.05)
    assert _std(pred.predictor_proj.weight) == pytest.approx(0.02, rel=0.05)
    assert _std(pred.predictor_blocks[1].mlp.fc2.weight) == pytest.approx(0.01, rel=0.05)
    torch.testing.assert_close(pred.predictor_pos_embed, sincos_3d(96, (1, 1, 1))[None])


# ----------------------------------------------------------------------------- batched == per sample


def _random_masks(num_tokens: int, ctx_lens: list[int], tgt_lens: list[int], seed: int) -> MaskBatch:
    """Disjoint context / target index sets of the given (different) lengths, in random order."""
    gen = torch.Generator().manual_seed(seed)
    context, target = [], []
    for kc, kt in zip(ctx_lens, tgt_lens):
        perm = torch.randperm(num_tokens, generator=gen)
        context.append(perm[:kc])
        target.append(perm[kc : kc + kt])
    return MaskBatch.from_lists(context, target)


def _tiny_pair(pos_embed: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    enc = build_encoder("vit_test", frames=4, crop=(48, 64), pos_embed=pos_embed, device="cpu")  # 2x3x4
    pred = build_predictor(
        embed_dim=48, frames=4, crop=(48, 64), width=32, depth=2, heads=2, pos_embed=pos_embed, device="cpu"
    )
    _randomize(enc, pred)
    return enc, pred


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_batched_equals_per_sample_with_variable_length_masks(pos_embed: str) -> None:
    enc, pred = _tiny_pair(pos_embed)
    clips = torch.randn(3, 3, 4, 48, 64, generator=torch.Generator().manual_seed(2))
    m = _random_masks(24, ctx_lens=[5, 13, 9], tgt_lens=[11, 4, 8], seed=3)
    with torch.no_grad():
        z = enc(clips, m.context_idx, m.context_valid)  # [B, Kc, D]
        out = pred(
            z, context_idx=m.context_idx, context_valid=m.context_valid, target_idx=m.target_idx,
            target_valid=m.target_valid, mask_index=1,
        )  # fmt: skip
        for i in range(3):
            ctx, tgt = m.sample(i)
            z_i = enc(clips[i : i + 1], ctx[None])  # [1, kc_i, D], no padding anywhere
            out_i = pred(
                z_i, context_idx=ctx[None], context_valid=None, target_idx=tgt[None], target_valid=None,
                mask_index=1,
            )  # fmt: skip
            torch.testing.assert_close(z[i, : len(ctx)], z_i[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[i, : len(tgt)], out_i[0], atol=1e-5, rtol=1e-5)
        # The comparison is sensitive: attending to the padding rows changes the short samples.
        leaky = enc(clips, m.context_idx, None)
        assert (leaky[0, :5] - z[0, :5]).abs().max() > 1e-3


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_jepa_loss_with_padding_is_token_weighted_mean_of_per_sample_losses(pos_embed: str) -> None:
    enc, pred = _tiny_pair(pos_embed)
    target_enc, _ = _tiny_pair(pos_embed)
    _randomize(target_enc, seed=5)
    clips = torch.randn(3, 3, 4, 48, 64, generator=torch.Generator().manual_seed(4))
    masks = [
        _random_masks(24, ctx_lens=[6, 12, 3], tgt_lens=[10, 5, 14], seed=6),
        _random_masks(24, ctx_lens=[2, 4, 9], tgt_lens=[20, 18, 7], seed=7),
    ]
    targets = target_features(target_enc, clips)  # [B, N, D]
    out = jepa_loss(enc, pred, targets, clips, masks)
    expected_per_mask = []
    for k, m in enumerate(masks):
        total, count = 0.0, 0
        for i in range(3):
            ctx, tgt = m.sample(i)
            alone = [MaskBatch.from_lists([ctx], [tgt])]
            # The sample alone, with this configuration's mask token (index k): pad the mask list.
            alone = [alone[0]] * (k + 1)
            loss_i = jepa_loss(enc, pred, targets[i : i + 1], clips[i : i + 1], alone).loss_per_mask[k]
            total += loss_i * len(tgt)
            count += len(tgt)
        expected_per_mask.append(total / count)
    assert out.loss_per_mask == pytest.approx(expected_per_mask, abs=1e-5)
    assert float(out.loss.detach()) == pytest.approx(sum(expected_per_mask) / 2, abs=1e-5)
