"""Probe sweeps in one pass (each head equals a separately trained single head), the default V-JEPA 2 probe,
top-k / per-class / confusion metrics, attend_across_segments, the probe report's files and the progress
bar."""

from __future__ import annotations

import io
import json

import pytest
import torch

from benchmarks.probe_sweep import synthetic_features
from vjepa.eval.evaluate import ProbeConfig, train_probe
from vjepa.eval.extract import FeatureSet
from vjepa.eval.metrics import classification_metrics, confusion_matrix, per_class_accuracy, topk_accuracy
from vjepa.eval.probe import AttentiveProbe, build_probe, default_heads, resolve_heads
from vjepa.eval.probe_report import write_probe_report
from vjepa.eval.progress import Progress
from vjepa.eval.sweep import single_head_config, train_probes
from vjepa.eval.views import join_segments, segment_views


def planted(videos: int, *, classes: int = 4, views: int = 2, tokens: int = 4, dim: int = 16, seed: int = 0):
    """Noise tokens where dimension `label` is raised by 1: learnable, but not at once."""
    return synthetic_features(
        videos, views=views, tokens=tokens, width=dim, classes=classes, seed=seed, signal=1.0
    )


SWEEP = dict(epochs=2, batch=8, seed=3, lrs=(1e-3, 1e-2), wds=(0.0, 0.3))


