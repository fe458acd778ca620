"""Evaluation: deterministic eval clips, feature extraction from our checkpoints, probes that can both
succeed and fail, multi-view averaging, the extract/probe commands and the baselines suite."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from data_pipelines import EvalClipSpec, iter_eval_videos
from data_pipelines.synthetic import write_synthetic_dataset
from vjepa.cli import main
from vjepa.config import load_config
from vjepa.distributed.export import export_checkpoint
from vjepa.eval.baselines import PixelTokens, run_probe_suite, single_frame
from vjepa.eval.evaluate import ProbeConfig, multiview_predict, train_probe
from vjepa.eval.extract import (
    FeatureSet,
    extract_split,
    load_checkpoint_state,
    load_encoder,
    load_features,
    save_features,
)

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.name=vit_test",
    "model.pred_width=32",
    "model.pred_depth=1",
    "model.pred_heads=4",
    "data.dataset=synthetic",
    "data.frames_per_clip=4",
    "data.frame_step=2",
    "data.crop_size=32",
    "data.batch_size=2",
    "train.precision=fp32",
    "train.device=cpu",
    "train.steps=2",
    "checkpoint.every_steps=2",
    "log.progress=false",
    "log.tensorboard=false",
    "log.jsonl=false",
]
TOKENS = (4 // 2) * (32 // 16) ** 2  # tubelet 2, patch 16 on 4 x 32 x 32 clips
WIDTH = 48  # vit_test


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval_data")
    write_synthetic_dataset(out, videos=24, val_videos=8, classes=4, frames=8, size=32, seed=0, workers=1)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-step training run of vit_test; its checkpoint is what extraction loads."""
    from vjepa.train.trainer import train

    out = tmp_path_factory.mktemp("eval_run")
    train(load_config(REPO / "configs" / "quickstart.yaml", [*TINY, f"train.out_dir={out}"]))
    return out


def tar_labels(folder: Path) -> dict[str, int]:
    """{shard/key: label} read straight from the shards' KEY.json members."""
    labels = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                if info.name.endswith(".json"):
                    key = f"{shard.name.removesuffix('.tar')}/{info.name.removesuffix('.json')}"
                    labels[key] = json.loads(tar.extractfile(info).read())["label"]
    return labels


