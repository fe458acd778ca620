"""The V-JEPA 2.1 terms of the objective (`loss.*` switches), called by `vjepa.objective.jepa_loss` in place
of its plain predictor call when any switch is on.

Dense predictive loss: the predictor's context rows (which it runs anyway) go through their own head to
predict the target features at the visible tokens. Their L1 error (mean over channels) is weighted per token
by 1/sqrt(d), d the grid distance to the nearest target token of the same sample and configuration
(distance.py), averaged over the configuration's context tokens (the weights are not renormalised, as
published), then over configurations; the objective adds lambda x this to the prediction loss.

Shape legend: Tc/Tt packed context/target rows, M mask configurations, L levels, D encoder width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from vjepa.dense.config import LossConfig
from vjepa.dense.distance import nearest_target_distance
from vjepa.dense.levels import layer_norm_levels
from vjepa.models.packing import PackedMasks
from vjepa.models.tokens import token_coords


@dataclass(frozen=True)
class ContextTerm:
    loss: torch.Tensor  # scalar, differentiable: lambda x context loss (what the objective adds)
    context_loss: float  # the unweighted-by-lambda context loss
    context_weight: float  # lambda at this step

    def metrics(self) -> dict[str, float]:
        return {"context_loss": self.context_loss, "context_weight": self.context_weight}


@dataclass(frozen=True)
class DenseLoss:
    """The switches of `LossConfig` that shape one forward; `context_weight` is lambda at the current step."""

    levels: int = 1
    context: bool = False  # the predictor has a context head and the context loss is computed
    distance_weighting: bool = True
    normalize_predictions: bool = False
    context_weight: float = 0.0

    @staticmethod
    def from_config(cfg: LossConfig) -> DenseLoss | None:
        """None for the default config: the objective keeps its V-JEPA 1/2 path."""
        if cfg.is_default:
            return None
        return DenseLoss(
            levels=cfg.num_levels,
            context=cfg.context_weight > 0,
            distance_weighting=cfg.distance_weighting,
            normalize_predictions=cfg.normalize_predictions,
        )

    def at(self, context_weight: float) -> DenseLoss:
        return dataclasses.replace(self, context_weight=float(context_weight))

    def __call__(
        self,
        predictor: nn.Module,
        z: torch.Tensor,
        packed: PackedMasks,
        targets: torch.Tensor | list[torch.Tensor],
        grid: tuple[int, int, int],
        groups: int,
        present: list[int] | None = None,
        step_rows: tuple[torch.Tensor, int] | None = None,
    ) -> tuple[torch.Tensor, ContextTerm | None]:
        """z [Tc, D] encoder output at the packed context rows; targets [B, N, L*D] (or one per clip length);
        grid the clips' token grid (its Hp, Wp: the same for every length); `groups` mask tokens, of which the
        batch holds `present` (default all); `step_rows`: (context rows per mask token, pairs) of the whole
        accumulated step, whose share this batch's term then is. -> (predictions at the target rows
        [Tt, L*D], the context term or None)."""
        if not self.context:
            pred = predictor(z, packed=packed)  # [Tt, L*D]
            return self._normed(pred), None
        pred, ctx = predictor(z, packed=packed, with_context=True)  # [Tt, L*D], [Tc, L*D]
        pred, ctx = self._normed(pred), self._normed(ctx)
        context = packed.context
        err = (ctx.float() - context.gather(targets).float()).abs().mean(dim=-1)  # [Tc]
        if self.distance_weighting:
            target = packed.target
            d = nearest_target_distance(
                token_coords(context.token, grid),
                context.layout,
                token_coords(target.token, grid),
                target.layout,
            )  # [Tc]; >= 1 between distinct grid tokens
            err = err * d.clamp_min(1.0).rsqrt()  # a sequence without target rows: weight 0
        sums = err.new_zeros(groups).index_add(0, context.group, err)  # [M]
        if step_rows is None:
            counts = torch.bincount(context.group, minlength=groups).to(err.dtype)  # [M]
            per_group = sums / counts.clamp_min(1.0)  # [groups]
            context_loss = (per_group if present is None else per_group[present]).mean()
        else:  # this micro-batch's share of the accumulated step's context loss
            rows, pairs = step_rows
            per_group = sums / rows.to(err).clamp_min(1.0)
            context_loss = (per_group if present is None else per_group[present]).sum() / pairs
        term = ContextTerm(
            loss=self.context_weight * context_loss,
            context_loss=float(context_loss.detach()),
            context_weight=self.context_weight,
        )
        return pred, term

    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_levels(x, self.levels) if self.normalize_predictions else x
