"""Collapse monitors: a planted low-dimensional representation is flagged where the per-channel std is not;
isotropic tokens are not; the within-clip constant share reads ~1 and ~0 where it should."""

from __future__ import annotations

import math

import pytest
import torch

from vjepa.objective import masked_token_std
from vjepa.train.monitors import CollapseWatch, collapse_stats, collapse_verdict, spectrum_stats

B, N, D = 16, 32, 96


def isotropic(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed))


def planted_2d(seed: int = 1) -> torch.Tensor:
    """Tokens on a plane through the origin: 2 random directions with large coefficients, so every channel
    still varies a lot across tokens."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(D, 2, generator=g))[0].T * math.sqrt(D)  # [2, D]
    coeffs = torch.randn(B, N, 2, generator=g) * 3.0
    return coeffs @ directions  # [B, N, D]


def test_planted_2d_is_flagged_while_target_std_is_not_low():
    iso, flat = isotropic(), planted_2d()
    valid = torch.ones(B, N, dtype=torch.bool)
    # The existing monitor reads the collapsed tokens as healthy as (here: healthier than) isotropic ones.
    assert masked_token_std(flat, valid) > masked_token_std(iso, valid) > 0.5
    s_iso, s_flat = collapse_stats(iso), collapse_stats(flat)
    assert s_iso["eff_dim"] > 0.6 * D and s_iso["eff_rank"] > 0.8 * D
    assert s_flat["eff_dim"] == pytest.approx(2.0, abs=0.2) and s_flat["eff_rank"] < 2.05
    watch = CollapseWatch(warn_fraction=0.5)
    assert watch.update(0, {"target_eff_dim": s_iso["eff_dim"]}) is None
    assert watch.update(20, {"target_eff_dim": collapse_stats(isotropic(5))["eff_dim"]}) is None
    warning = watch.update(40, {"target_eff_dim": s_flat["eff_dim"], "loss": 0.3})
    assert warning is not None and "target_eff_dim" in warning and "\n" not in warning
    assert watch.update(60, {"target_eff_dim": s_flat["eff_dim"]}) is None  # warned once, still flagged
    assert watch.flagged == {"target_eff_dim"}


def test_clip_const_reads_one_for_clip_constant_tokens_and_near_zero_for_iid_tokens():
    per_clip = torch.randn(B, 1, D, generator=torch.Generator().manual_seed(2)).expand(B, N, D)
    assert collapse_stats(per_clip)["clip_const"] == pytest.approx(1.0, abs=1e-6)
    iid = collapse_stats(isotropic())["clip_const"]
    assert iid < 3.0 / N  # expected ~1/N
    watch = CollapseWatch()
    assert watch.update(0, {"pred_clip_const": iid}) is None
    assert "pred_clip_const" in (watch.update(1, {"pred_clip_const": 0.97}) or "")


def test_padding_is_ignored_and_subsampling_is_seeded_without_global_rng():
    x, valid = isotropic(), torch.ones(B, N, dtype=torch.bool)
    valid[:, N // 2 :] = False
    junk = x.clone()
    junk[~valid] = float("nan")  # padding rows hold garbage
    assert collapse_stats(junk, valid) == pytest.approx(collapse_stats(x[:, : N // 2]))
    state = torch.random.get_rng_state()
    a = collapse_stats(x, max_tokens=100)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a == collapse_stats(x, max_tokens=100)
    b = collapse_stats(x, max_tokens=100, generator=torch.Generator().manual_seed(3))
    assert a["clip_const"] == b["clip_const"] and a["eff_dim"] != b["eff_dim"]
    assert collapse_stats(x.to(torch.bfloat16))["eff_dim"] == pytest.approx(
        collapse_stats(x)["eff_dim"], 0.05
    )


def test_wide_tokens_use_the_small_gram_matrix_and_spectrum_edge_cases():
    wide = torch.randn(2, 8, 512, generator=torch.Generator().manual_seed(4))
    assert 10.0 < collapse_stats(wide)["eff_dim"] <= 15.0  # at most 16 - 1 directions from 16 tokens
    assert spectrum_stats(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx({"eff_dim": 4, "eff_rank": 4})
    assert spectrum_stats(torch.zeros(3)) == {"eff_dim": 0.0, "eff_rank": 0.0}


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="tokens must be"):
        collapse_stats(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="valid must be"):
        collapse_stats(torch.zeros(2, 4, 8), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="collapse_warn_fraction"):
        CollapseWatch(warn_fraction=1.5)


def test_verdict_over_a_log():
    healthy = [{"step": 0, "target_eff_dim": 6.0, "target_clip_const": 0.4}, {"step": 20, "loss": 0.5}]
    healthy.append({"step": 40, "target_eff_dim": 5.0, "target_clip_const": 0.5})
    verdict = collapse_verdict(healthy)
    assert verdict["healthy"] is True and verdict["target_eff_dim"]["last"] == 5.0
    collapsed = [*healthy, {"step": 60, "target_eff_dim": 2.0, "target_clip_const": 0.95}]
    assert collapse_verdict(collapsed)["healthy"] is False
    assert collapse_verdict([{"step": 0, "loss": 1.0}])["healthy"] is None


def test_run_logger_writes_keys_that_appear_on_some_steps_only(tmp_path, caplog):
    import json

    from vjepa.config import LogConfig
    from vjepa.train.metrics import RunLogger

    cfg = LogConfig(every_steps=5, progress=True, tensorboard=True, collapse_warn_fraction=0.5)
    logger = RunLogger(tmp_path, cfg, total_steps=12, start_step=0, enabled=True)
    base = {"loss": 1.0, "lr": 1e-3, "clips_per_s": 8.0, "data_wait": 0.1}
    for step in range(12):
        monitors = (
            {"target_eff_dim": 8.0 if step < 9 else 2.0, "target_clip_const": 0.3} if step % 3 == 0 else {}
        )
        logger.log(step, {**base, **monitors})
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 3, 5, 6, 9, 10]  # every 5th step plus every monitor step
    assert [r["step"] for r in lines if "target_eff_dim" in r] == [0, 3, 6, 9]
    assert logger.eff_dim == 2.0 and any("target_eff_dim" in r.message for r in caplog.records)
    assert any((tmp_path / "tb").iterdir())