def planted(videos: int, *, classes: int = 4, views: int = 2, tokens: int = 4, dim: int = 16, seed: int = 0):
    """Noise features where dimension `label` of every token is raised by 2: a probe can find the class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(videos) % classes
    x = torch.randn(videos, views, tokens, dim, generator=gen)
    x[torch.arange(videos), :, :, labels] += 2.0
    return FeatureSet(x.half(), labels, [f"v{i}" for i in range(videos)], {"num_classes": classes})


# ----------------------------------------------------------------------------- extraction


def test_extract_command_shapes_labels_and_determinism(dataset, run_dir, tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        argv = [
            "extract",
            "--checkpoint",
            str(run_dir),
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / name),
        ]
        assert main([*argv, "--batch", "5"]) == 0
        outs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert outs[0]["videos"] == {"train": 24, "val": 8} and outs[0]["skipped"] == {"train": 0, "val": 0}
    assert outs[0]["shape"]["train"] == [24, 1, TOKENS, WIDTH] and outs[0]["frames"] == 4
    for split in ("train", "val"):
        a, b = load_features(tmp_path / "a" / split), load_features(tmp_path / "b" / split)
        assert a.tokens.dtype == torch.float16 and torch.isfinite(a.tokens.float()).all()
        assert torch.equal(a.tokens, b.tokens) and a.keys == b.keys
        truth = tar_labels(dataset / split)
        assert sorted(a.keys) == sorted(truth)
        assert a.labels.tolist() == [truth[k] for k in a.keys]
        assert a.meta["num_classes"] == 4 and a.meta["encoder"] == "target"


def test_multiview_shapes_and_views(dataset, run_dir):
    state = load_checkpoint_state(run_dir)
    encoder = load_encoder(state, frames=4, crop=32)
    spec = EvalClipSpec(frames=4, frame_step=1, crop=32, segments=2, views=3)
    feats = extract_split(encoder, dataset / "val", spec, batch=4)
    assert feats.tokens.shape == (8, 6, TOKENS, WIDTH)
    # square videos: the three crops coincide; the two segments (frames 1-4, 3-6) do not
    assert torch.equal(feats.tokens[:, 0], feats.tokens[:, 2])
    assert not torch.equal(feats.tokens[:, 0], feats.tokens[:, 3])
    pooled = extract_split(encoder, dataset / "val", spec, batch=7, pool="mean")
    assert pooled.tokens.shape == (8, 6, 1, WIDTH)
    torch.testing.assert_close(
        pooled.tokens[:, :, 0].float(), feats.tokens.float().mean(2), atol=2e-3, rtol=0
    )


def test_encoder_loading_new_grid_random_init_and_exported_file(run_dir, tmp_path):
    state = load_checkpoint_state(run_dir)
    exported = load_checkpoint_state(export_checkpoint(run_dir, tmp_path / "model.pt"))
    trained = load_encoder(state, frames=4, crop=32)
    from_file = load_encoder(exported, frames=4, crop=32)
    for (name, a), b in zip(trained.state_dict().items(), from_file.state_dict().values()):
        assert torch.equal(a, b), name
    ref = state["target_encoder"]["blocks.0.attn.qkv.weight"]
    assert torch.equal(trained.state_dict()["blocks.0.attn.qkv.weight"], ref)
    bigger = load_encoder(state, frames=8, crop=48)  # another grid: the sin-cos table is rebuilt
    assert bigger(torch.zeros(1, 3, 8, 48, 48)).shape == (1, 4 * 3 * 3, WIDTH)
    r1 = load_encoder(state, frames=4, crop=32, random_init=True, seed=3)
    r2 = load_encoder(state, frames=4, crop=32, random_init=True, seed=3)
    assert torch.equal(
        r1.state_dict()["blocks.0.attn.qkv.weight"], r2.state_dict()["blocks.0.attn.qkv.weight"]
    )
    assert not torch.equal(r1.state_dict()["blocks.0.attn.qkv.weight"], ref)


def test_bad_checkpoint_paths_name_the_path(tmp_path, dataset, capsys):
    missing = tmp_path / "no_such_run"
    with pytest.raises(ValueError, match=str(missing)):
        load_checkpoint_state(missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=str(junk)):
        load_checkpoint_state(junk)
    argv = ["extract", "--checkpoint", str(missing), "--data", str(dataset), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert str(missing) in capsys.readouterr().err


# ----------------------------------------------------------------------------- probes


@pytest.mark.parametrize("kind", ["attentive", "linear"])
def test_probe_finds_planted_labels_and_fails_on_shuffled_ones(kind):
    train, val = planted(128, seed=0), planted(128, seed=1)
    cfg = ProbeConfig(kind=kind, epochs=20, batch=16, seed=0)  # the reference's epochs, lr and wd
    result = train_probe(train, val, cfg)
    assert result["top1_val"] >= 0.95 and result["num_classes"] == 4 and result["chance"] == 0.25
    again = train_probe(train, val, cfg)
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in result.items() if k != "seconds"
    }
    shuffled = FeatureSet(
        train.tokens,
        train.labels[torch.randperm(128, generator=torch.Generator().manual_seed(0))],
        train.keys,
        train.meta,
    )
    assert train_probe(shuffled, val, cfg)["top1_val"] <= 0.45  # chance is 0.25; 128 videos


def test_multiview_prediction_averages_softmax():
    class FirstDims(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(1)[:, :3]  # [B, N, D] -> logits [B, 3]

    tokens = torch.tensor([[[[9.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0]]]])  # 1 video, 3 views
    probs = multiview_predict(FirstDims(), tokens)
    expected = torch.softmax(tokens[0, :, 0], dim=-1).mean(0)
    torch.testing.assert_close(probs[0], expected)
    assert probs.argmax(-1).item() == 0  # one confident view outweighs two mild ones (softmax, not votes)


def test_probe_command_prints_one_json_line(tmp_path, capsys):
    save_features(planted(64, seed=0), tmp_path / "train.pt")
    save_features(planted(32, seed=1), tmp_path / "val.pt")
    argv = ["probe", "--train", str(tmp_path / "train.pt"), "--val", str(tmp_path / "val.pt")]
    assert (
        main([*argv, "--kind", "linear", "--epochs", "20", "--lr", "0.01", "--batch", "8", "--seed", "1"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert (
        result["kind"] == "linear"
        and result["seed"] == 1
        and result["lr"] == 0.01
        and result["chance"] == 0.25
    )
    assert result["top1_val"] >= 0.9 and result["val_views"] == 2
    assert main(["probe", "--train", str(tmp_path / "nope.pt"), "--val", str(tmp_path / "val.pt")]) == 2


# ----------------------------------------------------------------------------- baselines


def test_baseline_inputs():
    clips = torch.rand(2, 3, 4, 32, 32)
    tokens = PixelTokens(patch=16, tubelet=2, downsample=4, pos_dim=24)(clips)
    assert tokens.shape == (2, TOKENS, 2 * 4 * 4 * 3 + 24)
    # token 0 holds the top-left 16 x 16 pixels of frames 0-1, 4x average-pooled
    cell = torch.nn.functional.avg_pool3d(clips[0, :, :2, :16, :16], (1, 4, 4))  # [3, 2, 4, 4]
    torch.testing.assert_close(tokens[0, 0, :96], cell.permute(1, 2, 3, 0).flatten())
    still = single_frame(
        torch.arange(2 * 3 * 4, dtype=torch.uint8).view(2, 3, 4, 1, 1).expand(-1, -1, -1, 8, 8)
    )
    assert still.shape == (2, 3, 4, 8, 8) and (still == still[:, :, 2:3]).all()


def test_run_probe_suite_reports_every_baseline(dataset, run_dir, tmp_path):
    result = run_probe_suite(
        run_dir, dataset, frames=4, crop=32, kinds=("linear",), epochs=2, out_dir=tmp_path
    )
    assert set(result["top1"]) == {"trained", "random_init", "single_frame", "pixels"}
    assert all(0.0 <= r["linear"] <= 1.0 for r in result["top1"].values())
    assert result["num_classes"] == 4 and result["train_videos"] == 24 and result["val_videos"] == 8
    assert result["settings"]["frame_step"] == 2  # the checkpoint's data.frame_step
    trained, random = (
        load_features(tmp_path / "trained_val.pt"),
        load_features(tmp_path / "random_init_val.pt"),
    )
    assert trained.tokens.shape == random.tokens.shape and not torch.equal(trained.tokens, random.tokens)
    assert len(list(iter_eval_videos(dataset / "val", EvalClipSpec(frames=4, crop=32)))) == 8


# ----------------------------------------------------------------------------- probe variants and the demo's suite


def planted_grid(videos: int, *, seed: int) -> FeatureSet:
    """Noise on a 4 x 2 x 2 token grid; class c raises dimension c in the first two time steps of the
    top-left cell only, so the mean over all tokens dilutes it and a pooled grid keeps it."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(videos) % 4
    x = torch.randn(videos, 1, 4, 2, 2, 8, generator=gen)
    x[torch.arange(videos), :, :2, 0, 0, labels] += 3.0
    meta = {"num_classes": 4, "grid": (4, 2, 2)}
    return FeatureSet(x.view(videos, 1, 16, 8).half(), labels, [f"v{i}" for i in range(videos)], meta)


