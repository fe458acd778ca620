"""CEM planning: finds a known quadratic minimum, keeps to the bounds, is seeded; the latent energy is batched;
MPC executes first actions and replans."""

from __future__ import annotations

import pytest
import torch

from vjepa.world.ac_predictor import ACPredictor
from vjepa.world.plan import cem, latent_energy, mpc

TARGET = torch.tensor([[0.5, -0.25], [-0.75, 0.1], [0.3, 0.6]])  # [L, A], inside [-1, 1]


def _quadratic(target: torch.Tensor, calls: list[torch.Tensor] | None = None):
    def energy(actions: torch.Tensor) -> torch.Tensor:  # [P, L, A] -> [P]
        if calls is not None:
            calls.append(actions.clone())
        return ((actions - target) ** 2).sum(dim=(1, 2))

    return energy


def _cem(energy, seed: int = 0, **overrides):
    kwargs = dict(horizon=3, action_dim=2, low=-1.0, high=1.0, samples=128, elites=16, iterations=12)
    kwargs.update(overrides)
    return cem(energy, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_cem_finds_the_minimum_of_a_quadratic_with_one_batched_call_per_iteration() -> None:
    calls: list[torch.Tensor] = []
    result = _cem(_quadratic(TARGET, calls))
    torch.testing.assert_close(result.actions, TARGET, atol=0.03, rtol=0)
    assert result.best_energy < 0.01
    assert len(calls) == 12 and all(c.shape == (128, 3, 2) for c in calls)
    assert result.energies[-1] < result.energies[0]


def test_cem_keeps_every_candidate_and_the_plan_within_the_bounds() -> None:
    calls: list[torch.Tensor] = []
    low, high = torch.tensor([-1.0, -0.5]), torch.tensor([1.0, 0.2])
    outside = torch.tensor([2.0, -3.0]).expand(3, 2)  # the minimum lies beyond high[0] and low[1]
    result = _cem(_quadratic(outside, calls), low=low, high=high)
    every = torch.cat(calls)  # [iterations * P, L, A]
    assert bool((every >= low).all()) and bool((every <= high).all())
    assert bool((result.actions >= low).all()) and bool((result.actions <= high).all())
    torch.testing.assert_close(result.actions, torch.tensor([1.0, -0.5]).expand(3, 2), atol=0.02, rtol=0)


def test_cem_is_deterministic_given_the_seed() -> None:
    a, b = _cem(_quadratic(TARGET), seed=4), _cem(_quadratic(TARGET), seed=4)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.best_actions, b.best_actions)
    c = _cem(_quadratic(TARGET), seed=5)
    assert not torch.equal(a.best_actions, c.best_actions)


def test_cem_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="elites"):
        _cem(_quadratic(TARGET), elites=200)
    with pytest.raises(ValueError, match="bounds"):
        _cem(_quadratic(TARGET), low=1.0, high=-1.0)
    with pytest.raises(ValueError, match="init_mean"):
        _cem(_quadratic(TARGET), init_mean=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="energy"):
        _cem(lambda a: a.sum(dim=2))


