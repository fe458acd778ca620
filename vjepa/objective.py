"""The JEPA objective: predict, from the context tokens, the layer-normed EMA-target features of the
hidden tokens; L1 distance, averaged over mask configurations.

One pass for every mask configuration: the context sets of all (configuration, sample) pairs are packed
into one [Tc, D] sequence batch for the encoder (the patch embedding of a clip computed once), and the
predictor runs once over all of them; each target row carries its configuration's mask token, and the loss is
reduced per configuration.

`JepaModel` holds the trained pair (context encoder + predictor) in one module so that parallel wrappers
(DDP, DeepSpeed) see a single model whose forward is this whole objective.

Shape legend: B batch, N grid tokens, Kc/Kt context/target tokens per sample (padded), Tc/Tt packed context/
target rows of all configurations, M mask configurations, D encoder width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines import MaskBatch
from vjepa.models.packing import PackedIndex, PackedMasks, unpack


@dataclass
class JepaOutput:
    loss: torch.Tensor  # scalar, differentiable
    loss_per_mask: list[float]
    target_std: float  # std of the target features across tokens (collapse monitor)
    pred_std: float  # std of the predictions across tokens
    predictions: list[torch.Tensor]  # per mask configuration, detached [B, Kt, D] (zeros on padding rows)
    prediction_valid: list[torch.Tensor]  # per mask configuration [B, Kt] bool


def masked_token_std(x: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over channels of the std across the real tokens of x [B, K, D]."""
    return packed_token_std(x[valid])


def packed_token_std(tokens: torch.Tensor) -> float:
    """Mean over channels of the std across the rows of tokens [T, D]."""
    return float(tokens.float().std(dim=0).mean()) if tokens.shape[0] > 1 else 0.0


def pack_masks(masks: list[MaskBatch]) -> PackedMasks:
    """(context, target) sets of every configuration k and sample i packed, sequence k*B + i; rows of
    configuration k carry group k."""
    context = PackedIndex.cat(
        [PackedIndex.from_padded(m.context_idx, m.context_valid, k) for k, m in enumerate(masks)]
    )
    target = PackedIndex.cat(
        [PackedIndex.from_padded(m.target_idx, m.target_valid, k) for k, m in enumerate(masks)]
    )
    return PackedMasks(context, target)


@torch.no_grad()
def target_features(target_encoder: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """The EMA target on the full clip, layer-normed without affine -> [B, N, D]."""
    h = target_encoder(clips)
    return F.layer_norm(h, (h.shape[-1],))


def jepa_loss(
    encoder: nn.Module,
    predictor: nn.Module,
    targets: torch.Tensor,
    clips: torch.Tensor,
    masks: list[MaskBatch],
    denominators: torch.Tensor | None = None,
) -> JepaOutput:
    """clips [B, C, T, H, W] float (normalised); targets [B, N, D] from `target_features`; one MaskBatch per
    mask configuration (its position selects the predictor's mask token).

    `denominators` [M]: what each configuration's error sum is divided by, by default this batch's own
    target-row counts. Gradient accumulation passes the counts over all micro-batches of the step, so that
    the micro-batches' losses (and gradients) sum to those of the whole step's batch."""
    if not masks:
        raise ValueError("jepa_loss needs at least one mask configuration")
    if len(masks) > len(predictor.mask_tokens):
        raise ValueError(f"{len(masks)} mask configurations for {len(predictor.mask_tokens)} mask tokens")
    packed = pack_masks(masks)
    target = packed.target
    # Through __call__ (not a helper method): ZeRO-3 gathers a module's parameters in its forward hooks.
    z = encoder(clips, packed=packed.context)  # [Tc, D], every configuration at once
    pred = predictor(z, packed=packed)  # [Tt, D]
    target_h = target.gather(targets)  # [Tt, D]
    err = (pred.float() - target_h.float()).abs().mean(dim=-1)  # [Tt]
    groups = len(masks)
    sums = err.new_zeros(groups).index_add(0, target.group, err)  # [M]
    counts = torch.bincount(target.group, minlength=groups).to(err.dtype)  # [M]
    if denominators is not None:
        counts = denominators.to(err)  # [M]
    losses = sums / counts.clamp_min(1.0)  # [M]: token-weighted mean within each configuration
    pred_rows, target_rows = pred.detach(), target_h
    pred_std = target_std = 0.0
    predictions = []
    start, b = 0, clips.shape[0]
    with torch.no_grad():
        for k, m in enumerate(masks):  # configuration k: sequences k*B ... k*B + B - 1, contiguous rows
            rows = slice(start, start + sum(target.layout.lengths[k * b : (k + 1) * b]))
            start = rows.stop
            pred_std += packed_token_std(pred_rows[rows]) / groups
            target_std += packed_token_std(target_rows[rows]) / groups
            predictions.append(unpack(pred_rows[rows], m.target_valid, m.batch_size))
    return JepaOutput(
        loss=losses.mean(),
        loss_per_mask=losses.detach().tolist(),
        target_std=target_std,
        pred_std=pred_std,
        predictions=predictions,
        prediction_valid=[m.target_valid for m in masks],
    )


class JepaModel(nn.Module):
    """Context encoder + predictor; `forward` is the JEPA loss for one batch."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(
        self,
        clips: torch.Tensor,
        masks: list[MaskBatch],
        targets: torch.Tensor,
        denominators: torch.Tensor | None = None,
    ) -> JepaOutput:
        """clips [B, C, T, H, W] normalised; targets [B, N, D] from `target_features`; `denominators` [M]
        see `jepa_loss`."""
        return jepa_loss(self.encoder, self.predictor, targets, clips, masks, denominators)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (in this module) that AdamW must not decay besides the 1-D ones."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {
            f"predictor.{n}" for n in self.predictor.no_weight_decay()
        }
