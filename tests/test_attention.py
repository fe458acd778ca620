"""Attention: SDPA numerics against a hand-written softmax(QK^T/sqrt(d))V, backend dispatch errors, xformers
numerics on CUDA (marked gpu) and activation checkpointing.

Shape legend: B batch, H heads, K tokens, hd head dim, D width.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from data_pipelines.batch import MaskBatch
from vjepa.layers.attention import Attention, attend, check_backend
from vjepa.models import build_encoder, build_predictor


def manual_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v with padded keys at -inf; q, k, v [B, H, K, hd]."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, K, K]
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1) @ v


def _qkv(b: int, h: int, k: int, hd: int, *, seed: int = 0, **kw) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, k, hd, generator=gen).to(**kw) for _ in range(3)]


def _key_valid(lengths: list[int], k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.arange(k, device=device)[None] < torch.tensor(lengths, device=device)[:, None]  # [B, K]


# ----------------------------------------------------------------------------- SDPA numerics


def test_sdpa_matches_manual_softmax_attention() -> None:
    q, k, v = _qkv(2, 3, 17, 16)
    torch.testing.assert_close(attend(q, k, v), manual_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_sdpa_matches_manual_attention_with_key_padding() -> None:
    q, k, v = _qkv(3, 2, 12, 8, seed=1)
    valid = _key_valid([12, 5, 1], 12)
    out = attend(q, k, v, key_valid=valid)
    torch.testing.assert_close(out, manual_attention(q, k, v, valid), atol=1e-5, rtol=1e-5)
    # Padded keys carry no weight: changing them changes nothing.
    k2, v2 = k.clone(), v.clone()
    k2[~valid[:, None, :, None].expand_as(k2)] = 100.0
    v2[~valid[:, None, :, None].expand_as(v2)] = -100.0
    torch.testing.assert_close(attend(q, k2, v2, key_valid=valid), out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, manual_attention(q, k, v), atol=1e-3)  # the mask matters here
    # An all-valid mask takes the unmasked path with the same result.
    full = torch.ones(3, 12, dtype=torch.bool)
    torch.testing.assert_close(attend(q, k, v, key_valid=full), attend(q, k, v), atol=1e-6, rtol=0)


def test_attention_module_splits_qkv_rows_as_q_k_v() -> None:
    torch.manual_seed(0)
    attn = Attention(24, 3)
    x = torch.randn(2, 7, 24)  # [B, K, D]
    valid = _key_valid([7, 4], 7)
    q, k, v = (t.view(2, 7, 3, 8).transpose(1, 2) for t in attn.qkv(x).split(24, dim=-1))  # [B, H, K, hd]
    expected = attn.proj(manual_attention(q, k, v, valid).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(attn(x, key_valid=valid), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="coordinates"):
        Attention(48, 2, rope=True)(torch.randn(1, 3, 48))


# ----------------------------------------------------------------------------- backend dispatch


def test_xformers_on_cpu_points_at_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="sdpa"):
        check_backend("xformers", "cpu")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # even where xformers is installed, it has no CPU kernels
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "xformers" else real_find_spec(name, *a),
    )
    with pytest.raises(ValueError, match="sdpa"):
        check_backend("xformers", torch.device("cpu"))
    q, k, v = _qkv(1, 2, 4, 8)
    with pytest.raises(ValueError, match="sdpa"):  # no silent fallback at call time either
        attend(q, k, v, backend="xformers")


def test_xformers_not_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "xformers" else real_find_spec(name, *a)
    )
    with pytest.raises(ValueError, match=r"vjepa\[gpu\]"):
        Attention(48, 3, backend="xformers")
    with pytest.raises(ValueError, match=r"vjepa\[gpu\]"):
        build_encoder("vit_test", frames=4, crop=32, attention="xformers", device="meta")


@pytest.mark.parametrize("backend", ["flash", "SDPA", ""])
def test_unknown_backend_raises(backend: str) -> None:
    with pytest.raises(ValueError, match="model.attention"):
        check_backend(backend)
    with pytest.raises(ValueError, match="model.attention"):
        Attention(48, 3, backend=backend)


# ----------------------------------------------------------------------------- xformers on CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_xformers_matches_sdpa_on_cuda(dtype: torch.dtype) -> None:
    pytest.importorskip("xformers")
    atol = 2e-3 if dtype == torch.float16 else 1.6e-2
    q, k, v = _qkv(3, 4, 70, 64, seed=2, device="cuda", dtype=dtype)
    check_backend("xformers", "cuda")
    dense = attend(q, k, v, backend="xformers")
    torch.testing.assert_close(dense, attend(q, k, v), atol=atol, rtol=atol)
    # Padded batch -> packed sequences with a block-diagonal mask: equal on the real rows.
    valid = _key_valid([70, 33, 1], 70, device="cuda")
    packed = attend(q, k, v, key_valid=valid, backend="xformers")
    reference = attend(q, k, v, key_valid=valid)
    rows = valid[:, None, :, None].expand_as(packed)
    torch.testing.assert_close(packed[rows], reference[rows], atol=atol, rtol=atol)
    # Gradients flow through the packed path too.
    q.requires_grad_(True)
    attend(q, k, v, key_valid=valid, backend="xformers")[rows].float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_xformers_encoder_matches_sdpa_encoder_on_cuda(pos_embed: str) -> None:
    pytest.importorskip("xformers")
    kw = {"frames": 4, "crop": 48, "pos_embed": pos_embed, "device": "cuda"}
    sdpa = build_encoder("vit_test", **kw)
    xf = build_encoder("vit_test", attention="xformers", **kw)
    xf.load_state_dict(sdpa.state_dict())
    m = MaskBatch.from_lists(
        [torch.arange(3, 15), torch.arange(0, 18, 3)], [torch.tensor([0]), torch.tensor([1])]
    )
    m = m.to("cuda")
    clips = torch.randn(2, 3, 4, 48, 48, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = sdpa(clips, m.context_idx, m.context_valid).float()
        b = xf(clips, m.context_idx, m.context_valid).float()
    rows = m.context_valid
    torch.testing.assert_close(b[rows], a[rows], atol=5e-2, rtol=5e-2)


# ----------------------------------------------------------------------------- activation checkpointing


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_activation_checkpointing_gives_the_same_gradients(pos_embed: str) -> None:
    kw = {"frames": 4, "crop": 48, "pos_embed": pos_embed, "device": "cpu"}
    pkw = {"embed_dim": 48, "width": 32, "depth": 2, "heads": 2, **kw}
    enc, pred = build_encoder("vit_test", **kw), build_predictor(**pkw)
    enc_ck = build_encoder("vit_test", grad_ckpt=True, **kw)
    pred_ck = build_predictor(grad_ckpt=True, **pkw)
    enc_ck.load_state_dict(enc.state_dict())
    pred_ck.load_state_dict(pred.state_dict())
    with torch.no_grad():
        for t in pred.mask_tokens:  # non-zero mask tokens so that their gradients are not trivial
            t.normal_()
        pred_ck.load_state_dict(pred.state_dict())
    m = MaskBatch.from_lists(
        [torch.tensor([0, 4, 7, 9]), torch.tensor([2, 3])], [torch.tensor([1, 5]), torch.tensor([8, 10, 11])]
    )
    clips = torch.randn(2, 3, 4, 48, 48, generator=torch.Generator().manual_seed(0))
    results = []
    for e, p in ((enc, pred), (enc_ck, pred_ck)):
        z = e(clips, m.context_idx, m.context_valid)
        out = p(
            z, context_idx=m.context_idx, context_valid=m.context_valid, target_idx=m.target_idx,
            target_valid=m.target_valid, mask_index=0,
        )  # fmt: skip
        (out[m.target_valid] ** 2).mean().backward()
        results.append({**_grads(e), **{f"pred.{k}": g for k, g in _grads(p).items()}})
    plain, ckpt = results
    assert set(plain) == set(ckpt) and {"patch_embed.proj.weight", "pred.mask_tokens.0"} <= set(plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert any(float(g.abs().max()) > 0 for g in plain.values())
