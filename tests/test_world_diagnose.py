"""The world-model diagnostics: the ridge probe's R^2, action sensitivity, and the oracle planner (true next-frame
features) — which also pins down why the push scene's agent is as large as it is."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from data_pipelines.push_env import PushEnv, PushEnvParams
from vjepa.world.ac_predictor import ACPredictor
from vjepa.world.diagnose import action_sensitivity, oracle_planning, ridge_r2, state_probe


def _patch_colours(patch: int, cells: int = 4):
    """A stand-in encoder, linear in the pixels as a patch embedding is: each patch x patch token holds the
    mean colours of its cells x cells sub-blocks -> [n, N, cells^2 * 3] (N = 16 at 64 px with patch 16)."""

    def features(frames: np.ndarray) -> torch.Tensor:  # [n, H, W, 3] uint8
        n, h, w, _ = frames.shape
        c, sub = cells, patch // cells
        blocks = frames.reshape(n, h // patch, c, sub, w // patch, c, sub, 3).mean(axis=(3, 6))
        tokens = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), c * c * 3)
        return torch.from_numpy(tokens / 255.0).float()  # [n, N, c*c*3]

    return features


def test_ridge_r2_recovers_a_linear_target_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 50))
    linear = x[:, :2] @ np.array([[1.0, -2.0], [0.5, 3.0]]) + 0.01 * rng.normal(size=(200, 2))
    assert ridge_r2(x, linear)["r2"] > 0.95
    assert ridge_r2(x, rng.normal(size=(200, 2)))["r2"] < 0.2
    with pytest.raises(ValueError, match="10 rows"):
        ridge_r2(x[:5], linear[:5])


def test_state_probe_reads_the_agent_from_patch_features_better_than_from_their_mean() -> None:
    probe = state_probe(_patch_colours(8, 2), PushEnv(PushEnvParams(size=32)), range(120))
    assert probe["frames"] == 120 and probe["tokens"] == 16
    assert probe["agent_per_patch"]["r2"] > 0.5
    assert probe["agent_mean_pooled"]["r2"] < probe["agent_per_patch"]["r2"]


def test_action_sensitivity_is_zero_for_a_predictor_that_ignores_actions() -> None:
    g = torch.Generator().manual_seed(0)
    features, states = torch.randn(3, 4, 4, 8, generator=g), torch.rand(3, 4, 2, generator=g)
    actions = torch.rand(3, 3, 2, generator=g) * 0.1 - 0.05

    def ignores(f: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return f

    kwargs = dict(low=-0.05, high=0.05, generator=torch.Generator().manual_seed(1))
    blind = action_sensitivity(ignores, features, actions, states, **kwargs)
    assert blind["change_with_redrawn_actions"] == 0.0 and blind["prediction_l1"] == blind["copy_previous_l1"]
    model = ACPredictor(feature_dim=8, action_dim=2, state_dim=2, grid=(2, 2), width=24, depth=1, heads=2)
    kwargs["generator"] = torch.Generator().manual_seed(1)
    assert action_sensitivity(model, features, actions, states, **kwargs)["change_with_redrawn_actions"] > 0


def test_action_scale_multiplies_the_actions_before_the_embedding() -> None:
    torch.manual_seed(0)
    scaled = ACPredictor(
        feature_dim=8, action_dim=2, state_dim=2, grid=(2, 2), width=24, depth=1, heads=2, action_scale=20.0
    )
    plain = ACPredictor(feature_dim=8, action_dim=2, state_dim=2, grid=(2, 2), width=24, depth=1, heads=2)
    plain.load_state_dict(scaled.state_dict())
    f, a, s = torch.randn(2, 3, 4, 8), torch.rand(2, 3, 2) * 0.1 - 0.05, torch.rand(2, 3, 2)
    torch.testing.assert_close(scaled(f, a, s), plain(f, a * 20.0, s))
    assert not torch.allclose(scaled(f, a, s), plain(f, a, s))
    with pytest.raises(ValueError, match="action_scale"):
        ACPredictor(feature_dim=8, action_dim=2, state_dim=2, grid=(2, 2), width=24, heads=2, action_scale=0)


def test_the_default_agent_is_large_enough_for_the_true_feature_energy_to_lead_to_the_goal() -> None:
    """With a 4 x 4 grid of patch features, a small agent (radius 0.07) 0.15-0.3 from its goal shares no patch
    with it: the L1 energy is flat and even the true next frames do not lead there. The default does."""
    features, seeds = _patch_colours(16), range(3_000_000, 3_000_006)
    large = oracle_planning(features, PushEnv(), seeds, steps=8, grid=5)
    small = oracle_planning(
        features, PushEnv(dataclasses.replace(PushEnvParams(), agent_radius=0.07)), seeds, steps=8, grid=5
    )
    assert large["success_rate"] >= 0.8 and large["mean_final_distance"] < large["mean_start_distance"] / 4
    assert large["first_step_cosine_best_ideal"] > 0.7
    assert small["success_rate"] < large["success_rate"]
    assert small["first_step_energy_span"] < large["first_step_energy_span"] / 2
    assert large["episodes"] == 6


def test_the_diagnose_benchmark_probes_and_plans_with_a_checkpointed_encoder(tmp_path, capsys) -> None:
    from tiny import TINY_RUN

    from benchmarks.world_diagnose import main
    from vjepa.config import load_config
    from vjepa.train.trainer import train

    overrides = [*TINY_RUN, "train.steps=1", "checkpoint.every_steps=1", f"train.out_dir={tmp_path}/enc"]
    train(load_config(None, overrides))
    flags = ["--encoder", str(tmp_path / "enc"), "--crop", "32", "--probe-frames", "20", "--episodes", "1"]
    main([*flags, "--grid", "3"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["probe"]["frames"] == 20 and result["probe"]["tokens"] == 4  # 32 px / patch 16 = 2 x 2
    assert result["oracle"]["episodes"] == 1 and result["agent_radius"] == PushEnvParams.agent_radius
