"""Several clip lengths and images in one run: sources with their own frames per clip, image sources
(1-frame clips), batches of one group per length with masks per length, one encoder and predictor pass
for all of them, a mask token per (length, mask configuration), and exact resume."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tiny import TINY_RUN

from data_pipelines import MaskGenerator, MixedBatch, build_train_stream, normalize, write_synthetic_dataset
from vjepa.config import load_config
from vjepa.models.builder import token_grid
from vjepa.objective import jepa_loss, target_features

TINY = [o for o in TINY_RUN if not o.startswith("data.")]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Video shards (16-frame rendered clips) and a folder of PNG and JPEG images in two classes, one of
    them not an image at all."""
    root = tmp_path_factory.mktemp("mixed")
    write_synthetic_dataset(root / "vid", videos=8, val_videos=2, frames=16, size=48, shard_size=4, workers=1)
    g = torch.Generator().manual_seed(0)
    for c in range(2):
        folder = root / "img" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = torch.randint(0, 255, (40, 56, 3), dtype=torch.uint8, generator=g).numpy()
            Image.fromarray(pixels).save(folder / f"im{i}.{'png' if i % 2 else 'jpg'}")
    (root / "img" / "class0" / "broken.png").write_bytes(b"not a png")
    return root


def mixed_config(data: Path, tmp_path: Path, *extra: str, lengths=(2, 1)):
    sources = [{"path": str(data / "vid" / "train")}]
    for frames in lengths:
        sources.append(
            {"path": str(data / ("img" if frames == 1 else "vid/train")), "frames_per_clip": frames}
        )
    raw = {
        "data": {
            "dataset": "files",
            "frames_per_clip": 4,
            "crop_size": 64,
            "batch_size": 6,
            "num_workers": 0,
            "resampled": True,
            "sources": sources,
        }
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, [*TINY, f"train.out_dir={tmp_path / 'run'}", *extra])


def stream(cfg, seed: int = 0):
    grid = token_grid(frames=4, crop=64, patch=16, tubelet=2)
    masks = MaskGenerator(cfg.mask, grid=grid, seed=seed, tubelet=2)
    return build_train_stream(cfg.data, mask_generator=masks, seed=seed)


