"""The JEPA objective: targets are layer-normed frozen features, the loss is L1 on the target tokens averaged
over mask configurations, and a tiny model can overfit one fixed batch.

Shape legend: B batch, N grid tokens, Kc/Kt context/target tokens, D encoder width.
"""

from __future__ import annotations

import copy

import pytest
import torch

from data_pipelines.batch import MaskBatch
from vjepa.models import build_encoder, build_predictor
from vjepa.objective import jepa_loss, target_features

FRAMES, CROP, GRID_TOKENS = 4, 48, 2 * 3 * 3


def _models(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    enc = build_encoder("vit_test", frames=FRAMES, crop=CROP, device="cpu")
    pred = build_predictor(embed_dim=48, frames=FRAMES, crop=CROP, width=32, depth=2, heads=2, device="cpu")
    target = copy.deepcopy(enc).requires_grad_(False)
    return enc, pred, target


def _masks(seed: int) -> list[MaskBatch]:
    """Two configurations with per-sample context/target sets of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for ctx_lens, tgt_lens in (([6, 9], [8, 5]), ([3, 2], [12, 15])):
        context, target = [], []
        for kc, kt in zip(ctx_lens, tgt_lens):
            perm = torch.randperm(GRID_TOKENS, generator=gen)
            context.append(perm[:kc])
            target.append(perm[kc : kc + kt])
        out.append(MaskBatch.from_lists(context, target))
    return out


def _clips(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, FRAMES, CROP, CROP, generator=torch.Generator().manual_seed(seed))


def test_target_features_are_layer_normed_without_grad() -> None:
    _, _, target = _models()
    target.requires_grad_(True)
    h = target_features(target, _clips())
    assert h.shape == (2, GRID_TOKENS, 48) and not h.requires_grad
    torch.testing.assert_close(h.mean(-1), torch.zeros(2, GRID_TOKENS), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(2, GRID_TOKENS), atol=1e-3, rtol=0)


def _manual_loss(enc, pred, targets, clips, m: MaskBatch, mask_index: int) -> torch.Tensor:
    """L1 over channels and the real target tokens of the whole batch, written out sample by sample."""
    errors = []
    for i in range(clips.shape[0]):
        ctx, tgt = m.sample(i)
        z = enc(clips[i : i + 1], ctx[None])
        p = pred(z, context_idx=ctx[None], context_valid=None, target_idx=tgt[None], target_valid=None,
                 mask_index=mask_index)  # fmt: skip
        errors.append((p[0] - targets[i, tgt]).abs().mean(-1))  # [kt_i]
    return torch.cat(errors).mean()


def test_loss_is_the_average_over_mask_configurations() -> None:
    enc, pred, target = _models()
    with torch.no_grad():
        for t in pred.mask_tokens:  # distinct mask tokens: configuration k must use token k
            t.normal_()
    clips, masks = _clips(), _masks(seed=2)
    targets = target_features(target, clips)
    out = jepa_loss(enc, pred, targets, clips, masks)
    per_mask = [float(_manual_loss(enc, pred, targets, clips, m, k).detach()) for k, m in enumerate(masks)]
    assert out.loss_per_mask == pytest.approx(per_mask, abs=1e-5)
    assert float(out.loss.detach()) == pytest.approx(sum(per_mask) / 2, abs=1e-5)
    assert abs(per_mask[0] - per_mask[1]) > 1e-3  # the two configurations really differ
    swapped = float(_manual_loss(enc, pred, targets, clips, masks[0], 1).detach())
    assert abs(swapped - per_mask[0]) > 1e-4  # and the mask token index matters
    assert out.pred_std > 0 and out.target_std > 0


def test_gradients_reach_encoder_and_predictor_only() -> None:
    enc, pred, target = _models()
    clips, masks = _clips(), _masks(seed=3)
    jepa_loss(enc, pred, target_features(target, clips), clips, masks).loss.backward()
    assert enc.patch_embed.proj.weight.grad is not None and enc.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in pred.parameters())
    assert all(p.grad is None for p in target.parameters())


def test_one_pass_for_every_mask_configuration_with_no_padding_rows() -> None:
    enc, pred, target = _models()
    clips, masks = _clips(), _masks(seed=2)
    targets = target_features(target, clips)
    seen: dict[str, list] = {"patch": [], "encoder": [], "predictor": []}

    def record(name: str):
        return lambda module, inputs: seen[name].append(tuple(inputs[0].shape))

    enc.patch_embed.register_forward_pre_hook(record("patch"))
    enc.blocks[0].register_forward_pre_hook(record("encoder"))
    pred.predictor_blocks[0].register_forward_pre_hook(record("predictor"))
    jepa_loss(enc, pred, targets, clips, masks)
    context = sum(int(m.context_valid.sum()) for m in masks)  # 6 + 9 + 3 + 2
    target_rows = sum(int(m.target_valid.sum()) for m in masks)  # 8 + 5 + 12 + 15
    assert seen["patch"] == [
        (2, 3, FRAMES, CROP, CROP)
    ]  # the clips are embedded once for both configurations
    assert seen["encoder"] == [(context, 48)]  # one packed pass: real rows only
    assert seen["predictor"] == [(context + target_rows, 32)]


def test_loss_needs_a_mask_configuration() -> None:
    enc, pred, target = _models()
    clips = _clips()
    with pytest.raises(ValueError, match="mask"):
        jepa_loss(enc, pred, target_features(target, clips), clips, [])


def test_tiny_model_overfits_one_batch() -> None:
    enc, pred, target = _models(seed=4)
    clips = _clips(seed=5)[:, :, :1].expand(-1, -1, FRAMES, -1, -1).contiguous()  # a still video
    masks = _masks(seed=6)
    # The target encoder is a frozen copy of the initial encoder: a fixed regression target, so the loss
    # can only fall by learning, not by the target drifting towards the predictions.
    targets = target_features(target, clips)
    opt = torch.optim.AdamW([*enc.parameters(), *pred.parameters()], lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(60):
        loss = jepa_loss(enc, pred, targets, clips, masks).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    # Measured: 0.80 -> 0.29 (x0.36) in 60 steps; a zero prediction of unit-variance targets scores ~0.8.
    assert losses[-1] < 0.5 * losses[0], losses
