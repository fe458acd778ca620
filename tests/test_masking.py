"""Spatiotemporal masks: distributions, invariants, padding, seeding and spec validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from data_pipelines.batch import MaskBatch
from data_pipelines.masking import MASK_KINDS, MaskGenerator, MaskSpec, default_mask_specs, draw_masks
from data_pipelines.masking.blocks import min_cover, place_blocks
from data_pipelines.masking.indices import cap_tokens, mask_to_indices, split_indices
from data_pipelines.masking.samplers import SAMPLERS

GRID = (8, 14, 14)  # 16 frames / tubelet 2, 224 px / patch 16
N = 8 * 14 * 14


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Masks are drawn in data-loader workers, which run one thread; small ops on a busy 2-core machine
    are many times slower with two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sets(m: MaskBatch) -> list[tuple[set[int], set[int]]]:
    return [tuple(set(x.tolist()) for x in m.sample(i)) for i in range(m.batch_size)]


def _assert_padding_consistent(m: MaskBatch) -> None:
    for idx, valid in ((m.context_idx, m.context_valid), (m.target_idx, m.target_valid)):
        assert idx.dtype == torch.int64 and valid.dtype == torch.bool and idx.shape == valid.shape
        assert idx.is_contiguous() and valid.is_contiguous()
        lengths = valid.sum(1)
        k = valid.shape[1]
        # valid flags form a prefix of each row, the longest row fills the width, padding holds index 0
        assert torch.equal(valid, torch.arange(k) < lengths.unsqueeze(1))
        assert int(lengths.max()) == k
        assert bool((idx[~valid] == 0).all())
        for row, v in zip(idx, valid):  # real entries ascending and unique
            r = row[v]
            assert bool((r[1:] > r[:-1]).all())


def _hidden_fraction(spec: MaskSpec, *, samples: int = 1000, batch: int = 8) -> float:
    gen = _gen(1)
    fractions = []
    for _ in range(samples // batch):
        (m,) = draw_masks([spec], grid=GRID, batch_size=batch, generator=gen)
        fractions.append(m.target_valid.sum(1).float() / N)
    return float(torch.cat(fractions).mean())


@pytest.mark.parametrize(("index", "expected"), [(0, 0.63), (1, 0.82)])
def test_multiblock_hidden_fraction_matches_reference(index: int, expected: float) -> None:
    assert _hidden_fraction(default_mask_specs()[index]) == pytest.approx(expected, abs=0.03)


def test_multiblock_context_and_target_partition_the_grid() -> None:
    specs = default_mask_specs() + [
        MaskSpec(num_blocks=3, spatial_scale=(0.1, 0.4), temporal_scale=(0.3, 0.8))
    ]
    for m in draw_masks(specs, grid=GRID, batch_size=16, generator=_gen()):
        _assert_padding_consistent(m)
        for context, target in _sets(m):
            assert context and target
            assert not context & target
            assert context | target == set(range(N))


def test_multiblock_block_size_shared_across_batch() -> None:
    spec = MaskSpec(num_blocks=1, spatial_scale=(0.05, 0.5), aspect_ratio=(0.5, 2.0))
    (m,) = draw_masks([spec], grid=GRID, batch_size=32, generator=_gen())
    assert len(set(m.target_valid.sum(1).tolist())) == 1  # one block of one size per batch
    assert len({tuple(t.tolist()) for _, t in (m.sample(i) for i in range(32))}) > 1  # positions differ


def test_multiblock_max_temporal_keep_limits_context_in_time() -> None:
    spec = MaskSpec(num_blocks=2, spatial_scale=(0.2, 0.2), max_temporal_keep=0.5)
    (m,) = draw_masks([spec], grid=GRID, batch_size=8, generator=_gen())
    for context, target in _sets(m):
        assert context and max(context) < 4 * 14 * 14
        assert context | target == set(range(N))


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_max_context_tokens_keeps_a_random_subset(kind: str) -> None:
    spec = MaskSpec(kind=kind, max_context_tokens=50)
    (full,) = draw_masks(
        [dataclasses.replace(spec, max_context_tokens=None)], grid=GRID, batch_size=4, generator=_gen(3)
    )
    (capped,) = draw_masks([spec], grid=GRID, batch_size=4, generator=_gen(3))
    _assert_padding_consistent(capped)
    assert capped.context_idx.shape[1] == 50
    for (c_full, t_full), (c_cap, t_cap) in zip(_sets(full), _sets(capped)):
        assert len(c_cap) == 50 and c_cap <= c_full and t_cap == t_full


def test_tube_hides_same_positions_at_every_time_step() -> None:
    spatial = 14 * 14
    for ratio in (0.5, 0.75, 0.9):
        (m,) = draw_masks([MaskSpec(kind="tube", ratio=ratio)], grid=GRID, batch_size=8, generator=_gen())
        _assert_padding_consistent(m)
        patterns = set()
        for context, target in _sets(m):
            hidden_tp = torch.zeros(N, dtype=torch.bool)
            hidden_tp[list(target)] = True
            hidden_tp = hidden_tp.view(8, spatial)
            assert bool((hidden_tp == hidden_tp[0]).all())  # same spatial pattern at every t
            assert abs(int(hidden_tp[0].sum()) - ratio * spatial) <= 14  # ratio +- one token row
            assert context == set(range(N)) - target
            patterns.add(tuple(hidden_tp[0].tolist()))
        assert len(patterns) > 1  # a pattern per sample


@pytest.mark.parametrize("future_blocks", [0, 2])
def test_future_targets_never_precede_context(future_blocks: int) -> None:
    hw = 14 * 14
    for fraction in (0.1, 0.5, 0.9):
        spec = MaskSpec(kind="future", context_fraction=fraction, future_blocks=future_blocks)
        (m,) = draw_masks([spec], grid=GRID, batch_size=8, generator=_gen())
        _assert_padding_consistent(m)
        context_steps = min(max(1, int(8 * fraction)), 7)
        for context, target in _sets(m):
            assert context and target and not context & target
            assert max(context) // hw < min(target) // hw
            assert target == set(range(context_steps * hw, N))
            if future_blocks == 0:
                assert context == set(range(context_steps * hw))
            else:
                assert len(context) < context_steps * hw


def test_future_blocks_remove_context_but_not_targets() -> None:
    spec = MaskSpec(kind="future", future_blocks=1, spatial_scale=(0.3, 0.3))
    (m,) = draw_masks([spec], grid=GRID, batch_size=4, generator=_gen())
    (plain,) = draw_masks(
        [dataclasses.replace(spec, future_blocks=0)], grid=GRID, batch_size=4, generator=_gen()
    )
    for (c, t), (c0, t0) in zip(_sets(m), _sets(plain)):
        assert c < c0 and t == t0


def test_same_tuple_same_masks_and_streams_differ() -> None:
    specs = default_mask_specs() + [MaskSpec(kind="tube"), MaskSpec(kind="future", future_blocks=1)]

    def draw(seed: int, rank: int, worker: int, step: int) -> list[torch.Tensor]:
        masks = MaskGenerator(specs, grid=GRID, seed=seed, rank=rank)(6, worker=worker, step=step)
        return [t for m in masks for t in (m.context_idx, m.context_valid, m.target_idx, m.target_valid)]

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))

    base = draw(0, 0, 0, 5)
    assert same(base, draw(0, 0, 0, 5))
    for other in ((1, 0, 0, 5), (0, 1, 0, 5), (0, 0, 1, 5), (0, 0, 0, 6), (0, 1, 0, 4)):
        assert not same(base, draw(*other)), other


def test_resumed_generator_draws_what_an_uninterrupted_one_would() -> None:
    gen = MaskGenerator(default_mask_specs(), grid=GRID, seed=7, rank=2)
    run = [gen(4, worker=1, step=s) for s in range(5)]
    resumed = MaskGenerator(default_mask_specs(), grid=GRID, seed=7, rank=2)(4, worker=1, step=3)
    for a, b in zip(run[3], resumed):
        assert torch.equal(a.context_idx, b.context_idx) and torch.equal(a.target_idx, b.target_idx)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_single_time_step_and_tiny_grids(kind: str) -> None:
    for grid in ((1, 14, 14), (1, 2, 2), (2, 1, 2), (3, 2, 2)):
        spec = MaskSpec(kind=kind, num_blocks=2, future_blocks=1)
        if kind == "future" and grid[0] == 1:
            with pytest.raises(ValueError, match="time steps"):
                draw_masks([spec], grid=grid, batch_size=4, generator=_gen())
            continue
        (m,) = draw_masks([spec], grid=grid, batch_size=16, generator=_gen())
        _assert_padding_consistent(m)
        n = grid[0] * grid[1] * grid[2]
        for context, target in _sets(m):
            assert context and target and not context & target and max(context | target) < n


def test_tube_needs_two_spatial_positions() -> None:
    with pytest.raises(ValueError, match="spatial positions"):
        draw_masks([MaskSpec(kind="tube")], grid=(4, 1, 1), batch_size=2, generator=_gen())


def test_block_covering_whole_grid_raises() -> None:
    spec = MaskSpec(num_blocks=1, spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0))
    with pytest.raises(ValueError, match="whole token grid"):
        draw_masks([spec], grid=GRID, batch_size=2, generator=_gen())


def test_impossible_context_raises_after_bounded_attempts() -> None:
    # 1x1x2 blocks on a 1x1x3 grid: blocks at starts 0 and 1 cover it, and 40 blocks share one start
    # with probability 2**-39, so every attempt fails.
    spec = MaskSpec(num_blocks=40, spatial_scale=(0.67, 0.67), aspect_ratio=(0.5, 0.5))
    with pytest.raises(ValueError, match="left no context"):
        draw_masks([spec], grid=(1, 1, 3), batch_size=2, generator=_gen())


def test_scale_one_spatial_blocks_with_partial_time_work() -> None:
    spec = MaskSpec(
        num_blocks=1, spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0), temporal_scale=(0.5, 0.5)
    )
    (m,) = draw_masks([spec], grid=GRID, batch_size=4, generator=_gen())
    for context, target in _sets(m):
        assert len(target) == 4 * 14 * 14 and len(context) == 4 * 14 * 14


def test_resampling_keeps_context_non_empty() -> None:
    # 1x1x1 blocks on 4 tokens: 8 blocks cover all four in ~62 % of draws, so most rows are re-drawn.
    spec = MaskSpec(num_blocks=8, spatial_scale=(0.25, 0.25), aspect_ratio=(1.0, 1.0))
    (m,) = draw_masks([spec], grid=(1, 2, 2), batch_size=64, generator=_gen())
    assert bool((m.context_valid.sum(1) >= 1).all())


def test_min_cover_is_a_true_lower_bound() -> None:
    gen = _gen(5)
    for _ in range(200):
        grid = tuple(int(x) for x in torch.randint(1, 5, (3,), generator=gen))
        size = tuple(int(torch.randint(1, g + 1, (1,), generator=gen)) for g in grid)
        k = min_cover(size, grid)
        if k > 1:  # k - 1 blocks never cover the grid
            fewer = place_blocks(size, grid=grid, batch_size=64, num_blocks=k - 1, generator=gen) > 0
            assert not bool(fewer.flatten(1).all(1).any())


def test_index_conversions_match_nonzero() -> None:
    gen = _gen(2)
    for b, n, p in ((1, 5, 0.5), (7, 40, 0.1), (7, 40, 0.9), (3, 1568, 0.5)):
        mask = torch.rand(b, n, generator=gen) < p
        mask[0] = True  # a full row and (below) an empty one
        if b > 1:
            mask[1] = False
        idx, valid = mask_to_indices(mask)
        (c_idx, c_valid), (t_idx, t_valid) = split_indices(mask)
        assert torch.equal(idx, t_idx) and torch.equal(valid, t_valid)
        for i in range(b):
            assert torch.equal(idx[i][valid[i]], mask[i].nonzero().squeeze(1))
            assert torch.equal(c_idx[i][c_valid[i]], (~mask[i]).nonzero().squeeze(1))
        _assert_padding_consistent(MaskBatch(c_idx, c_valid, t_idx, t_valid))


def test_cap_tokens_bounds_each_row() -> None:
    mask = torch.rand(6, 100, generator=_gen()) < 0.6
    capped = cap_tokens(mask, 10, generator=_gen(1))
    assert bool((capped <= mask).all()) and capped.sum(1).tolist() == [10] * 6


def test_samplers_cover_every_kind() -> None:
    assert set(SAMPLERS) == set(MASK_KINDS)


def test_default_specs_validate() -> None:
    for i, spec in enumerate(default_mask_specs() + [MaskSpec(kind="tube"), MaskSpec(kind="future")]):
        spec.validate(f"mask.{i}")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "blocks"),
        ("num_blocks", 0),
        ("spatial_scale", (0.0, 0.5)),
        ("spatial_scale", (0.5, 1.5)),
        ("spatial_scale", (0.6, 0.5)),
        ("temporal_scale", (0.5, 1.01)),
        ("aspect_ratio", (0.0, 1.0)),
        ("aspect_ratio", (0.5,)),
        ("max_context_tokens", 0),
        ("max_temporal_keep", 0.0),
        ("max_temporal_keep", 1.5),
        ("ratio", 1.0),
        ("ratio", 0.0),
        ("context_fraction", 1.0),
        ("context_fraction", 0.0),
        ("future_blocks", -1),
    ],
)
def test_validate_names_the_key(field: str, value: object) -> None:
    spec = dataclasses.replace(MaskSpec(), **{field: value})
    with pytest.raises(ValueError, match=rf"^mask\.3\.{field}:"):
        spec.validate("mask.3")
    with pytest.raises(ValueError, match=rf"^mask\.0\.{field}:"):
        MaskGenerator([spec], grid=GRID, seed=0)


@pytest.mark.parametrize("grid", [(0, 14, 14), (8, 14), (8, 14.0, 14)])
def test_bad_grid_raises(grid: tuple) -> None:
    with pytest.raises(ValueError, match="^grid"):
        draw_masks(default_mask_specs(), grid=grid, batch_size=2, generator=_gen())