def test_batches_hold_one_group_per_length_with_masks_on_its_grid(data, tmp_path):
    cfg = mixed_config(data, tmp_path)
    assert cfg.data.clip_lengths() == [4, 2, 1]
    s = stream(cfg)
    it = iter(s)
    seen: set[int] = set()
    for _ in range(4):
        batch = next(it)
        assert isinstance(batch, MixedBatch) and batch.num_clips == 6
        lengths = [g.clips.shape[2] for g in batch.groups()]
        assert lengths == sorted(lengths, reverse=True)  # longest first
        for g in batch.groups():
            t = g.clips.shape[2]
            seen.add(t)
            n = max(1, t // 2) * 4 * 4  # its own token grid
            assert len(g.masks) == 2
            for m in g.masks:
                assert m.batch_size == g.clips.shape[0]
                assert int(m.target_idx.max()) < n and int(m.context_idx.max()) < n
            if t == 1:  # images: the keys of the image folder
                assert all(k.startswith("class") for k in g.keys)
    assert seen == {4, 2, 1}
    stats = s.stats()
    assert stats["skipped"] == 1 and stats["skipped_by_shard"][str(data / "img")]["keys"] == [
        "class0/broken.png"
    ]


def test_a_video_source_does_not_read_image_files_and_an_image_listed_in_one_is_a_bad_sample(
    data, tmp_path, caplog
):
    cfg = mixed_config(data, tmp_path, "data.max_skip_fraction=1.0", lengths=(2,))
    cfg.data.sources[1].path = str(data / "img")  # a folder of images as a source of 2-frame clips
    with pytest.raises(ValueError, match="no samples found"):  # a video source lists no image files
        next(iter(stream(cfg)))
    listed = tmp_path / "images.csv"  # ... but a CSV list may name one
    listed.write_text("".join(f"{p} 0\n" for p in sorted((data / "img").rglob("im*.*"))))
    cfg.data.sources[1].path = str(listed)
    s = stream(cfg)
    for _batch, _ in zip(s, range(3)):
        pass
    assert s.stats()["skipped"] >= 1
    assert "give image sources frames_per_clip: 1" in caplog.text


def test_config_errors_name_the_source_key(data, tmp_path):
    with pytest.raises(
        ValueError, match=r"data\.sources\.1\.frames_per_clip.*more than data\.frames_per_clip"
    ):
        mixed_config(data, tmp_path, lengths=(8,))
    with pytest.raises(
        ValueError, match=r"data\.sources\.1\.frames_per_clip.*not divisible by model\.tubelet"
    ):
        mixed_config(data, tmp_path, lengths=(3,))
    with pytest.raises(ValueError, match=r"mask\.0.*future mask needs at least 2 time steps"):
        mixed_config(data, tmp_path, "mask=[{kind: future}]", lengths=(1,))


def tiny_models(cfg):
    from vjepa.train.trainer import build_models

    torch.manual_seed(0)
    model = build_models(cfg, torch.device("cpu"))
    for part in (model.encoder, model.predictor):
        part.to_empty(device="cpu") if any(p.is_meta for p in part.parameters()) else None
    return model


def test_one_pass_equals_each_length_alone_and_uses_its_own_mask_tokens(data, tmp_path):
    """The mixed batch's loss (one encoder and one predictor pass over every group) is the mean of the
    (length, configuration) pair losses computed group by group; each length trains its own mask tokens."""
    cfg = mixed_config(data, tmp_path)
    model = tiny_models(cfg)
    assert len(model.predictor.mask_tokens) == 2 * 3
    with torch.no_grad():
        for k, token in enumerate(model.predictor.mask_tokens):
            token.normal_(generator=torch.Generator().manual_seed(k))  # distinct tokens: a mix-up shows
    batch = next(iter(stream(cfg)))
    groups = batch.groups()
    assert len(groups) == 3
    clips = [normalize(g.clips) for g in groups]
    targets = [target_features(model.encoder, c) for c in clips]
    lengths = tuple(cfg.data.clip_lengths())
    out = jepa_loss(model.encoder, model.predictor, targets, clips, [g.masks for g in groups], lengths)
    model.zero_grad()
    out.loss.backward()
    grads = [t.grad.abs().sum().item() for t in model.predictor.mask_tokens]
    assert all(g > 0 for g in grads), grads  # every (length, configuration) token is used
    alone = []
    for g, c, t in zip(groups, clips, targets):
        one = jepa_loss(model.encoder, model.predictor, [t], [c], [g.masks], lengths)
        alone.extend(one.loss_per_mask)
    torch.testing.assert_close(out.loss.detach(), torch.tensor(alone).mean(), rtol=1e-5, atol=1e-6)

    # Without the images in the batch, their two tokens get no gradient.
    model.zero_grad()
    two = jepa_loss(
        model.encoder, model.predictor, targets[:2], clips[:2], [g.masks for g in groups[:2]], lengths
    )
    two.loss.backward()
    grads = [t.grad.abs().sum().item() if t.grad is not None else 0.0 for t in model.predictor.mask_tokens]
    assert all(g > 0 for g in grads[:4]) and grads[4:] == [0.0, 0.0], grads


def _final(run: Path, step: int) -> dict:
    return torch.load(run / "checkpoints" / f"step_{step:08d}" / "model.pt", weights_only=True)


def test_mixed_run_trains_and_resumes_exactly(data, tmp_path):
    from vjepa.train.trainer import train

    args = ["train.steps=6", "checkpoint.every_steps=3", "checkpoint.keep_last=5", "optim.warmup_steps=2"]
    a = mixed_config(data, tmp_path / "a", *args)
    summary = train(a)
    assert summary.steps_run == 6 and summary.skipped_steps == 0
    run_a = Path(a.train.out_dir)
    rows = [json.loads(line) for line in (run_a / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in rows)  # finite

    b = mixed_config(data, tmp_path / "b", *args)
    train(b)
    run_b = Path(b.train.out_dir)
    shutil.rmtree(run_b / "checkpoints" / "step_00000006")  # as if killed after the save at step 3
    resumed = train(mixed_config(data, tmp_path / "b", *args))
    assert resumed.start_step == 3 and resumed.steps_run == 3
    sa, sb = _final(run_a, 6), _final(run_b, 6)
    for part in ("encoder", "predictor", "target_encoder"):
        for key, value in sa[part].items():
            torch.testing.assert_close(sb[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")


def test_dense_terms_on_a_mixed_batch_average_over_the_pairs_present(data, tmp_path):
    """V-JEPA 2.1's context loss and levels on a batch of three lengths: the context term is the mean over
    the (length, configuration) pairs present, as computing each length alone shows."""
    from vjepa.dense.loss import DenseLoss

    cfg = mixed_config(data, tmp_path, "loss.context_weight=0.5", "loss.levels=[0,1]")
    model = tiny_models(cfg)
    batch = next(iter(stream(cfg)))
    groups = batch.groups()
    clips = [normalize(g.clips) for g in groups]
    targets = [target_features(model.encoder, c, [0, 1]) for c in clips]
    dense = DenseLoss.from_config(cfg.loss).at(0.5)
    lengths = tuple(cfg.data.clip_lengths())
    out = jepa_loss(model.encoder, model.predictor, targets, clips, [g.masks for g in groups], lengths, dense)
    assert targets[0].shape[-1] == 2 * 48 and out.terms["context_weight"] == 0.5
    alone = [
        jepa_loss(model.encoder, model.predictor, [t], [c], [g.masks], lengths, dense).terms["context_loss"]
        for g, c, t in zip(groups, clips, targets)
    ]
    assert out.terms["context_loss"] == pytest.approx(sum(alone) / len(alone), rel=1e-5)


def test_images_in_tar_shards_are_one_frame_clips_with_their_labels(data, tmp_path):
    import tarfile

    shard = tmp_path / "images-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, path in enumerate(sorted((data / "img").rglob("im*.*"))):
            for name, payload in (
                (f"s{i}{path.suffix}", path.read_bytes()),
                (f"s{i}.cls", str(i % 2).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    cfg = mixed_config(data, tmp_path, lengths=(1,))
    cfg.data.sources[1].path = str(shard)
    cfg.data.sources[1].weight = 3.0  # images in most batches
    seen = []
    for batch, _ in zip(stream(cfg), range(3)):
        images = [g for g in batch.groups() if g.clips.shape[2] == 1]
        seen += [(k, int(y)) for g in images for k, y in zip(g.keys, g.labels)]
    assert seen and all(k.startswith("images-000000/s") for k, _ in seen)
    assert all(int(k.rsplit("s", 1)[1]) % 2 == y for k, y in seen)  # KEY.cls read with its image


def _merge(batches):
    """The MixedBatches of one step as one batch: each length's clips and per-sample masks concatenated."""
    from data_pipelines import MaskBatch, VideoBatch

    by_length: dict[int, list] = {}
    for batch in batches:
        for g in batch.groups():
            by_length.setdefault(g.clips.shape[2], []).append(g)
    parts = []
    for t in sorted(by_length, reverse=True):
        gs = by_length[t]
        masks = []
        for k in range(len(gs[0].masks)):
            samples = [g.masks[k].sample(i) for g in gs for i in range(g.clips.shape[0])]
            masks.append(MaskBatch.from_lists([c for c, _ in samples], [x for _, x in samples]))
        clips = torch.cat([g.clips for g in gs])
        keys = [key for g in gs for key in g.keys]
        parts.append(VideoBatch(clips, torch.cat([g.labels for g in gs]), masks, keys))
    return MixedBatch(parts)


@pytest.mark.parametrize("dense", [False, True], ids=["vjepa2", "vjepa21"])
def test_accumulated_mixed_micro_batches_equal_their_merged_batch(data, tmp_path, dense):
    """3 micro-batches of several lengths (not every length in each) train exactly like the one batch that
    holds all their clips: the pair means and (with V-JEPA 2.1's terms) the context loss are the step's."""
    import copy

    from vjepa.distributed.env import DistEnv
    from vjepa.train.trainer import make_engine, train_step

    extra = ["loss.context_weight=0.5", "loss.levels=[0,1]"] if dense else []
    cfg = mixed_config(data, tmp_path, "optim.warmup_steps=0", *extra)
    micro = [b for b, _ in zip(stream(cfg, seed=3), range(3))]
    micro[1] = MixedBatch(micro[1].parts[:2])  # one micro-batch without images
    merged = _merge(micro)
    model = tiny_models(cfg)
    results, weights = [], []
    for batches in (micro, merged):
        engine = make_engine(cfg, copy.deepcopy(model), torch.device("cpu"), DistEnv())
        results.append(train_step(engine, batches, 0, cfg, torch.device("cpu")))
        weights.append({k: v.detach().clone() for k, v in engine.module.state_dict().items()})
    accum, whole = results
    assert accum.applied and whole.applied
    assert accum.loss == pytest.approx(whole.loss, rel=1e-5)
    assert accum.loss_per_mask == pytest.approx(whole.loss_per_mask, rel=1e-5)
    if dense:
        assert accum.terms["context_loss"] == pytest.approx(whole.terms["context_loss"], rel=1e-5)
    moved = max((weights[1][k] - v).abs().max().item() for k, v in model.state_dict().items())
    assert moved > 1e-4
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[0][key], value, rtol=0, atol=2e-6, msg=key)


def test_packed_target_features_equal_each_length_alone(data, tmp_path):
    """The target's one packed pass over the clips of every length (one patch embedding call for all of
    them) gives each length's dense features, also with several levels."""
    from vjepa.objective import packed_target_features

    for pos in ("sincos", "rope"):
        cfg = mixed_config(data, tmp_path, f"model.pos_embed={pos}")
        model = tiny_models(cfg)
        clips = [normalize(g.clips) for g in next(iter(stream(cfg))).groups()]
        for levels in ((), (0, 1)):
            packed = packed_target_features(model.encoder, clips, levels)
            for c, h in zip(clips, packed):
                alone = target_features(model.encoder, c, levels)
                torch.testing.assert_close(h, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.dist
def test_mixed_lengths_train_under_zero3_on_two_processes(data, tmp_path):
    """Under ZeRO-3 every rank must call the same modules the same number of times (parameters are
    gathered in forward hooks), whatever clip lengths its batches hold: one patch embedding and one target
    pass per micro-batch. With one embedding call per length the ranks' calls differ and the run hangs
    (it did at step 1 with these batches)."""
    from test_distributed import run_torchrun

    cfg = mixed_config(data, tmp_path)  # writes mixed.yaml
    overrides = [o for o in TINY if not o.startswith("train.out_dir")]
    args = ["-m", "vjepa", "train", "--config", str(tmp_path / "mixed.yaml"), *overrides]
    args += ["dist.backend=deepspeed", "dist.zero_stage=3", "optim.accumulate=2", "data.batch_size=4"]
    args += [
        "train.steps=4",
        f"train.out_dir={tmp_path / 'z3'}",
        "loss.levels=[0,1]",
        "loss.context_weight=0.5",
    ]
    proc = run_torchrun(args, timeout=240)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps_run"] == 4 and summary["world_size"] == 2 and summary["skipped_steps"] == 0
    assert cfg.data.clip_lengths() == [4, 2, 1]
