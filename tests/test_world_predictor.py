"""The action-conditioned predictor: shapes, exact block-causality, per-frame encoding, and both losses
overfitting one tiny batch."""

from __future__ import annotations

import pytest
import torch

from vjepa.models.builder import build_encoder
from vjepa.world.ac_objective import rollout, rollout_loss, teacher_forcing_loss
from vjepa.world.ac_predictor import ACPredictor, block_causal_mask, encode_frames

B, T, GRID, F, A, S = 2, 4, (2, 2), 8, 2, 3
N = GRID[0] * GRID[1]


def _predictor(seed: int = 0, **overrides: int) -> ACPredictor:
    torch.manual_seed(seed)  # nn.Linear draws from the global generator; the test owns it here
    kwargs = dict(feature_dim=F, action_dim=A, state_dim=S, grid=GRID, width=24, depth=2, heads=2)
    kwargs.update(overrides)
    return ACPredictor(**kwargs)


def _batch(seed: int = 0, steps: int = T) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, steps, N, F, generator=g)
    actions = torch.randn(B, steps - 1, A, generator=g)
    states = torch.randn(B, steps, S, generator=g)
    return features, actions, states


def test_block_causal_mask_lets_a_step_see_itself_and_the_past_only() -> None:
    mask = block_causal_mask(3, 2)
    step = torch.tensor([0, 0, 1, 1, 2, 2])
    assert mask.shape == (6, 6) and mask.dtype == torch.bool
    assert torch.equal(mask, step[None, :] <= step[:, None])
    assert mask[0, 1] and not mask[1, 2] and mask[5, 0]


def test_output_shape_and_bad_inputs() -> None:
    model = _predictor()
    features, actions, states = torch.randn(B, T, N, F), torch.randn(B, T, A), torch.randn(B, T, S)
    assert model(features, actions, states).shape == (B, T, N, F)
    with pytest.raises(ValueError, match="features"):
        model(torch.randn(B, T, N + 1, F), actions, states)
    with pytest.raises(ValueError, match="actions"):
        model(features, actions[:, :-1], states)
    with pytest.raises(ValueError, match="states"):
        model(features, actions, torch.randn(B, T, S + 1))
    with pytest.raises(ValueError, match="head dim"):
        _predictor(width=8, heads=2)


@pytest.mark.parametrize("part", ["features", "actions", "states"])
def test_changing_step_t_plus_1_never_changes_step_t(part: str) -> None:
    model = _predictor().eval()
    g = torch.Generator().manual_seed(1)
    inputs = {
        "features": torch.randn(B, T, N, F, generator=g),
        "actions": torch.randn(B, T, A, generator=g),
        "states": torch.randn(B, T, S, generator=g),
    }
    with torch.no_grad():
        base = model(**inputs)
        for t in range(T - 1):
            changed = dict(inputs)
            changed[part] = inputs[part].clone()
            changed[part][:, t + 1 :] += torch.randn(changed[part][:, t + 1 :].shape, generator=g) * 3
            out = model(**changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1])  # exactly: masked keys weigh 0
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])  # the change does reach step t + 1


def test_rollout_feeds_its_predictions_back() -> None:
    model = _predictor().eval()
    features, actions, states = _batch()
    with torch.no_grad():
        out = rollout(model, features[:, :1], actions[:, :2], states[:, :2])  # [B, 2, N, F]
        first = model(features[:, :1], actions[:, :1], states[:, :1])[:, -1]
        second = model(torch.stack([features[:, 0], first], 1), actions[:, :2], states[:, :2])[:, -1]
    assert out.shape == (B, 2, N, F)
    torch.testing.assert_close(out[:, 0], first)
    torch.testing.assert_close(out[:, 1], second)
    with pytest.raises(ValueError, match="exceeds"):
        rollout_loss(model, features, actions, states, steps=T)


def _overfit(loss_fn, steps: int = 60) -> tuple[float, float]:
    model = _predictor(width=32, heads=2)
    features, actions, states = _batch(seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model, features, actions, states)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_teacher_forcing_loss_falls_when_overfitting_one_batch() -> None:
    first, last = _overfit(teacher_forcing_loss)
    assert last < 0.5 * first, (first, last)


def test_rollout_loss_falls_when_overfitting_one_batch() -> None:
    first, last = _overfit(lambda m, f, a, s: rollout_loss(m, f, a, s, steps=3), steps=100)
    assert last < 0.5 * first, (first, last)


def test_encode_frames_encodes_every_frame_on_its_own() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("vit_test", frames=2, crop=32, patch=16).eval()
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(2, 3, 3, 32, 32, generator=g)  # [B, C, T, H, W]
    features = encode_frames(encoder, clips)
    assert features.shape == (2, 3, 4, 48)
    alone = encode_frames(encoder, clips[:, :, 1:2])  # the middle frame without its neighbours
    torch.testing.assert_close(features[:, 1:2], alone)
    torch.testing.assert_close(features.mean(-1), torch.zeros(2, 3, 4), atol=1e-5, rtol=0)  # layer-normed
