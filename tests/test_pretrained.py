"""Pretrained models in and out: official V-JEPA / V-JEPA 2 files built here from the published key names and
shapes (tiny sizes, random weights), loaded with `vjepa.load_encoder` / `load_predictor`, and checked against
an independent re-implementation of the published forward written below (fp32, atol 1e-5); other clip sizes,
ZeRO-3 shards, safetensors, clear errors, `train.init_from`, and extract + probe from an official file.

The reference forward and the official-file builders live in tests/official_reference.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from official_reference import V1, V2, official_parts, ref_encoder, ref_predictor, ref_rotate, write_official

import vjepa
from vjepa.cli import main
from vjepa.config import load_config
from vjepa.eval.extract import load_features
from vjepa.layers.pos_embed import Rope3D, grid_coords
from vjepa.models.weights import load_weights
from vjepa.pretrained import read_pretrained

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-5


@pytest.fixture(scope="module")
def v1(tmp_path_factory) -> tuple[Path, dict]:
    parts = official_parts(1)
    return write_official(tmp_path_factory.mktemp("v1") / "vitt16.pth.tar", parts), parts


@pytest.fixture(scope="module")
def v2(tmp_path_factory) -> tuple[Path, dict]:
    parts = official_parts(2, seed=1)
    return write_official(tmp_path_factory.mktemp("v2") / "vitm.pt", parts, prefix="module."), parts


def clips_for(frames: int, crop: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(2, 3, frames, crop, crop, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- features equal the published ones


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("clip", [(4, 32), (8, 48)], ids=["file-clip", "other-clip"])
def test_official_encoder_features_equal_the_published_forward(version, clip, v1, v2):
    """Both encoders of a V-JEPA 1 (sin-cos) and a V-JEPA 2 (RoPE) file, at the file's clip and at another
    frames x crop (the sin-cos table rebuilt for the new grid, as the published evaluation does)."""
    path, parts = v1 if version == 1 else v2
    heads = (V1 if version == 1 else V2)["heads"]
    clips = clips_for(*clip)
    for which, key in (("target", "target_encoder"), ("context", "encoder")):
        encoder = vjepa.load_encoder(path, which=which, frames=clip[0], crop=clip[1])
        assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
        with torch.no_grad():
            ours = encoder(clips)
            ref = ref_encoder(parts[key], clips, heads=heads, rope=version == 2)
        assert ours.shape == ref.shape == (2, (clip[0] // 2) * (clip[1] // 16) ** 2, encoder.width)
        print(f"V-JEPA {version} {which} {clip}: max |diff| {max_diff(ours, ref):.2e}")
        assert max_diff(ours, ref) <= ATOL, (which, max_diff(ours, ref))
    if version == 2:  # the same weights under our half-split RoPE are another model
        half = vjepa.build_encoder(
            "vit_micro", frames=clip[0], crop=clip[1], pos_embed="rope", rope_layout="half"
        )
        load_weights(half, parts["target_encoder"], "test")
        with torch.no_grad():
            gap = max_diff(half(clips), ref_encoder(parts["target_encoder"], clips, heads=heads, rope=True))
        print(f"V-JEPA 2 weights under the half-split layout: max |diff| {gap:.2f}")
        assert gap > 0.5


@pytest.mark.parametrize("version", [1, 2])
def test_official_predictor_equals_the_published_forward(version, v1, v2):
    path, parts = v1 if version == 1 else v2
    a = V1 if version == 1 else V2
    predictor = vjepa.load_predictor(path, frames=4, crop=48)
    assert len(predictor.mask_tokens) == a["masks"]  # V-JEPA 2 files carry 10
    grid = (2, 3, 3)
    gen = torch.Generator().manual_seed(2)
    perm = torch.stack([torch.randperm(18, generator=gen) for _ in range(2)])
    ctx_ids, tgt_ids = perm[:, :7], perm[:, 7:12]
    ctx = torch.randn(2, 7, a["width"], generator=gen)
    for mask_index in sorted({0, a["masks"] - 1}):
        with torch.no_grad():
            ours = predictor(
                ctx,
                context_idx=ctx_ids,
                context_valid=None,
                target_idx=tgt_ids,
                target_valid=None,
                mask_index=mask_index,
            )
            ref = ref_predictor(
                parts["predictor"],
                ctx,
                ctx_ids,
                tgt_ids,
                grid=grid,
                heads=a["pred_heads"],
                rope=version == 2,
                mask_index=mask_index,
            )
        print(f"V-JEPA {version} predictor, mask token {mask_index}: max |diff| {max_diff(ours, ref):.2e}")
        assert max_diff(ours, ref) <= ATOL


def test_prefixes_and_bare_keys_load_alike(tmp_path, v2):
    path, parts = v2
    clips = clips_for(4, 32)
    with torch.no_grad():
        ref = vjepa.load_encoder(path, frames=4, crop=32)(clips)
        for prefix in ("module.backbone.", "backbone.", ""):
            other = write_official(tmp_path / f"p{len(prefix)}.pt", parts, prefix=prefix)
            assert torch.equal(vjepa.load_encoder(other, frames=4, crop=32)(clips), ref), prefix


def test_an_encoder_only_file_with_another_predictor_loads_its_encoder(tmp_path):
    """V-JEPA 2-AC files carry `encoder` and an action-conditioned predictor, no target: the encoder loads
    (and stands in for the target), the predictor is refused with the reason."""
    parts = official_parts(2, seed=4)
    ac = {
        "encoder": parts["encoder"],
        "predictor": {
            "predictor_embed.weight": torch.zeros(1024, 96),
            "action_encoder.weight": torch.zeros(1024, 7),
        },
    }
    path = write_official(tmp_path / "ac.pt", ac)
    clips = clips_for(4, 32)
    with torch.no_grad():
        ours = vjepa.load_encoder(path, frames=4, crop=32)(clips)
        assert max_diff(ours, ref_encoder(parts["encoder"], clips, heads=V2["heads"], rope=True)) <= ATOL
    with pytest.raises(ValueError, match=r"no predictor weights \(not loaded: .*no mask_tokens"):
        vjepa.load_predictor(path)


def test_rope_layouts_why_ours_stays_the_default():
    """The published layout equals the reference rotation; ours is a true rotation (norms kept, scores depend
    only on coordinate differences), the published one is neither, and they give different features."""
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 10, 64, generator=gen), torch.randn(2, 4, 10, 64, generator=gen)
    coords = torch.randint(0, 8, (2, 10, 3), generator=gen)
    published, half = Rope3D(64, layout="vjepa2"), Rope3D(64, layout="half")
    a = published.axis_dim
    ref = torch.cat([ref_rotate(q[..., i * a : (i + 1) * a], coords[:, None, :, i]) for i in range(3)], -1)
    assert max_diff(published.apply(q, coords)[..., : 3 * a], ref) <= 1e-6
    assert torch.equal(published.apply(q, coords)[..., 3 * a :], q[..., 3 * a :])
    layout_gap = max_diff(published.apply(q, coords), half.apply(q, coords))
    print(f"published vs half-split RoPE on N(0,1) queries: max |diff| {layout_gap:.2f}")
    assert layout_gap > 1.0
    shift = torch.tensor([3, 1, 2])

    def scores(rope):
        return rope.apply(q, coords) @ rope.apply(k, coords).transpose(-2, -1)

    def shifted(rope):
        return rope.apply(q, coords + shift) @ rope.apply(k, coords + shift).transpose(-2, -1)

    norm = torch.linalg.vector_norm
    assert torch.allclose(norm(half.apply(q, coords), dim=-1), norm(q, dim=-1), atol=1e-5)
    assert torch.allclose(scores(half), shifted(half), atol=1e-4)
    assert not torch.allclose(norm(published.apply(q, coords), dim=-1), norm(q, dim=-1), atol=1e-2)
    assert not torch.allclose(scores(published), shifted(published), atol=1e-2)


# ----------------------------------------------------------------------------- mask tokens, inspect


def test_a_run_may_use_fewer_mask_tokens_than_the_file(v2):
    path, parts = v2
    state = read_pretrained(path)
    small = vjepa.build_predictor(
        embed_dim=96, frames=4, crop=32, width=192, depth=2, heads=12, num_mask_tokens=2, pos_embed="rope"
    )
    load_weights(small, state["predictor"], "test")
    for k in range(2):
        assert torch.equal(small.mask_tokens[k].data, parts["predictor"][f"mask_tokens.{k}"])
    more = vjepa.build_predictor(
        embed_dim=96, frames=4, crop=32, width=192, depth=2, heads=12, num_mask_tokens=12, pos_embed="rope"
    )
    with pytest.raises(ValueError, match=r"missing \['mask_tokens\.10', 'mask_tokens\.11'\]"):
        load_weights(more, state["predictor"], "test")


def test_inspect_reports_what_the_file_holds(v1, v2, capsys):
    assert main(["inspect", str(v2[0]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "official V-JEPA 2" and info["model"] == "vit_micro"
    assert info["position"] == "rope (vjepa2 layout)" and info["patch"] == 16 and info["tubelet"] == 2
    assert info["parts"] == ["encoder", "predictor", "target_encoder"]
    assert info["predictor"] == {"width": 192, "depth": 2, "heads": 12, "mask_tokens": 10}
    assert info["parameters"]["encoder"] == sum(t.numel() for t in v2[1]["encoder"].values())
    assert main(["inspect", str(v1[0])]) == 0
    table = capsys.readouterr().out
    for line in ("official V-JEPA", "vit_test", "sincos", "2 x 2 x 2", "the checkpoint"):
        assert line in table, line
    from vjepa.pretrained import describe

    info = describe(v1[0])
    assert (info["frames"], info["crop"], info["grid"]) == (4, 32, [2, 2, 2])


# ----------------------------------------------------------------------------- safetensors, errors


def test_safetensors_round_trip(tmp_path, v2):
    out = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", str(v2[0]), "--out", str(out), "--format", "safetensors"]) == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"])["model"]["rope_layout"] == "vjepa2"
    back, orig = read_pretrained(out), read_pretrained(v2[0])
    for part in ("encoder", "predictor", "target_encoder"):
        assert back[part].keys() == orig[part].keys()
        assert all(torch.equal(back[part][k], orig[part][k]) for k in orig[part])
    clips = clips_for(4, 32)
    with torch.no_grad():
        assert torch.equal(
            vjepa.load_encoder(out, frames=4, crop=32)(clips),
            vjepa.load_encoder(v2[0], frames=4, crop=32)(clips),
        )
    torch_file = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(out), "--out", str(torch_file)]) == 0  # and back to torch
    from vjepa.pretrained import describe

    info = describe(torch_file)
    assert info["format"] == "vjepa export (torch)" and info["converted_from"] == "official V-JEPA 2"
    assert torch.equal(
        read_pretrained(torch_file)["predictor"]["mask_tokens.9"], orig["predictor"]["mask_tokens.9"]
    )


def test_truncated_files_are_clear_errors(tmp_path, v1):
    safe = tmp_path / "m.safetensors"
    main(["export", "--checkpoint", str(v1[0]), "--out", str(safe), "--format", "safetensors"])
    for source in (v1[0], safe):
        cut = tmp_path / f"cut{source.suffix}"
        cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        with pytest.raises(ValueError, match=str(cut)):
            vjepa.load_encoder(cut)
    with pytest.raises(ValueError, match="does not exist"):
        vjepa.load_encoder(tmp_path / "nothing.pt")


def test_wrong_architecture_is_a_clear_error(tmp_path, v1):
    parts = official_parts(1)
    del parts["target_encoder"]["blocks.1.mlp.fc2.bias"]
    parts["target_encoder"]["blocks.1.mlp.fc3.bias"] = torch.zeros(48)
    with pytest.raises(
        ValueError, match=r"missing \['blocks\.1\.mlp\.fc2\.bias'\], unexpected \['blocks\.1\.mlp\.fc3"
    ):
        vjepa.load_encoder(write_official(tmp_path / "keys.pt", parts))
    parts = official_parts(1)
    parts["target_encoder"]["blocks.0.mlp.fc1.weight"] = torch.zeros(100, 48)
    with pytest.raises(ValueError, match=r"no registered encoder size has width 48, depth 2, MLP width 100"):
        vjepa.load_encoder(write_official(tmp_path / "mlp.pt", parts))
    parts = official_parts(1)
    parts["target_encoder"]["pos_embed"] = torch.randn(1, 8, 48)  # not the sin-cos table
    with pytest.raises(ValueError, match=r"pos_embed is not the 3D sin-cos table"):
        vjepa.load_encoder(write_official(tmp_path / "table.pt", parts))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"neither an exported model file .* holds \['weights'\]"):
        vjepa.load_encoder(tmp_path / "other.pt")


# ----------------------------------------------------------------------------- train.init_from


TINY = [
    "data.dataset=synthetic",
    "data.frames_per_clip=4",
    "data.frame_step=2",
    "data.crop_size=32",
    "data.batch_size=2",
    "train.precision=fp32",
    "train.device=cpu",
    "train.steps=1",
    "checkpoint.every_steps=1",
    "log.progress=false",
    "log.tensorboard=false",
    "log.jsonl=false",
]
V2_RUN = ["model.name=vit_micro", "model.pos_embed=rope", "model.pred_width=192", "model.pred_depth=2"]


def test_init_from_an_official_file_continues_from_its_weights(tmp_path, v2):
    from vjepa.train.trainer import train

    path, parts = v2
    # lr 1e-12 moves no fp32 weight of this size and EMA momentum 1 keeps the target: the file's weights stay
    frozen = [
        "optim.lr=1e-12",
        "optim.start_lr=1e-12",
        "optim.final_lr=1e-12",
        "optim.ema_start=1",
        "optim.ema_end=1",
    ]
    overrides = [*TINY, *V2_RUN, "model.pred_heads=12", "model.rope_layout=vjepa2", *frozen]
    overrides.append(f"train.init_from={path}")
    summary = train(
        load_config(REPO / "configs" / "quickstart.yaml", [*overrides, f"train.out_dir={tmp_path / 'run'}"])
    )
    assert summary.steps_run == 1 and math.isfinite(summary.last_loss)
    saved = read_pretrained(tmp_path / "run")
    for part in ("encoder", "target_encoder"):
        assert all(torch.allclose(saved[part][k], parts[part][k], rtol=0, atol=1e-9) for k in parts[part]), (
            part
        )
    assert sorted(k for k in saved["predictor"] if k.startswith("mask_tokens.")) == [
        "mask_tokens.0",
        "mask_tokens.1",
    ]
    assert torch.allclose(saved["predictor"]["mask_tokens.1"], parts["predictor"]["mask_tokens.1"], atol=1e-9)
    for wrong, key in (("model.rope_layout=half", "rope_layout"), ("model.pred_heads=16", "pred_heads")):
        bad = load_config(
            REPO / "configs" / "quickstart.yaml", [*overrides, wrong, f"train.out_dir={tmp_path / key}"]
        )
        with pytest.raises(ValueError, match=rf"train.init_from: .* model\.{key}="):
            train(bad)


# ----------------------------------------------------------------------------- ZeRO-3 shards


@pytest.mark.dist
def test_zero3_shards_give_the_features_of_the_consolidated_file(tmp_path):
    """A 2-process DeepSpeed ZeRO-3 run (the distributed tests' worker): `load_encoder` on its sharded step
    folder, on its `vjepa export` file and on a safetensors export all give the live ZeRO-3 model's features."""
    import dist_worker as worker
    from test_distributed import run_worker, tensor

    got = run_worker(tmp_path, "--backend", "deepspeed", "--stage", "3", "--steps", "2", "--export")
    step_dir = tmp_path / "checkpoints" / "step_00000002"
    assert {p.name for p in step_dir.glob("target_rank*.pt")} == {"target_rank0.pt", "target_rank1.pt"}
    safe = tmp_path / "zero3.safetensors"
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(safe), "--format", "safetensors"]) == 0
    clips = worker.probe_clips()
    for which, live in (("target", "target"), ("context", "encoder")):
        feats = {}
        for name, source in (("shards", step_dir), ("export", Path(got["export"])), ("safetensors", safe)):
            with torch.no_grad():
                feats[name] = vjepa.load_encoder(source, which=which)(clips).double()
        for name, value in feats.items():
            gap = max_diff(value, tensor(got["features"][live]))
            print(f"ZeRO-3 {which} from {name}: max |diff| to the live model {gap:.2e}")
            assert gap <= 1e-5, (which, name)
        assert torch.equal(feats["shards"], feats["export"]) and torch.equal(
            feats["shards"], feats["safetensors"]
        )


