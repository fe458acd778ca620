"""The trained pair: context encoder + predictor in one module, so parallel wrappers (DDP, DeepSpeed) see a
single model whose forward is the whole JEPA objective."""

from __future__ import annotations

import torch
from torch import nn

from data_pipelines.batch import MaskBatch
from vjepa.objective import JepaOutput, jepa_loss


class JepaModel(nn.Module):
    def __init__(self, encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, clips: torch.Tensor, masks: list[MaskBatch], targets: torch.Tensor) -> JepaOutput:
        """clips [B, C, T, H, W] normalised; targets [B, N, D] layer-normed EMA features."""
        return jepa_loss(self.encoder, self.predictor, targets, clips, masks)