def test_latent_energy_scores_all_candidates_in_one_batch_as_each_alone() -> None:
    torch.manual_seed(0)  # the module's initial weights come from the global generator
    model = ACPredictor(
        feature_dim=8, action_dim=2, state_dim=2, grid=(2, 2), width=24, depth=2, heads=2
    ).eval()
    g = torch.Generator().manual_seed(0)
    features, goal, state = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.zeros(2)
    energy = latent_energy(model, features=features, state=state, goal=goal, next_state=lambda s, a: s + a)
    candidates = torch.rand(5, 3, 2, generator=g) - 0.5  # [P, L, A]
    batched = energy(candidates)
    assert batched.shape == (5,)
    alone = torch.cat([energy(candidates[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, alone)
    held = latent_energy(model, features=features, state=state, goal=goal)(
        candidates
    )  # state held, not moved
    assert not torch.allclose(held, batched)


def test_mpc_executes_the_first_action_and_replans_until_the_goal() -> None:
    goal = torch.tensor([0.8, -0.6])
    warm_starts: list[torch.Tensor | None] = []
    position = [torch.zeros(2)]

    def plan(observation: torch.Tensor, warm: torch.Tensor | None):
        warm_starts.append(warm)

        def energy(
            actions: torch.Tensor,
        ) -> torch.Tensor:  # distances of the visited points, [P, L, A] -> [P]
            return ((observation + actions.cumsum(1) - goal) ** 2).sum(dim=(1, 2))

        return _cem(energy, horizon=3, low=-0.2, high=0.2, samples=64, elites=8, iterations=6, init_mean=warm)

    def step(action: torch.Tensor) -> torch.Tensor:
        position[0] = position[0] + action
        return position[0]

    result = mpc(
        observation=torch.zeros(2),
        plan=plan,
        step=step,
        steps=10,
        done=lambda o: bool((o - goal).norm() < 0.05),
    )
    assert len(result.actions) == len(result.observations) - 1 <= 10
    assert float((result.observations[-1] - goal).norm()) < 0.05
    torch.testing.assert_close(result.observations[-1], torch.stack(result.actions).sum(0))
    assert warm_starts[0] is None and all(w.shape == (3, 2) for w in warm_starts[1:])
    assert all(float(a.abs().max()) <= 0.2 for a in result.actions)


def test_the_pieces_fit_from_push_frames_to_a_plan(tmp_path) -> None:
    """Trajectory shards -> per-frame features of a tiny encoder -> the AC predictor's losses and a CEM plan
    (untrained weights: this checks the interfaces and shapes, not planning quality)."""
    from data_pipelines.push_env import PushEnv
    from data_pipelines.trajectories import TrajectoryReader, stack_clips, write_push_trajectories
    from data_pipelines.transforms import normalize
    from vjepa.models.builder import build_encoder
    from vjepa.world.ac_objective import rollout_loss, teacher_forcing_loss
    from vjepa.world.ac_predictor import encode_frames

    summary = write_push_trajectories(tmp_path, episodes=2, steps=6, seed=0)
    frames, states, actions = stack_clips(list(TrajectoryReader(summary["shards"], frames=4)))
    clips = normalize(torch.from_numpy(frames).permute(0, 4, 1, 2, 3).contiguous())  # [B, 3, T, H, W]
    torch.manual_seed(0)  # the modules' initial weights come from the global generator
    encoder = build_encoder("vit_test", frames=2, crop=64, patch=16).eval()
    features = encode_frames(encoder, clips)  # [B, T, 16, 48]
    assert features.shape == (2, 4, 16, 48)
    model = ACPredictor(feature_dim=48, action_dim=2, state_dim=2, grid=(4, 4), width=24, depth=1, heads=2)
    agent = torch.from_numpy(states[..., 0:2])  # [B, T, 2]: the agent's position is the predictor's state
    act = torch.from_numpy(actions)  # [B, T - 1, 2]
    losses = [
        teacher_forcing_loss(model, features, act, agent),
        rollout_loss(model, features, act, agent, steps=2),
    ]
    assert all(bool(torch.isfinite(loss)) and loss.item() > 0 for loss in losses)
    env = PushEnv()
    energy = latent_energy(
        model.eval(),
        features=features[0, 0],
        state=agent[0, 0],
        goal=features[0, -1],
        next_state=lambda s, a: s + a,
    )
    low, high = torch.from_numpy(env.action_low), torch.from_numpy(env.action_high)
    plan = cem(
        energy,
        horizon=3,
        action_dim=2,
        low=low,
        high=high,
        generator=torch.Generator().manual_seed(0),
        samples=16,
        elites=4,
        iterations=2,
    )
    assert plan.actions.shape == (3, 2) and bool((plan.actions.abs() <= env.params.max_speed + 1e-6).all())


def test_cem_never_picks_candidates_with_nan_energy() -> None:
    quadratic = _quadratic(TARGET)

    def energy(actions: torch.Tensor) -> torch.Tensor:  # NaN wherever the first action's x is positive
        values = quadratic(actions)
        return torch.where(actions[:, 0, 0] > 0, torch.full_like(values, float("nan")), values)

    result = _cem(energy)
    assert float(result.best_actions[0, 0]) <= 0 and all(e == e for e in result.energies)
    assert float(result.actions[0, 0]) <= 0.0
