"""Packed variable-length attention and token packing: every CPU kernel equals per-sequence attention
(values and gradients), the kernel dispatch (CUDA choices checked without a GPU), the packed Attention
module against the padded one, and the packing helpers against hand-built layouts.

Shape legend: S sequences, T packed tokens, H heads, hd head dim, D width, B batch, K padded set size.
"""

from __future__ import annotations

import pytest
import torch

from data_pipelines.batch import MaskBatch
from vjepa.layers.attention import Attention
from vjepa.layers.varlen import VarlenLayout, attend_varlen, varlen_kernel
from vjepa.models.packing import PackedIndex, PackedMasks, interleave, unpack
from vjepa.models.tokens import token_coords

LENGTHS = (5, 5, 0, 3, 7, 7, 7, 1)  # runs of equal lengths, an empty sequence, a single token


def _manual(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    """Each sequence on its own with an explicit softmax; q, k, v [T, H, hd]."""
    out, start = [], 0
    for n in lengths:
        qs, ks, vs = (t[start : start + n].transpose(0, 1) for t in (q, k, v))  # [H, L, hd]
        scores = qs @ ks.transpose(-2, -1) / qs.shape[-1] ** 0.5  # [H, L, L]
        out.append((scores.softmax(-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(out)


def _qkv(total: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(total, 2, 8, generator=gen, dtype=torch.float64).requires_grad_(True) for _ in range(3)
    ]


@pytest.mark.parametrize("kernel", ["slices", "mask", "nested"])
def test_cpu_kernels_equal_per_sequence_attention(kernel: str) -> None:
    qkv = _qkv(sum(LENGTHS))
    layout = VarlenLayout(LENGTHS, device=torch.device("cpu"), kernel=kernel)
    got = attend_varlen(*qkv, layout)
    want = _manual(*qkv, LENGTHS)
    torch.testing.assert_close(got, want)
    weights = torch.randn_like(want)
    grads = torch.autograd.grad((got * weights).sum(), qkv)
    want_grads = torch.autograd.grad((want * weights).sum(), qkv)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)
    # Sensitive: one sequence attending over all rows gives something else.
    merged = _manual(*qkv, (sum(LENGTHS),))
    assert (merged - want).abs().max() > 1e-2


def test_runs_group_consecutive_equal_lengths() -> None:
    layout = VarlenLayout(LENGTHS, device=torch.device("cpu"))
    assert layout.runs() == [(0, 2, 5), (10, 1, 3), (13, 3, 7), (34, 1, 1)]
    assert layout.offsets().tolist() == [0, 5, 10, 10, 13, 20, 27, 34, 35]
    assert layout.sequence_ids().tolist()[:11] == [0] * 5 + [1] * 5 + [3]
    assert bool(layout.block_mask()[4, 0]) and not bool(layout.block_mask()[5, 4])


def test_kernel_dispatch() -> None:
    layout = VarlenLayout((3, 4), device=torch.device("cpu"))
    assert varlen_kernel(layout, torch.device("cpu"), "sdpa") == "slices"
    # The CUDA choices are pure logic: checked here without a GPU (their numerics are `gpu` tests).
    assert varlen_kernel(layout, torch.device("cuda"), "sdpa") == "nested"
    assert varlen_kernel(layout, torch.device("cuda"), "xformers") == "xformers"
    forced = VarlenLayout((3, 4), device=torch.device("cpu"), kernel="mask")
    assert varlen_kernel(forced, torch.device("cuda"), "sdpa") == "mask"
    with pytest.raises(ValueError, match="kernel"):
        VarlenLayout((3,), device=torch.device("cpu"), kernel="flash")
    with pytest.raises(ValueError, match="rows"):
        attend_varlen(*_qkv(6), layout)


@pytest.mark.parametrize("rope", [False, True])
def test_packed_attention_module_equals_one_sequence_at_a_time(rope: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(48, 2, rope=rope)
    lengths = (4, 9, 1, 9)
    x = torch.randn(sum(lengths), 48)  # [T, D]
    idx = torch.cat([torch.randperm(24)[:n] for n in lengths])  # [T] grid tokens (grid 2 x 3 x 4)
    coords = token_coords(idx, (2, 3, 4))  # [T, 3]
    got = attn(x, coords=coords if rope else None, layout=VarlenLayout(lengths, device=x.device))
    start = 0
    for n in lengths:
        rows = slice(start, start + n)
        alone = attn(x[None, rows], coords=coords[None, rows] if rope else None)[0]  # padded path, B = 1
        torch.testing.assert_close(got[rows], alone, atol=1e-5, rtol=1e-5)
        start += n


def _masks() -> MaskBatch:
    return MaskBatch.from_lists(
        [torch.tensor([4, 1]), torch.tensor([0, 7, 3])], [torch.tensor([2, 5, 6, 9]), torch.tensor([8])]
    )


def test_pack_and_unpack_padded_sets() -> None:
    m = _masks()
    packed = PackedIndex.from_padded(m.context_idx, m.context_valid, group=1)
    assert packed.layout.lengths == (2, 3)
    assert packed.sample.tolist() == [0, 0, 1, 1, 1] and packed.token.tolist() == [4, 1, 0, 7, 3]
    assert packed.group.tolist() == [1] * 5 and packed.flat(10).tolist() == [4, 1, 10, 17, 13]
    grid = torch.arange(2 * 10 * 1, dtype=torch.float32).view(2, 10, 1)  # [B, N, 1]: value = flat index
    assert packed.gather(grid)[:, 0].tolist() == [4, 1, 10, 17, 13]
    rows = torch.arange(5, dtype=torch.float32)[:, None] + 1  # [T, 1]
    assert unpack(rows, m.context_valid, 2)[..., 0].tolist() == [[1, 2, 0], [3, 4, 5]]
    both = PackedIndex.cat([packed, PackedIndex.from_padded(m.target_idx, m.target_valid)])
    assert both.layout.lengths == (2, 3, 4, 1) and both.group.tolist() == [1] * 5 + [0] * 5


def test_interleave_puts_each_sequence_context_then_target() -> None:
    m = _masks()
    ctx = PackedIndex.from_padded(m.context_idx, m.context_valid)
    tgt = PackedIndex.from_padded(m.target_idx, m.target_valid)
    seqs, order, target_rows = interleave(ctx, tgt)
    assert seqs.layout.lengths == (6, 4)
    assert seqs.token.tolist() == [4, 1, 2, 5, 6, 9, 0, 7, 3, 8]
    assert order.tolist() == [0, 1, 5, 6, 7, 8, 2, 3, 4, 9]  # rows of [context; target]
    assert target_rows.tolist() == [2, 3, 4, 5, 9]
    with pytest.raises(ValueError, match="sequences"):
        PackedMasks(ctx, PackedIndex.cat([tgt, tgt]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", ["nested", "xformers"])
def test_cuda_kernels_equal_per_sequence_attention(kernel: str) -> None:
    if kernel == "xformers":
        pytest.importorskip("xformers")
    lengths = (70, 33, 1, 33, 128)
    gen = torch.Generator().manual_seed(0)
    qkv = [
        torch.randn(sum(lengths), 4, 64, generator=gen).to("cuda", torch.bfloat16).requires_grad_(True)
        for _ in range(3)
    ]
    cuda = torch.device("cuda")
    assert (
        varlen_kernel(
            VarlenLayout(lengths, device=cuda), cuda, "xformers" if kernel == "xformers" else "sdpa"
        )
        == kernel
    )
    got = attend_varlen(*qkv, VarlenLayout(lengths, device=cuda, kernel=kernel))
    want = _manual(*(t.float() for t in qkv), lengths)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
    got.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in qkv)