def assert_heads_match_single_runs(sweep: dict, train: FeatureSet, val: FeatureSet, cfg: ProbeConfig) -> None:
    assert len(sweep["heads"]) == len(cfg.grid()) == 4
    for head, (lr, wd) in zip(sweep["heads"], cfg.grid()):
        single = train_probe(train, val, single_head_config(cfg, lr, wd), predictions=True, weights=True)
        assert (head["lr"], head["wd"]) == (single["lr"], single["wd"]) == (lr, wd)
        assert single["state_dict"].keys() == head["state_dict"].keys()
        for name, tensor in single["state_dict"].items():
            torch.testing.assert_close(head["state_dict"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
        assert head["top1_val"] == single["top1_val"] and head["top5_val"] == single["top5_val"]
        torch.testing.assert_close(head["history"]["train_loss"], single["history"]["train_loss"])
    # the heads differ from each other: the grid really trained different probes
    first, last = sweep["heads"][0]["state_dict"], sweep["heads"][-1]["state_dict"]
    assert any(not torch.allclose(first[k], last[k], atol=1e-4) for k in first)


@pytest.mark.parametrize("batched", [False, True])
def test_attentive_sweep_heads_equal_single_heads(batched):
    train, val = planted(24, seed=0), planted(12, seed=1)
    cfg = ProbeConfig(kind="attentive", depth=1, heads=4, **SWEEP)
    sweep = train_probes(train, val, cfg, batched=batched, weights=True)
    assert_heads_match_single_runs(sweep, train, val, cfg)
    best = max(range(4), key=lambda k: (sweep["heads"][k]["top1_val"], -k))
    assert sweep["best"] == best and sweep["top1_val"] == sweep["heads"][best]["top1_val"]
    assert (sweep["lr"], sweep["wd"]) == cfg.grid()[best]
    single_keys = train_probe(train, val, single_head_config(cfg, *cfg.grid()[0])).keys()
    assert set(single_keys) <= set(sweep)  # everything train_probe reports, for the best head


def test_linear_sweep_loops_over_batchnorm_heads_and_lbfgs_sweeps_weight_decay():
    train, val = planted(25, seed=0), planted(12, seed=1)  # 25 videos: a lone last video is dropped
    cfg = ProbeConfig(kind="linear", **SWEEP)
    assert_heads_match_single_runs(train_probes(train, val, cfg, weights=True), train, val, cfg)
    with pytest.raises(ValueError, match="BatchNorm"):
        train_probes(train, val, cfg, batched=True)
    lbfgs = ProbeConfig(kind="linear", solver="lbfgs", wds=(1e-4, 1e-2, 1.0), lbfgs_iters=50)
    sweep = train_probes(train, val, lbfgs, weights=True)
    for head, wd in zip(sweep["heads"], lbfgs.wds):
        single = train_probe(train, val, single_head_config(lbfgs, lbfgs.lr, wd), weights=True)
        torch.testing.assert_close(head["state_dict"]["weight"], single["state_dict"]["weight"])
    with pytest.raises(ValueError, match="--lrs"):
        train_probes(train, val, ProbeConfig(kind="linear", solver="lbfgs", lrs=(1e-3,)))


def test_default_probe_is_vjepa2s_attentive_probe():
    cfg = ProbeConfig()
    assert (cfg.kind, cfg.depth, cfg.heads, cfg.grid()) == ("attentive", 3, 16, [(cfg.lr, cfg.wd)])
    probe = build_probe(cfg.kind, dim=192, num_classes=10, heads=cfg.heads, depth=cfg.depth)
    assert isinstance(probe, AttentiveProbe) and len(probe.blocks) == 3 and probe.cross.heads == 16
    assert probe.blocks[0].attn.heads == 16
    assert resolve_heads(128, 16) == 16  # head dim 8: still 16 heads
    assert resolve_heads(120, 16) == default_heads(120) == 3  # 16 does not divide 120
    assert resolve_heads(64, 16) == default_heads(64) == 2  # head dim 4 < 8
    assert resolve_heads(64, 8) == 8 and resolve_heads(64, None) == 2  # explicit counts stay
    with pytest.raises(ValueError, match="--wds"):
        ProbeConfig(wds=()).validate()


def test_topk_per_class_and_confusion_equal_a_hand_count():
    probs = torch.tensor(
        [  # 6 classes; true labels below
            [0.50, 0.20, 0.10, 0.10, 0.05, 0.05],  # true 0: top-1 hit
            [0.40, 0.30, 0.10, 0.10, 0.05, 0.05],  # true 1: second, top-5 hit
            [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # true 5: sixth, a miss even in the top 5
            [0.05, 0.05, 0.10, 0.60, 0.10, 0.10],  # true 3: top-1 hit
            [0.10, 0.10, 0.40, 0.10, 0.20, 0.10],  # true 4: second, top-5 hit
        ]
    )
    labels = torch.tensor([0, 1, 5, 3, 4])
    assert topk_accuracy(probs, labels, 1) == pytest.approx(2 / 5)
    assert topk_accuracy(probs, labels, 5) == pytest.approx(4 / 5)
    assert topk_accuracy(probs[:, :2], torch.tensor([0, 1, 0, 1, 0]), 5) == 1.0  # k capped at 2 classes
    confusion = confusion_matrix(probs.argmax(-1), labels, 6)
    expected = torch.zeros(6, 6, dtype=torch.long)
    for true, predicted in ((0, 0), (1, 0), (5, 0), (3, 3), (4, 2)):
        expected[true, predicted] += 1
    assert torch.equal(confusion, expected)
    assert per_class_accuracy(confusion) == [1.0, 0.0, None, 1.0, 0.0, 0.0]
    metrics = classification_metrics(probs, labels, 6)
    assert metrics["top5"] >= metrics["top1"] and metrics["top_k"] == 5
    assert metrics["confusion"] == expected.tolist()


def test_attend_across_segments_joins_the_segments_of_each_spatial_view():
    m, s, v, n, d = 2, 3, 2, 4, 5
    tokens = torch.randn(m, s * v, n, d)
    assert segment_views(tokens, s, False) is tokens
    joined = segment_views(tokens, s, True)
    assert joined.shape == (m, v, s * n, d)
    for seg in range(s):
        for view in range(v):  # clip s * V + v lands in view v, at the segment's slot of tokens
            assert torch.equal(joined[:, view, seg * n : (seg + 1) * n], tokens[:, seg * v + view])
    meta = {"segments": s, "spatial_views": v, "grid": (2, 1, 2), "num_classes": 2}
    features = FeatureSet(tokens, torch.tensor([0, 1]), ["a", "b"], meta)
    assert join_segments(features).meta["grid"] == (6, 1, 2)
    cfg = ProbeConfig(depth=0, epochs=1, batch=2)
    apart = train_probe(features, features, cfg)
    together = train_probe(
        features, features, ProbeConfig(depth=0, epochs=1, batch=2, attend_across_segments=True)
    )
    assert (apart["train_views"], apart["tokens"]) == (s * v, n)
    assert (together["train_views"], together["val_views"], together["tokens"]) == (v, v, s * n)
    del meta["spatial_views"]
    with pytest.raises(ValueError, match="spatial_views"):
        join_segments(FeatureSet(tokens, torch.tensor([0, 1]), ["a", "b"], meta))


def test_probe_report_writes_json_and_valid_pngs(tmp_path):
    from matplotlib import image

    train, val = planted(16, seed=0), planted(8, seed=1)
    sweep = train_probes(train, val, ProbeConfig(kind="linear", epochs=2, batch=8, lrs=(1e-3, 1e-2)))
    paths = write_probe_report(sweep, tmp_path / "sweep")
    report = json.loads(paths["json"].read_text())
    assert len(report["heads"]) == 2 and report["best"] == sweep["best"]
    assert len(report["confusion_val"]) == 4 and len(report["heads"][0]["history"]["val_top1"]) == 2
    for name in ("curves", "confusion"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(paths[name])
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    single = train_probe(train, val, ProbeConfig(kind="linear", epochs=1, batch=8))
    paths = write_probe_report(single, tmp_path / "single")
    assert (
        image.imread(paths["curves"]).ndim == 3 and json.loads(paths["json"].read_text())["kind"] == "linear"
    )


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_in_place_on_a_tty_at_most_every_interval():
    now = [0.0]
    stream = Tty()
    bar = Progress(10, label="probe", unit="steps", stream=stream, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 0.1
        bar.update(loss=0.25)
    bar.close()
    text = stream.getvalue()
    lines = text.split("\r")[1:]
    assert text.endswith("\n") and "\n" not in text[:-1]  # one line, rewritten in place
    assert 3 <= len(lines) <= 6  # 10 updates over 1 s at most every 0.25 s, plus the final draws
    assert "probe 10/10 steps" in lines[-1] and "10 steps/s" in lines[-1] and "loss=0.25" in lines[-1]
    assert "ETA" in lines[0]
    quiet = io.StringIO()  # not a terminal: nothing, unless forced
    Progress(3, label="x", unit="videos", stream=quiet).update(3)
    assert quiet.getvalue() == ""
    forced = io.StringIO()
    with Progress(3, label="x", unit="videos", stream=forced, force=True) as p:
        p.update(3)
    assert "x 3/3 videos" in forced.getvalue()
    off = Tty()
    Progress(3, label="x", unit="videos", stream=off, enabled=False).update(3)
    assert off.getvalue() == ""