def test_pooled_token_linear_and_lbfgs_probes_find_planted_labels():
    train, val = planted_grid(192, seed=0), planted_grid(128, seed=1)
    configs = {
        "pooled lbfgs": (ProbeConfig(kind="linear", solver="lbfgs", wd=1e-3, pool=(2, 2, 2)), 0.9),
        "token lbfgs": (ProbeConfig(kind="token_linear", solver="lbfgs", wd=1e-3), 0.8),
        "token adamw": (ProbeConfig(kind="token_linear", epochs=30, lr=1e-2, batch=32), 0.7),  # chance 0.25
    }
    for name, (cfg, floor) in configs.items():
        assert train_probe(train, val, cfg)["top1_val"] >= floor, name
    lbfgs = configs["pooled lbfgs"][0]
    mean = train_probe(train, val, ProbeConfig(kind="linear", solver="lbfgs", wd=1e-3))
    assert mean["top1_val"] < train_probe(train, val, lbfgs)["top1_val"] - 0.05  # the mean dilutes the cell
    first, again = train_probe(train, val, lbfgs), train_probe(train, val, lbfgs)
    assert first.pop("seconds") >= 0 and again.pop("seconds") >= 0 and first == again  # deterministic
    shuffled = FeatureSet(train.tokens, train.labels[torch.randperm(192)], train.keys, train.meta)
    assert train_probe(shuffled, val, lbfgs)["top1_val"] <= 0.45
    few = train_probe(
        train, val, ProbeConfig(kind="linear", solver="lbfgs", pool=(2, 2, 2), labels_per_class=4)
    )
    assert few["train_videos"] == 16 and few["top1_train"] == 1.0
    with pytest.raises(ValueError, match="pool"):
        train_probe(FeatureSet(train.tokens, train.labels, train.keys, {}), val, lbfgs)  # no grid in meta
    with pytest.raises(ValueError, match="labels-per-class"):
        train_probe(train, val, ProbeConfig(kind="linear", labels_per_class=1000))


