"""The JEPA objective: predict, from the context tokens, the layer-normed EMA-target features of the
hidden tokens; L1 distance, averaged over mask configurations.

`JepaModel` holds the trained pair (context encoder + predictor) in one module so that parallel wrappers
(DDP, DeepSpeed) see a single model whose forward is this whole objective.

Shape legend: B batch, N grid tokens, Kc/Kt context/target tokens per sample (padded), D encoder width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines import MaskBatch
from vjepa.models.tokens import gather_tokens


@dataclass
class JepaOutput:
    loss: torch.Tensor  # scalar, differentiable
    loss_per_mask: list[float]
    target_std: float  # std of the target features across tokens (collapse monitor)
    pred_std: float  # std of the predictions across tokens
    predictions: list[torch.Tensor]  # per mask configuration, detached [B, Kt, D] (padding rows are junk)
    prediction_valid: list[torch.Tensor]  # per mask configuration [B, Kt] bool


def masked_token_std(x: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over channels of the std across the real tokens of x [B, K, D]."""
    tokens = x[valid].float()  # [M, D]
    return float(tokens.std(dim=0).mean()) if tokens.shape[0] > 1 else 0.0


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
) -> JepaOutput:
    """clips [B, C, T, H, W] float (normalised); targets [B, N, D] from `target_features`; one MaskBatch per
    mask configuration (its position selects the predictor's mask token)."""
    if not masks:
        raise ValueError("jepa_loss needs at least one mask configuration")
    h = targets  # [B, N, D]
    losses, preds, pred_std, target_std = [], [], 0.0, 0.0
    for k, m in enumerate(masks):
        z = encoder(clips, m.context_idx, m.context_valid)  # [B, Kc, D]
        pred = predictor(
            z,
            context_idx=m.context_idx,
            context_valid=m.context_valid,
            target_idx=m.target_idx,
            target_valid=m.target_valid,
            mask_index=k,
        )  # [B, Kt, D]
        target = gather_tokens(h, m.target_idx)  # [B, Kt, D]
        err = (pred.float() - target.float()).abs().mean(dim=-1)  # [B, Kt]
        weight = m.target_valid.to(err.dtype)
        losses.append((err * weight).sum() / weight.sum().clamp_min(1.0))
        preds.append(pred.detach())
        with torch.no_grad():
            pred_std += masked_token_std(pred.detach(), m.target_valid) / len(masks)
            target_std += masked_token_std(target, m.target_valid) / len(masks)
    loss = torch.stack(losses).mean()
    return JepaOutput(
        loss=loss,
        loss_per_mask=[float(x.detach()) for x in losses],
        target_std=target_std,
        pred_std=pred_std,
        predictions=preds,
        prediction_valid=[m.target_valid for m in masks],
    )


class JepaModel(nn.Module):
    """Context encoder + predictor; `forward` is the JEPA loss for one batch."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, clips: torch.Tensor, masks: list[MaskBatch], targets: torch.Tensor) -> JepaOutput:
        """clips [B, C, T, H, W] normalised; targets [B, N, D] from `target_features`."""
        return jepa_loss(self.encoder, self.predictor, targets, clips, masks)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (in this module) that AdamW must not decay besides the 1-D ones."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {
            f"predictor.{n}" for n in self.predictor.no_weight_decay()
        }