# ----------------------------------------------------------------------------- extract + probe end to end


def test_extract_and_probe_from_an_official_file(tmp_path, v2, capsys):
    from data_pipelines.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, videos=16, val_videos=8, classes=4, frames=8, size=32, seed=0, workers=1)
    feats = tmp_path / "feats"
    argv = ["extract", "--checkpoint", str(v2[0]), "--data", str(data), "--out", str(feats)]
    assert main([*argv, "--frames", "4", "--frame-step", "1", "--crop", "32", "--batch", "8"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "vit_micro" and summary["videos"] == {"train": 16, "val": 8}
    assert summary["shape"]["train"] == [16, 1, 8, 96]
    # the features are the published forward's, up to float16 storage
    from data_pipelines import EvalClipSpec, iter_eval_videos, normalize

    video = next(iter(iter_eval_videos(data / "val", EvalClipSpec(frames=4, frame_step=1, crop=32))))
    stored = load_features(feats / "val")
    row = stored.keys.index(video.key)
    with torch.no_grad():
        ref = ref_encoder(v2[1]["target_encoder"], normalize(video.clips), heads=V2["heads"], rope=True)
    assert max_diff(stored.tokens[row].float(), ref) <= 1e-2
    probe = ["probe", "--train", str(feats / "train"), "--val", str(feats / "val"), "--epochs", "2"]
    assert main([*probe, "--batch", "8"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_classes"] == 4 and 0.0 <= result["top1_val"] <= 1.0


def test_grid_coords_match_the_reference_token_order():
    """Our (t, h, w) coordinates are the published id decomposition (time-major)."""
    ids = torch.arange(2 * 3 * 4)
    ref = torch.stack([ids // 12, (ids % 12) // 4, ids % 4], dim=1)
    assert torch.equal(grid_coords((2, 3, 4)), ref)


def test_grids_and_sizes_of_the_published_files():
    from vjepa.models.official import infer_grid
    from vjepa.models.registry import find_size

    # V-JEPA 1 at 16 x 224 and 16 x 384 (V-JEPA 2 files hold no table), and the tiny test clips
    for tokens, grid in ((1568, (8, 14, 14)), (4608, (8, 24, 24)), (8, (2, 2, 2)), (18, (2, 3, 3))):
        assert infer_grid(tokens, what="x") == grid
    assert find_size(width=1024, depth=24, mlp_hidden=4096) == "vit_large"
    # 22 heads: the published vit_giant_xformers that V-JEPA 2's ViT-g uses
    assert find_size(width=1408, depth=40, mlp_hidden=6144) == "vit_giant"
    # 16 heads, and the MLP ratio 4 that their misspelt argument leaves in effect
    assert find_size(width=1664, depth=48, mlp_hidden=6656) == "vit_gigantic"
    assert find_size(width=1664, depth=48, mlp_hidden=6656, heads=26) == "vit_gigantic_xformers"
    big = vjepa.build_encoder("vit_gigantic", frames=16, crop=256, pos_embed="rope", device="meta")
    assert big.blocks[0].mlp.fc1.weight.shape == (6656, 1664) and big.blocks[0].attn.heads == 16