def test_pool_tokens_label_subset_and_binomial_se():
    from vjepa.eval.evaluate import binomial_se, label_subset, pool_tokens

    fs = planted_grid(4, seed=0)
    pooled = pool_tokens(fs, (2, 1, 2)).tokens  # [4, 1, 4, 8]
    grid = fs.tokens.float().view(4, 1, 4, 2, 2, 8)
    torch.testing.assert_close(pooled[:, :, 0], grid[:, :, :2, :, 0].mean((2, 3)))
    torch.testing.assert_close(pool_tokens(fs, None).tokens[:, :, 0], fs.tokens.float().mean(2))
    labels = torch.arange(40) % 4
    subset = label_subset(labels, 3, seed=0)
    assert torch.bincount(labels[subset]).tolist() == [3, 3, 3, 3]
    assert torch.equal(subset, label_subset(labels, 3, seed=0))
    assert not torch.equal(subset, label_subset(labels, 3, seed=1))
    assert binomial_se(0.5, 100) == pytest.approx(0.05)


def test_probe_suite_with_the_runs_initial_weights_context_and_margins(dataset, run_dir, tmp_path):
    from vjepa.checkpoint import RunFolder
    from vjepa.eval.baselines import ALL_SOURCES, margins, probe_features
    from vjepa.models.weights import read_torch_file

    init_file = RunFolder(run_dir).init_weights
    assert init_file.is_file()  # the trainer writes the run's initial weights
    result = run_probe_suite(
        run_dir,
        dataset,
        frames=4,
        crop=32,
        kinds=("linear",),
        epochs=1,
        out_dir=tmp_path,
        sources=ALL_SOURCES,
        init_weights=init_file,
    )
    assert set(result["top1"]) == set(ALL_SOURCES)
    state = load_checkpoint_state(run_dir)
    initial = load_encoder(
        {**read_torch_file(init_file, what="init"), "config": state["config"]}, frames=4, crop=32
    )
    clips = next(iter_eval_videos(dataset / "val", EvalClipSpec(frames=4, frame_step=2, crop=32))).clips
    from data_pipelines import normalize

    expected = initial(normalize(clips)).half()
    got = load_features(tmp_path / "random_init_val.pt").tokens[0]
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-3, rtol=0)
    context = load_features(tmp_path / "context_val.pt").tokens
    assert not torch.equal(context, load_features(tmp_path / "random_init_val.pt").tokens)

    train, val = planted(64, seed=0), planted(48, seed=1)
    noise = FeatureSet(torch.randn_like(train.tokens.float()).half(), train.labels, train.keys, train.meta)
    probes = {
        "lin": ProbeConfig(kind="linear", solver="lbfgs"),
        "few": ProbeConfig(kind="linear", labels_per_class=4),
    }
    good = probe_features(train, val, probes, seeds=(0, 1))
    bad = probe_features(noise, val, probes, seeds=(0, 1))
    assert good["lin"]["settings"]["seeds"] == [0] and good["few"]["settings"]["seeds"] == [0, 1]
    assert sum(map(sum, good["lin"]["confusion"])) == 48 and sum(map(sum, good["few"]["confusion"])) == 96
    lead = margins({"trained": good, "pixels": bad, "random_init": bad})
    assert lead["lin"]["margin"] > 0.5 and lead["lin"]["margin_in_se"] > 3
    assert lead["lin"]["best_baseline"] in ("pixels", "random_init")


def test_rendered_probe_sets_are_balanced_repeatable_and_apart_from_each_other():
    from vjepa.eval.protocol import SYNTHETIC_CLASSES, render_probe_sets

    clips, names = render_probe_sets(16, 8, frames=4, size=32, seed=0)
    again, _ = render_probe_sets(16, 8, frames=4, size=32, seed=0)
    assert len(names) == SYNTHETIC_CLASSES and [len(clips[s]) for s in ("train", "val")] == [16, 8]
    assert torch.bincount(torch.tensor([v.label for v in clips["train"]])).tolist() == [2] * SYNTHETIC_CLASSES
    assert clips["train"][0].clips.shape == (1, 3, 4, 32, 32) and clips["train"][0].clips.dtype == torch.uint8
    assert all(torch.equal(a.clips, b.clips) for a, b in zip(clips["train"], again["train"]))
    assert not torch.equal(clips["train"][0].clips, clips["val"][0].clips)
